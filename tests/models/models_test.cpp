#include "lowmem/core/memory.h"
#include "lowmem/models/gpt.h"
#include "lowmem/models/mlp.h"
#include "lowmem/models/vit.h"
#include "testing/gradcheck.h"

#include <torch/torch.h>

#include <gtest/gtest.h>

namespace {

using namespace lowmem::models;  // NOLINT
using lowmem::nn::find_slots;

GPTConfig tiny_gpt() {
  return GPTConfig().n_layer(2).n_head(2).n_embd(16).block_size(12);
}

std::vector<std::string> slot_paths(torch::nn::Module& m) {
  std::vector<std::string> out;
  for (const auto& r : find_slots(m))
    out.push_back(r.path);
  return out;
}

TEST(GPT, ShapesAndSlotPaths) {
  torch::manual_seed(0);
  GPT gpt(tiny_gpt());
  auto idx = torch::randint(0, 256, {3, 10}, torch::kLong);
  EXPECT_EQ(gpt.forward(idx).sizes(), (std::vector<int64_t>{3, 10, 256}));
  std::vector<std::string> want = {
      "h.0.attn.proj",
      "h.0.attn.qkv",
      "h.0.mlp.fc",
      "h.0.mlp.proj",
      "h.1.attn.proj",
      "h.1.attn.qkv",
      "h.1.mlp.fc",
      "h.1.mlp.proj"};
  EXPECT_EQ(slot_paths(gpt), want);
  auto params = gpt.named_parameters();
  for (const char* n :
       {"wte.weight",
        "wpe.weight",
        "h.0.ln_1.weight",
        "h.0.ln_1.bias",
        "h.0.attn.qkv.weight",
        "h.1.mlp.proj.bias",
        "ln_f.weight",
        "ln_f.bias"}) {
    EXPECT_TRUE(params.contains(n)) << n;
  }
  EXPECT_EQ(
      params["h.0.attn.qkv.weight"].sizes(), (std::vector<int64_t>{48, 16}));
}

TEST(GPT, ParameterCountMatchesFormula) {
  for (bool bias : {true, false}) {
    auto c = tiny_gpt().bias(bias);
    GPT gpt(c);
    // By hand: V*C + T*C + L*(12C^2 + 13C) + 2C (with biases).
    const int64_t C = 16, L = 2;
    int64_t want = bias ? 256 * C + 12 * C + L * (12 * C * C + 13 * C) + 2 * C
                        : 256 * C + 12 * C + L * (12 * C * C + 2 * C) + C;
    EXPECT_EQ(gpt_parameter_count(c), want);
    EXPECT_EQ(count_parameters(gpt), want);
  }
  // The reference sizes of the benchmark.
  GPTConfig small =
      GPTConfig().n_layer(4).n_head(4).n_embd(256).block_size(128);
  EXPECT_EQ(gpt_parameter_count(small), 3257856);
}

TEST(GPT, HeadIsTiedToTokenEmbedding) {
  torch::manual_seed(0);
  GPT gpt(tiny_gpt());
  auto idx = torch::randint(0, 256, {2, 5}, torch::kLong);
  auto logits = gpt.forward(idx);
  // Changing wte changes the head: logits = ln_f(x) wte^T.
  {
    torch::NoGradGuard g;
    gpt.wte->weight.index({7}).add_(torch::randn({16}));
  }
  auto logits2 = gpt.forward(idx);
  EXPECT_GT((logits2 - logits).select(2, 7).abs().max().item<double>(), 1e-3);
  // A single parameter tensor serves both: its gradient includes the head's.
  gpt.zero_grad();
  gpt.loss(idx, idx).backward();
  EXPECT_GT(gpt.wte->weight.grad().index({255}).abs().sum().item<double>(), 0.0)
      << "row 255 never appears in idx, so only the tied head can give it a "
         "grad";
}

TEST(GPT, CausalFutureTokensDoNotAffectEarlierLogits) {
  torch::manual_seed(0);
  GPT gpt(tiny_gpt());
  auto idx = torch::randint(0, 256, {2, 12}, torch::kLong);
  auto changed = idx.clone();
  changed.index_put_(
      {torch::indexing::Slice(), torch::indexing::Slice(7)},
      (idx.index({torch::indexing::Slice(), torch::indexing::Slice(7)}) + 1) %
          256);
  auto a = gpt.forward(idx), b = gpt.forward(changed);
  using torch::indexing::Slice;
  EXPECT_TRUE(torch::allclose(
      a.index({Slice(), Slice(0, 7)}), b.index({Slice(), Slice(0, 7)})));
  EXPECT_GT(
      (a.index({Slice(), Slice(7)}) - b.index({Slice(), Slice(7)}))
          .abs()
          .max()
          .item<double>(),
      1e-4);
}

TEST(GPT, RejectsBadConfigAndInput) {
  try {
    GPT g(GPTConfig().n_embd(30).n_head(4));
    FAIL();
  } catch (const c10::Error& e) {
    EXPECT_NE(
        std::string(e.what()).find("[gpt] n_embd 30 is not a multiple"),
        std::string::npos)
        << e.what();
  }
  GPT gpt(tiny_gpt());
  try {
    gpt.forward(torch::zeros({1, 13}, torch::kLong));
    FAIL();
  } catch (const c10::Error& e) {
    EXPECT_NE(
        std::string(e.what()).find("exceeds block_size 12"), std::string::npos)
        << e.what();
  }
}

TEST(GPT, DeterministicInitFromSeed) {
  torch::manual_seed(42);
  GPT a(tiny_gpt());
  torch::manual_seed(42);
  GPT b(tiny_gpt());
  auto pa = a.parameters(), pb = b.parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i)
    EXPECT_TRUE(torch::equal(pa[i], pb[i]));
}

// The block's input gradient (attention + MLP) against float64 central
// differences; weight gradients are checked through the whole GPT below.
TEST(GPT, BlockGradcheckFloat64) {
  torch::manual_seed(0);
  Block block(8, 2, true, /*causal=*/true, 0.0);
  block.to(torch::kDouble);
  auto x = torch::randn({2, 5, 8}, torch::kDouble).requires_grad_(true);
  double worst = lowmem::testing::gradcheck(
      [&](const std::vector<at::Tensor>& in) {
        return block.forward(in[0]).pow(2).sum();
      },
      {x});
  EXPECT_LT(worst, 1.0);
}

TEST(GPT, WeightGradientsMatchFiniteDifferences) {
  torch::manual_seed(0);
  GPT gpt(GPTConfig().n_layer(1).n_head(2).n_embd(8).block_size(6));
  gpt.to(torch::kDouble);
  auto idx = torch::randint(0, 256, {2, 6}, torch::kLong);
  auto tgt = torch::randint(0, 256, {2, 6}, torch::kLong);
  gpt.zero_grad();
  gpt.loss(idx, tgt).backward();
  torch::NoGradGuard g;
  for (const char* name :
       {"h.0.attn.qkv.weight",
        "h.0.mlp.fc.weight",
        "wte.weight",
        "h.0.ln_1.weight"}) {
    auto p = gpt.named_parameters()[name];
    auto grad = p.grad().clone();
    auto flat = p.view(-1);
    for (int64_t i = 0; i < flat.numel();
         i += std::max<int64_t>(1, flat.numel() / 7)) {
      const double eps = 1e-6;
      double old = flat[i].item<double>();
      flat[i].fill_(old + eps);
      double up = gpt.loss(idx, tgt).item<double>();
      flat[i].fill_(old - eps);
      double down = gpt.loss(idx, tgt).item<double>();
      flat[i].fill_(old);
      double numeric = (up - down) / (2 * eps);
      EXPECT_NEAR(
          grad.view(-1)[i].item<double>(),
          numeric,
          1e-6 + 1e-5 * std::abs(numeric))
          << name << "[" << i << "]";
    }
  }
}

TEST(GPT, ActivationCheckpointingGivesSameGradients) {
  torch::manual_seed(3);
  GPT plain(tiny_gpt());
  torch::manual_seed(3);
  GPT ckpt(tiny_gpt().activation_checkpointing(true));
  auto idx = torch::randint(0, 256, {4, 12}, torch::kLong);
  auto tgt = torch::randint(0, 256, {4, 12}, torch::kLong);
  auto la = plain.loss(idx, tgt);
  auto lb = ckpt.loss(idx, tgt);
  la.backward();
  lb.backward();
  EXPECT_DOUBLE_EQ(la.item<double>(), lb.item<double>());
  auto pa = plain.named_parameters(), pb = ckpt.named_parameters();
  for (const auto& kv : pa) {
    ASSERT_TRUE(pb[kv.key()].grad().defined()) << kv.key();
    EXPECT_TRUE(
        torch::allclose(kv.value().grad(), pb[kv.key()].grad(), 1e-5, 1e-7))
        << kv.key();
  }
}

TEST(GPT, ActivationCheckpointingReachesBlocksWithFrozenEmbeddings) {
  torch::manual_seed(3);
  GPT gpt(tiny_gpt().activation_checkpointing(true));
  gpt.wte->weight.requires_grad_(false);
  gpt.wpe->weight.requires_grad_(false);
  auto idx = torch::randint(0, 256, {2, 8}, torch::kLong);
  gpt.loss(idx, idx).backward();
  auto g = gpt.named_parameters()["h.0.attn.qkv.weight"].grad();
  ASSERT_TRUE(g.defined());
  EXPECT_GT(g.abs().sum().item<double>(), 0.0);
}

TEST(GPT, ActivationCheckpointingLowersPeakMemory) {
  lowmem::MemoryTracker tracker;
  auto peak = [&](bool ckpt) {
    torch::manual_seed(0);
    GPT gpt(GPTConfig()
                .n_layer(4)
                .n_head(2)
                .n_embd(32)
                .block_size(64)
                .activation_checkpointing(ckpt));
    auto idx = torch::randint(0, 256, {8, 64}, torch::kLong);
    auto scope = tracker.scope();
    gpt.loss(idx, idx).backward();
    return scope.peak_delta();
  };
  int64_t with = peak(true), without = peak(false);
  EXPECT_LT(with, without * 3 / 4) << with << " vs " << without;
}

TEST(GPT, BFloat16ForwardAndBackward) {
  torch::manual_seed(0);
  GPT gpt(tiny_gpt());
  auto idx = torch::randint(0, 256, {2, 12}, torch::kLong);
  const double fp32_loss = gpt.loss(idx, idx).item<double>();
  gpt.to(torch::kBFloat16);
  auto logits = gpt.forward(idx);
  EXPECT_EQ(logits.scalar_type(), torch::kBFloat16);
  auto loss = gpt.loss(idx, idx);
  EXPECT_EQ(loss.scalar_type(), torch::kFloat);
  EXPECT_TRUE(std::isfinite(loss.item<double>()));
  loss.backward();
  EXPECT_EQ(gpt.wte->weight.grad().scalar_type(), torch::kBFloat16);
  EXPECT_NEAR(loss.item<double>(), fp32_loss, 0.05);
}

TEST(GPT, EvaluateMatchesLoss) {
  torch::manual_seed(0);
  GPT gpt(tiny_gpt());
  auto idx = torch::randint(0, 256, {2, 12}, torch::kLong);
  auto tgt = torch::randint(0, 256, {2, 12}, torch::kLong);
  auto s = gpt.evaluate(idx, tgt);
  EXPECT_EQ(s.count, 24);
  EXPECT_NEAR(s.loss_sum / 24, gpt.loss(idx, tgt).item<double>(), 1e-5);
  EXPECT_GE(s.correct, 0);
  EXPECT_LE(s.correct, 24);
}

TEST(GPT, FlopsPerTokenFormula) {
  GPT gpt(tiny_gpt());
  const int64_t C = 16, L = 2;
  EXPECT_EQ(gpt.matrix_parameters(), L * 12 * C * C + 256 * C);
  EXPECT_DOUBLE_EQ(
      gpt.flops_per_token(12),
      6.0 * (L * 12 * C * C + 256 * C) + 12.0 * L * C * 12);
}

TEST(ViT, ShapesNamesAndCount) {
  torch::manual_seed(0);
  auto c =
      ViTConfig().patch_size(7).n_layer(2).n_head(2).n_embd(16).n_classes(5);
  ViT vit(c);
  auto x = torch::randn({3, 1, 28, 28});
  EXPECT_EQ(vit.forward(x).sizes(), (std::vector<int64_t>{3, 5}));
  auto paths = slot_paths(vit);
  std::vector<std::string> want = {
      "head",
      "patch_embed",
      "h.0.attn.proj",
      "h.0.attn.qkv",
      "h.0.mlp.fc",
      "h.0.mlp.proj",
      "h.1.attn.proj",
      "h.1.attn.qkv",
      "h.1.mlp.fc",
      "h.1.mlp.proj"};
  EXPECT_EQ(paths, want);
  // By hand: patch 49*16+16, cls 16, pos 17*16, blocks 2*(12*256 + 13*16),
  // ln_f 32, head 16*5+5.
  int64_t by_hand =
      49 * 16 + 16 + 16 + 17 * 16 + 2 * (12 * 256 + 13 * 16) + 32 + 85;
  EXPECT_EQ(vit_parameter_count(c), by_hand);
  EXPECT_EQ(count_parameters(vit), by_hand);
  auto p4 =
      ViTConfig().patch_size(4).n_layer(1).n_head(1).n_embd(8).mlp_ratio(2);
  EXPECT_EQ(count_parameters(ViT(p4)), vit_parameter_count(p4));
}

TEST(ViT, PatchifyOrderMatchesConvolution) {
  torch::manual_seed(0);
  auto c = ViTConfig()
               .patch_size(4)
               .channels(2)
               .image_size(8)
               .n_layer(1)
               .n_head(1)
               .n_embd(6);
  ViT vit(c);
  auto x = torch::randn({2, 2, 8, 8});
  auto w = vit.slot("patch_embed")->base_weight();  // [6, 2*4*4]
  auto b = vit.slot("patch_embed")->bias();
  auto lin = vit.linear("patch_embed").forward(vit.patchify(x));  // [2, 4, 6]
  // Patch (gy, gx) in row-major order, flattened (c, dy, dx) like a stride-4
  // convolution kernel [6, 2, 4, 4]. (conv2d itself is avoided: its raw
  // allocations trip the tracking allocator once MemoryTracker is installed.)
  using torch::indexing::Slice;
  for (int64_t gy = 0; gy < 2; ++gy) {
    for (int64_t gx = 0; gx < 2; ++gx) {
      auto patch = x.index({Slice(),
                            Slice(),
                            Slice(gy * 4, gy * 4 + 4),
                            Slice(gx * 4, gx * 4 + 4)})
                       .flatten(1);
      auto want = torch::linear(patch, w, b);
      EXPECT_LT(
          (lin.select(1, gy * 2 + gx) - want).abs().max().item<double>(), 1e-5);
    }
  }
}

TEST(ViT, ResetHeadAndErrors) {
  ViT vit(ViTConfig().n_layer(1).n_head(2).n_embd(8).n_classes(10));
  vit.reset_head(3);
  EXPECT_EQ(vit.forward(torch::randn({2, 1, 28, 28})).size(1), 3);
  EXPECT_THROW(ViT(ViTConfig().patch_size(5)), c10::Error);
  try {
    vit.forward(torch::randn({2, 1, 27, 28}));
    FAIL();
  } catch (const c10::Error& e) {
    EXPECT_NE(
        std::string(e.what()).find("[vit] expected images"), std::string::npos);
  }
  auto loss =
      vit.loss(torch::randn({4, 1, 28, 28}), torch::tensor({0, 1, 2, 0}));
  loss.backward();
  EXPECT_TRUE(vit.named_parameters()["cls_token"].grad().defined());
}

// Separate q/k/v (SNELL's layout): unfuse_qkv splits attn.qkv into three
// slots holding its row blocks, so the function, the parameter count and
// the gradients of everything else are unchanged; a ViT built unfused
// equals the fused one of the same seed, unfused.
TEST(ViT, UnfusedQkvIsTheSameFunction) {
  const auto c = ViTConfig().n_layer(2).n_head(2).n_embd(16).n_classes(5);
  torch::manual_seed(0);
  ViT fused(c);
  torch::manual_seed(0);
  ViT split(ViTConfig(c).fused_qkv(false));
  EXPECT_FALSE(split.config().fused_qkv());
  torch::manual_seed(1);
  const auto x = torch::randn({3, 1, 28, 28});
  const auto target = torch::tensor({0, 3, 4});
  const auto want = fused.forward(x);
  EXPECT_LT((split.forward(x) - want).abs().max().item<double>(), 1e-6);
  const std::vector<std::string> attn0 = {"h.0.attn.k", "h.0.attn.proj",
                                          "h.0.attn.q", "h.0.attn.v"};
  std::vector<std::string> paths;
  for (const auto& p : slot_paths(split))
    if (p.rfind("h.0.attn.", 0) == 0) paths.push_back(p);
  EXPECT_EQ(paths, attn0);
  EXPECT_EQ(count_parameters(split), vit_parameter_count(c));
  // The rows: q, k, v are the fused weight's blocks 0..C, C..2C, 2C..3C.
  auto w = fused.named_parameters()["h.1.attn.qkv.weight"];
  auto b = fused.named_parameters()["h.1.attn.qkv.bias"];
  auto sp = split.named_parameters();
  EXPECT_TRUE(torch::equal(sp["h.1.attn.k.weight"], w.narrow(0, 16, 16)));
  EXPECT_TRUE(torch::equal(sp["h.1.attn.v.bias"], b.narrow(0, 32, 16)));
  // Gradients: the q/k/v blocks of the fused gradient.
  fused.loss(x, target).backward();
  split.loss(x, target).backward();
  EXPECT_TRUE(torch::allclose(sp["h.1.attn.v.weight"].grad(),
                              w.grad().narrow(0, 32, 16), 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(sp["cls_token"].grad(),
                              fused.named_parameters()["cls_token"].grad(),
                              1e-5, 1e-6));
  // Split in place after construction (e.g. after loading a fused
  // checkpoint): same outputs; twice is an error.
  fused.unfuse_qkv();
  EXPECT_LT((fused.forward(x) - want).abs().max().item<double>(), 1e-6);
  try {
    fused.unfuse_qkv();
    FAIL();
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("already separate"),
              std::string::npos);
  }
}

TEST(MLP, SequentialNamesAndCount) {
  torch::manual_seed(0);
  auto c = MLPConfig().sizes({784, 32, 16, 10});
  MLP mlp(c);
  std::vector<std::string> names;
  for (const auto& kv : mlp.named_parameters())
    names.push_back(kv.key());
  EXPECT_EQ(
      names,
      (std::vector<std::string>{
          "0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"}));
  EXPECT_EQ(count_parameters(mlp), 784 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10);
  EXPECT_EQ(mlp_parameter_count(c), count_parameters(mlp));
  auto x = torch::randn({5, 1, 28, 28});
  EXPECT_EQ(mlp.forward(x).sizes(), (std::vector<int64_t>{5, 10}));
  // Same numbers as an explicit relu chain.
  auto h = torch::relu(torch::linear(
      x.flatten(1),
      mlp.named_parameters()["0.weight"],
      mlp.named_parameters()["0.bias"]));
  h = torch::relu(torch::linear(
      h, mlp.named_parameters()["2.weight"], mlp.named_parameters()["2.bias"]));
  h = torch::linear(
      h, mlp.named_parameters()["4.weight"], mlp.named_parameters()["4.bias"]);
  EXPECT_TRUE(torch::allclose(h, mlp.forward(x)));
  EXPECT_THROW(MLP(MLPConfig().activation("swish")), c10::Error);
  EXPECT_THROW(MLP(MLPConfig().sizes({3})), c10::Error);
}

TEST(MLP, MseLossAndEvaluate) {
  torch::manual_seed(0);
  MLP mlp(MLPConfig().sizes({3, 4, 2}).loss("mse").activation("tanh"));
  auto x = torch::randn({6, 3}), y = torch::randn({6, 2});
  auto out = mlp.forward(x);
  EXPECT_NEAR(
      mlp.loss(x, y).item<double>(),
      (out - y).pow(2).mean().item<double>(),
      1e-6);
  auto s = mlp.evaluate(x, y);
  EXPECT_EQ(s.count, 6);
  EXPECT_NEAR(s.loss_sum / 6, (out - y).pow(2).mean().item<double>(), 1e-6);
}

}  // namespace
