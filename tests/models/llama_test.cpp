#include "lowmem/core/memory.h"
#include "lowmem/models/llama.h"
#include "testing/golden.h"
#include "testing/gradcheck.h"

#include <torch/torch.h>

#include <gtest/gtest.h>

namespace {

using namespace lowmem::models;  // NOLINT
using lowmem::nn::find_slots;
using torch::indexing::Slice;

LlamaConfig tiny_llama() {
  return LlamaConfig()
      .vocab_size(64)
      .hidden_size(16)
      .intermediate_size(24)
      .num_attention_heads(2)
      .num_hidden_layers(2)
      .max_position_embeddings(12);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Llama, ShapesNamesSlotsAndCount) {
  torch::manual_seed(0);
  Llama m(tiny_llama());
  auto idx = torch::randint(0, 64, {3, 10}, torch::kLong);
  EXPECT_EQ(m.forward(idx).sizes(), (std::vector<int64_t>{3, 10, 64}));
  std::vector<std::string> slots;
  for (const auto& r : find_slots(m))
    slots.push_back(r.path);
  ASSERT_EQ(slots.size(), 14u);
  const std::vector<std::string> layer0 = {
      "model.layers.0.self_attn.k_proj",
      "model.layers.0.self_attn.o_proj",
      "model.layers.0.self_attn.q_proj",
      "model.layers.0.self_attn.v_proj",
      "model.layers.0.mlp.down_proj",
      "model.layers.0.mlp.gate_proj",
      "model.layers.0.mlp.up_proj"};
  EXPECT_EQ(std::vector<std::string>(slots.begin(), slots.begin() + 7), layer0);
  auto params = m.named_parameters();
  // Hugging Face LlamaForCausalLM's state_dict names.
  for (const char* n :
       {"model.embed_tokens.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.post_attention_layernorm.weight",
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.norm.weight",
        "lm_head.weight"}) {
    EXPECT_TRUE(params.contains(n)) << n;
  }
  EXPECT_EQ(params.size(), 2u * 9u + 3u);  // no biases anywhere
  EXPECT_EQ(
      params["model.layers.0.mlp.gate_proj.weight"].sizes(),
      (std::vector<int64_t>{24, 16}));
  EXPECT_EQ(
      params["model.layers.0.mlp.down_proj.weight"].sizes(),
      (std::vector<int64_t>{16, 24}));
  // 2 V C + L (4 C^2 + 3 C I + 2 C) + C, by hand.
  const int64_t want = 2 * 64 * 16 + 2 * (4 * 256 + 3 * 16 * 24 + 32) + 16;
  EXPECT_EQ(llama_parameter_count(tiny_llama()), want);
  EXPECT_EQ(count_parameters(m), want);
  EXPECT_EQ(m.matrix_parameters(), want - 64 * 16 - 2 * 2 * 16 - 16);
}

TEST(Llama, PresetsAreGaLoreConfigs) {
  // jiaweizzhao/GaLore configs/llama_{60m,130m,350m,1b,7b}.json.
  auto c = llama_preset("7b");
  EXPECT_EQ(c.hidden_size(), 4096);
  EXPECT_EQ(c.intermediate_size(), 11008);
  EXPECT_EQ(c.num_attention_heads(), 32);
  EXPECT_EQ(c.num_hidden_layers(), 32);
  EXPECT_EQ(c.vocab_size(), 32000);
  EXPECT_EQ(c.max_position_embeddings(), 2048);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps(), 1e-6);
  // LLaMA-7B's well-known size (untied head): 6,738,415,616 parameters.
  EXPECT_EQ(llama_parameter_count(c), 6738415616);
  EXPECT_EQ(llama_preset("llama_1b").intermediate_size(), 5461);
  auto small = llama_preset("60m");
  EXPECT_EQ(small.hidden_size(), 512);
  EXPECT_EQ(small.intermediate_size(), 1376);
  EXPECT_EQ(small.num_hidden_layers(), 8);
  EXPECT_EQ(small.num_attention_heads(), 8);
  // 58.07M: GaLore's "60M".
  EXPECT_EQ(llama_parameter_count(small), 58073600);
  EXPECT_EQ(llama_preset_names().size(), 5u);
  for (const auto& n : llama_preset_names())
    EXPECT_NO_THROW(validate(llama_preset(n))) << n;
  EXPECT_NE(
      error_of([] { llama_preset("13b"); })
          .find("[llama] unknown preset '13b'"),
      std::string::npos);
}

TEST(Llama, RejectsBadConfigAndInput) {
  EXPECT_NE(
      error_of([] {
        Llama m(tiny_llama().hidden_size(30).num_attention_heads(4));
      }).find("[llama] hidden_size 30 is not a multiple of num_attention_heads 4"),
      std::string::npos);
  EXPECT_NE(
      error_of([] {
        Llama m(tiny_llama().hidden_size(6).num_attention_heads(2));
      }).find("[llama] head dimension 3 must be even"),
      std::string::npos);
  EXPECT_NE(
      error_of([] { Llama m(tiny_llama().rms_norm_eps(0.0)); })
          .find("[llama] rms_norm_eps must be > 0, got 0"),
      std::string::npos);
  EXPECT_NE(
      error_of([] { Llama m(tiny_llama().dtype(torch::kLong)); })
          .find("[llama] dtype must be floating point"),
      std::string::npos);
  Llama m(tiny_llama());
  EXPECT_NE(
      error_of([&] { m.forward(torch::zeros({1, 13}, torch::kLong)); })
          .find("[llama] sequence length 13 exceeds max_position_embeddings 12"),
      std::string::npos);
  EXPECT_NE(
      error_of([&] {
        m.loss(torch::zeros({1, 5}, torch::kLong), torch::zeros({1, 4}, torch::kLong));
      }).find("[llama] target shape"),
      std::string::npos);
}

TEST(Llama, InitIsHuggingFaces) {
  torch::manual_seed(0);
  Llama m(LlamaConfig()
              .vocab_size(300)
              .hidden_size(64)
              .intermediate_size(200)
              .num_hidden_layers(1));
  for (const auto& kv : m.named_parameters()) {
    if (kv.value().dim() == 1) {
      EXPECT_TRUE(torch::equal(kv.value(), torch::ones_like(kv.value())))
          << kv.key();
    } else {
      const double sd = kv.value().std().item<double>();
      EXPECT_NEAR(sd, 0.02, 0.002) << kv.key();
      EXPECT_NEAR(kv.value().mean().item<double>(), 0.0, 0.002) << kv.key();
    }
  }
}

TEST(Llama, CausalFutureTokensDoNotAffectEarlierLogits) {
  torch::manual_seed(0);
  Llama m(tiny_llama().initializer_range(0.3));
  auto idx = torch::randint(0, 64, {2, 12}, torch::kLong);
  auto changed = idx.clone();
  changed.index_put_({Slice(), Slice(7)}, (idx.index({Slice(), Slice(7)}) + 1) % 64);
  auto a = m.forward(idx), b = m.forward(changed);
  EXPECT_TRUE(torch::allclose(
      a.index({Slice(), Slice(0, 7)}), b.index({Slice(), Slice(0, 7)})));
  EXPECT_GT(
      (a.index({Slice(), Slice(7)}) - b.index({Slice(), Slice(7)}))
          .abs()
          .max()
          .item<double>(),
      1e-4);
}

TEST(Llama, RotaryPreservesNormsAndDependsOnOffsetOnly) {
  const int64_t T = 40, D = 16;
  auto [cos, sin] = rotary_tables(T, D, 10000.0, torch::kDouble, torch::kCPU);
  // Position 0 is the identity; frequency i at position m is m * theta^(-2i/D).
  EXPECT_TRUE(torch::allclose(cos[0], torch::ones({D}, torch::kDouble)));
  EXPECT_TRUE(torch::allclose(sin[0], torch::zeros({D}, torch::kDouble)));
  EXPECT_NEAR(
      sin[7][3].item<double>(), std::sin(7.0 * std::pow(10000.0, -6.0 / D)), 1e-12);
  EXPECT_NEAR(
      cos[7][3 + D / 2].item<double>(),
      std::cos(7.0 * std::pow(10000.0, -6.0 / D)),
      1e-12);
  torch::manual_seed(0);
  // The same q and k at every position: [1, T, D].
  auto q = torch::randn({1, 1, D}, torch::kDouble).expand({1, T, D});
  auto k = torch::randn({1, 1, D}, torch::kDouble).expand({1, T, D});
  auto rq = apply_rotary(q, cos, sin)[0], rk = apply_rotary(k, cos, sin)[0];
  EXPECT_TRUE(torch::allclose(rq.norm(2, -1), q[0].norm(2, -1), 1e-12, 1e-12));
  auto dots = rq.matmul(rk.t());  // [m, n] = q_m . k_n
  for (int64_t m = 0; m + 5 < T; m += 3) {
    for (int64_t n : {0, 4, 9}) {
      if (n + 5 >= T)
        continue;
      // Shifting both positions by 5 keeps the dot product.
      EXPECT_NEAR(
          dots[m][n].item<double>(), dots[m + 5][n + 5].item<double>(), 1e-10)
          << m << "," << n;
    }
  }
  // ...but different offsets give different products.
  EXPECT_GT(std::abs(dots[10][3].item<double>() - dots[10][4].item<double>()), 1e-6);
}

TEST(Llama, RMSNormIsHuggingFaces) {
  torch::manual_seed(0);
  RMSNorm norm(8, 1e-6, torch::TensorOptions());
  {
    torch::NoGradGuard g;
    norm.weight.uniform_(0.5, 1.5);
  }
  auto x = torch::randn({3, 8});
  auto want = norm.weight * x / torch::sqrt(x.pow(2).mean(-1, true) + 1e-6);
  EXPECT_TRUE(torch::allclose(norm.forward(x), want, 1e-6, 1e-7));
  // bf16: normalised in fp32, cast to bf16, then times the bf16 weight.
  norm.to(torch::kBFloat16);
  auto xb = x.to(torch::kBFloat16);
  auto h = xb.to(torch::kFloat);
  auto want_b = norm.weight *
      (h * torch::rsqrt(h.pow(2).mean(-1, true) + 1e-6)).to(torch::kBFloat16);
  auto got = norm.forward(xb);
  EXPECT_EQ(got.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(got, want_b));
}

TEST(Llama, DecoderLayerGradcheckFloat64) {
  torch::manual_seed(0);
  LlamaDecoderLayer layer(LlamaConfig()
                              .hidden_size(8)
                              .intermediate_size(12)
                              .num_attention_heads(2)
                              .initializer_range(0.3)
                              .dtype(torch::kDouble));
  auto x = torch::randn({2, 5, 8}, torch::kDouble).requires_grad_(true);
  EXPECT_EQ(
      layer.named_parameters()["self_attn.q_proj.weight"].scalar_type(),
      torch::kDouble);
  double worst_x = lowmem::testing::gradcheck(
      [&](const std::vector<at::Tensor>& in) {
        return layer.forward(in[0]).pow(2).sum();
      },
      {x});
  EXPECT_LT(worst_x, 1.0);
}

// Weight gradients of the whole model (every kind of parameter) against
// float64 central differences, a few entries each.
TEST(Llama, WeightGradientsMatchFiniteDifferences) {
  torch::manual_seed(0);
  Llama m(tiny_llama()
              .num_hidden_layers(1)
              .hidden_size(8)
              .intermediate_size(12)
              .initializer_range(0.3)
              .dtype(torch::kDouble));
  auto idx = torch::randint(0, 64, {2, 6}, torch::kLong);
  auto tgt = torch::randint(0, 64, {2, 6}, torch::kLong);
  m.loss(idx, tgt).backward();
  torch::NoGradGuard g;
  auto params = m.named_parameters();
  for (const auto& kv : params) {
    auto p = kv.value();
    auto grad = p.grad().clone().view(-1);
    auto flat = p.view(-1);
    for (int64_t i = 0; i < flat.numel();
         i += std::max<int64_t>(1, flat.numel() / 5)) {
      const double eps = 1e-6, old = flat[i].item<double>();
      flat[i].fill_(old + eps);
      const double up = m.loss(idx, tgt).item<double>();
      flat[i].fill_(old - eps);
      const double down = m.loss(idx, tgt).item<double>();
      flat[i].fill_(old);
      const double numeric = (up - down) / (2 * eps);
      EXPECT_NEAR(grad[i].item<double>(), numeric, 1e-7 + 1e-5 * std::abs(numeric))
          << kv.key() << "[" << i << "]";
    }
  }
}

TEST(Llama, MatchesPythonReference) {
  auto d = lowmem::testing::load_tensor_dict(
      lowmem::testing::source_path("tests/golden/llama_tiny.pt"));
  auto cfg = d.at("config");
  Llama m(LlamaConfig()
              .vocab_size(cfg[0].item<int64_t>())
              .hidden_size(cfg[1].item<int64_t>())
              .intermediate_size(cfg[2].item<int64_t>())
              .num_attention_heads(cfg[3].item<int64_t>())
              .num_hidden_layers(cfg[4].item<int64_t>()));
  auto params = m.named_parameters();
  {
    torch::NoGradGuard g;
    for (const auto& kv : params)
      kv.value().copy_(d.at("param." + kv.key()));
  }
  EXPECT_EQ(params.size() * 2 + 5, d.size());  // every param in the file
  auto logits = m.forward(d.at("idx"));
  EXPECT_LT(lowmem::testing::closeness(logits, d.at("logits"), 1e-5, 1e-6), 1.0);
  auto loss = m.loss(d.at("idx"), d.at("target"));
  EXPECT_NEAR(
      loss.item<double>(),
      d.at("loss").item<double>(),
      1e-5 * d.at("loss").item<double>());
  loss.backward();
  for (const auto& kv : params) {
    EXPECT_LT(
        lowmem::testing::closeness(
            kv.value().grad(), d.at("grad." + kv.key()), 1e-4, 1e-6),
        1.0)
        << kv.key();
  }
}

TEST(Llama, ActivationCheckpointingGivesSameGradients) {
  torch::manual_seed(3);
  Llama plain(tiny_llama().initializer_range(0.2));
  torch::manual_seed(3);
  Llama ckpt(tiny_llama().initializer_range(0.2).activation_checkpointing(true));
  auto idx = torch::randint(0, 64, {3, 12}, torch::kLong);
  auto tgt = torch::randint(0, 64, {3, 12}, torch::kLong);
  auto la = plain.loss(idx, tgt), lb = ckpt.loss(idx, tgt);
  la.backward();
  lb.backward();
  EXPECT_DOUBLE_EQ(la.item<double>(), lb.item<double>());
  auto pb = ckpt.named_parameters();
  for (const auto& kv : plain.named_parameters()) {
    ASSERT_TRUE(pb[kv.key()].grad().defined()) << kv.key();
    EXPECT_TRUE(torch::allclose(kv.value().grad(), pb[kv.key()].grad(), 1e-5, 1e-7))
        << kv.key();
  }
}

TEST(Llama, ActivationCheckpointingLowersPeakMemory) {
  lowmem::MemoryTracker tracker;
  auto peak = [&](bool ckpt) {
    torch::manual_seed(0);
    Llama m(tiny_llama()
                .num_hidden_layers(4)
                .hidden_size(32)
                .intermediate_size(64)
                .max_position_embeddings(64)
                .activation_checkpointing(ckpt));
    auto idx = torch::randint(0, 64, {8, 64}, torch::kLong);
    auto scope = tracker.scope();
    m.loss(idx, idx).backward();
    return scope.peak_delta();
  };
  const int64_t with = peak(true), without = peak(false);
  EXPECT_LT(with, without * 3 / 4) << with << " vs " << without;
}

TEST(Llama, BuiltDirectlyInBFloat16) {
  torch::manual_seed(0);
  Llama f32(tiny_llama());
  torch::manual_seed(0);
  Llama b16(tiny_llama().dtype(torch::kBFloat16));
  auto pf = f32.named_parameters();
  for (const auto& kv : b16.named_parameters()) {
    EXPECT_EQ(kv.value().scalar_type(), torch::kBFloat16) << kv.key();
    if (kv.value().dim() == 1) {  // norms: ones in both
      EXPECT_TRUE(torch::equal(kv.value(), pf[kv.key()].to(torch::kBFloat16)))
          << kv.key();
    } else {  // every matrix is drawn N(0, 0.02) in bf16 directly
      EXPECT_NEAR(kv.value().to(torch::kFloat).std().item<double>(), 0.02, 0.003)
          << kv.key();
    }
  }
  auto idx = torch::randint(0, 64, {2, 12}, torch::kLong);
  auto logits = b16.forward(idx);
  EXPECT_EQ(logits.scalar_type(), torch::kBFloat16);
  auto loss = b16.loss(idx, idx);
  EXPECT_EQ(loss.scalar_type(), torch::kFloat);
  EXPECT_NEAR(loss.item<double>(), f32.loss(idx, idx).item<double>(), 0.05);
  loss.backward();
  for (const auto& kv : b16.named_parameters()) {
    ASSERT_TRUE(kv.value().grad().defined()) << kv.key();
    EXPECT_EQ(kv.value().grad().scalar_type(), torch::kBFloat16) << kv.key();
  }
}

TEST(Llama, EvaluateMatchesLoss) {
  torch::manual_seed(0);
  Llama m(tiny_llama());
  auto idx = torch::randint(0, 64, {2, 12}, torch::kLong);
  auto tgt = torch::randint(0, 64, {2, 12}, torch::kLong);
  auto s = m.evaluate(idx, tgt);
  EXPECT_EQ(s.count, 24);
  EXPECT_NEAR(s.loss_sum / 24.0, m.loss(idx, tgt).item<double>(), 1e-5);
  EXPECT_EQ(m.kind(), "llama");
  // 6 N_matrix + 12 L C T.
  EXPECT_DOUBLE_EQ(
      m.flops_per_token(12),
      6.0 * static_cast<double>(m.matrix_parameters()) + 12.0 * 2 * 16 * 12);
}

}  // namespace
