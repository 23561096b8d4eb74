#include "lowmem/adapters/lora.h"

#include <gtest/gtest.h>

#include <cmath>

#include "adapters/tiny_model.h"
#include "testing/gradcheck.h"

namespace {

using lowmem::adapters::inject_lora;
using lowmem::adapters::is_target;
using lowmem::adapters::LoraLinear;
using lowmem::adapters::LoraOptions;
using lowmem::adapters::TargetOptions;
using lowmem::testing::error_of;
using lowmem::testing::TinyModel;

TEST(Inject, PeftTargetSemantics) {
  TargetOptions t({"q", "blocks.1.up"});
  EXPECT_TRUE(is_target("blocks.0.q", t));       // suffix
  EXPECT_TRUE(is_target("q", t));                // exact
  EXPECT_TRUE(is_target("blocks.1.up", t));      // dotted suffix of several parts
  EXPECT_FALSE(is_target("blocks.0.up", t));
  EXPECT_FALSE(is_target("blocks.0.xq", t));     // not a dotted suffix
  EXPECT_FALSE(is_target("blocks.0.q.x", t));
  t.exclude_modules({"blocks.0.q"});
  EXPECT_FALSE(is_target("blocks.0.q", t));
  EXPECT_TRUE(is_target("blocks.1.q", t));
  TargetOptions r;
  r.target_regex(R"(blocks\.\d+\.(q|v))");
  EXPECT_TRUE(is_target("blocks.3.v", r));
  EXPECT_FALSE(is_target("x.blocks.3.v", r));    // full match only
  r.exclude_regex(R"(.*\.1\..*)");
  EXPECT_FALSE(is_target("blocks.1.q", r));
  TargetOptions s({"q"});
  s.modules_to_save({"blocks"});
  EXPECT_FALSE(is_target("blocks.0.q", s));      // never inside modules_to_save
  EXPECT_EQ(TargetOptions::from_list("q,v,").target_modules(),
            (std::vector<std::string>{"q", "v"}));
}

TEST(Inject, NoMatchNamesTargetsAndSlots) {
  auto model = std::make_shared<TinyModel>();
  auto msg = error_of([&] { inject_lora(model, TargetOptions({"k_proj"})); });
  EXPECT_NE(msg.find("k_proj"), std::string::npos) << msg;
  // The slots' distinct names, and one full path to show the layout.
  EXPECT_NE(msg.find("8 slots are named {down, q, up, v}"), std::string::npos)
      << msg;
  EXPECT_NE(msg.find("(paths like blocks.0."), std::string::npos) << msg;
  EXPECT_NE(error_of([&] { inject_lora(model, TargetOptions()); }).find("no targets"),
            std::string::npos);
  TargetOptions bad;
  bad.target_regex("(");
  EXPECT_NE(error_of([&] { inject_lora(model, bad); }).find("not a valid regex"),
            std::string::npos);
  // Nothing was changed by the failed attempts.
  for (const auto& p : model->parameters()) EXPECT_TRUE(p.requires_grad());
}

TEST(Lora, ParameterCountsAndFreezing) {
  torch::manual_seed(0);
  const int64_t d = 8, r = 4;
  auto model = std::make_shared<TinyModel>(d);
  auto lora = inject_lora(model, TargetOptions({"q", "up"}), LoraOptions(r));
  ASSERT_EQ(lora->layers().size(), 4u);
  // r(in + out) per layer: q 8x8, up 16x8, two blocks.
  EXPECT_EQ(lora->num_trainable_parameters(), 2 * (r * (d + d) + r * (d + 2 * d)));
  for (const auto& p : model->named_parameters()) {
    bool adapter = p.key().find(".lora_") != std::string::npos;
    EXPECT_EQ(p.value().requires_grad(), adapter) << p.key();
  }
  // PEFT names in the model's parameter list.
  auto names = model->named_parameters();
  EXPECT_TRUE(names.contains("blocks.0.q.lora_A.weight"));
  EXPECT_TRUE(names.contains("blocks.0.q.base_layer.weight"));
  EXPECT_EQ(names["blocks.1.up.lora_A.weight"].sizes(), (std::vector<int64_t>{r, d}));
  EXPECT_EQ(names["blocks.1.up.lora_B.weight"].sizes(), (std::vector<int64_t>{2 * d, r}));
  // modules_to_save keeps the head trainable.
  auto model2 = std::make_shared<TinyModel>(d);
  auto lora2 = inject_lora(model2, TargetOptions({"q"}).modules_to_save({"head"}),
                           LoraOptions(r));
  EXPECT_EQ(lora2->num_trainable_parameters(), 2 * r * 2 * d + (d * 3 + 3));
  EXPECT_TRUE(lora2->state_tensors().count("base_model.model.head.weight"));
}

TEST(Lora, ZeroInitLeavesOutputsUnchangedAndInitBounds) {
  torch::manual_seed(1);
  auto model = std::make_shared<TinyModel>(16);
  at::Tensor x = torch::randn({5, 16});
  at::Tensor before = model->forward(x);
  auto lora = inject_lora(model, TargetOptions({"q", "v", "up", "down"}));
  EXPECT_TRUE(torch::equal(model->forward(x), before));
  auto* l = static_cast<LoraLinear*>(lora->layers()[0].layer.get());
  EXPECT_TRUE(torch::equal(l->lora_B(), torch::zeros_like(l->lora_B())));
  // Kaiming-uniform(a=sqrt 5) on [r, in]: U(-1/sqrt(in), 1/sqrt(in)).
  EXPECT_LE(l->lora_A().abs().max().item<double>(), 1.0 / std::sqrt(16.0));
  EXPECT_GT(l->lora_A().abs().max().item<double>(), 0.5 / std::sqrt(16.0));
  // gaussian: std 1/r.
  torch::manual_seed(2);
  auto big = std::make_shared<lowmem::nn::Linear>(4096, 4);
  LoraLinear g(big, LoraOptions(8).init_lora_weights("gaussian"));
  EXPECT_NEAR(g.lora_A().std().item<double>(), 1.0 / 8, 0.005);
  EXPECT_TRUE(torch::equal(g.lora_B(), torch::zeros_like(g.lora_B())));
  // "false" is not a no-op.
  LoraLinear f(big, LoraOptions(8).init_lora_weights("false"));
  EXPECT_GT(f.lora_B().abs().sum().item<double>(), 0.0);
}

TEST(Lora, ScalingFollowsPeft) {
  EXPECT_DOUBLE_EQ(LoraOptions().scaling(), 1.0);  // r 8, alpha 8
  EXPECT_DOUBLE_EQ(LoraOptions(16).lora_alpha(32).scaling(), 2.0);
  EXPECT_DOUBLE_EQ(LoraOptions(16).lora_alpha(32).use_rslora(true).scaling(), 8.0);
  torch::manual_seed(3);
  auto base = std::make_shared<lowmem::nn::Linear>(6, 5);
  LoraLinear l(base, LoraOptions(2).lora_alpha(6));
  torch::NoGradGuard g;
  l.lora_B().normal_();
  at::Tensor x = torch::randn({3, 6});
  at::Tensor want = base->forward(x) + 3.0 * x.mm(l.lora_A().t()).mm(l.lora_B().t());
  EXPECT_TRUE(torch::allclose(l.forward(x), want, 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(l.delta_weight(), 3.0 * l.lora_B().mm(l.lora_A())));
}

TEST(Lora, MergeUnmergeAndMergeAndUnload) {
  torch::manual_seed(4);
  auto model = std::make_shared<TinyModel>(8);
  auto before = lowmem::testing::snapshot(*model);
  auto lora = inject_lora(model, TargetOptions({"q", "v", "up", "down"}));
  {
    torch::NoGradGuard g;
    for (auto& l : lora->layers())
      static_cast<LoraLinear*>(l.layer.get())->lora_B().normal_(0, 0.5);
  }
  model->eval();
  at::Tensor x = torch::randn({7, 8});
  at::Tensor unmerged = model->forward(x).detach();
  lora->merge();
  EXPECT_TRUE(lora->merged());
  EXPECT_LE((model->forward(x) - unmerged).abs().max().item<double>(), 1e-6);
  lora->unmerge();
  for (const auto& l : lora->layers()) {
    std::string key = l.path + ".weight";
    EXPECT_LE((l.layer->base_weight() - before[key]).abs().max().item<double>(), 1e-6)
        << key;
  }
  EXPECT_LE((model->forward(x) - unmerged).abs().max().item<double>(), 1e-6);
  lora->merge_and_unload();
  EXPECT_TRUE(lora->unloaded());
  // Plain Linear layers are back in the slots, with the merged weights.
  for (const auto& s : lowmem::nn::find_slots(*model)) {
    EXPECT_NE(dynamic_cast<lowmem::nn::Linear*>(s.layer().get()), nullptr)
        << s.path;
  }
  EXPECT_FALSE(model->named_parameters().contains("blocks.0.q.lora_A.weight"));
  EXPECT_LE((model->forward(x) - unmerged).abs().max().item<double>(), 1e-6);
}

TEST(Lora, UnloadRestoresModelAndFlags) {
  torch::manual_seed(5);
  auto model = std::make_shared<TinyModel>(8);
  model->head->weight.set_requires_grad(false);
  auto before = lowmem::testing::snapshot(*model);
  auto lora = inject_lora(model, TargetOptions({"q"}));
  lora->unload();
  auto names = model->named_parameters();
  EXPECT_EQ(names.size(), before.size());
  for (const auto& p : names) {
    EXPECT_TRUE(torch::equal(p.value(), before.at(p.key()))) << p.key();
    EXPECT_EQ(p.value().requires_grad(), p.key() != "head.weight") << p.key();
  }
}

TEST(Lora, Float64Gradcheck) {
  torch::manual_seed(6);
  auto base = std::make_shared<lowmem::nn::Linear>(5, 4);
  base->to(torch::kDouble);
  LoraLinear l(base, LoraOptions(3).lora_alpha(6));
  {
    torch::NoGradGuard g;
    l.lora_B().normal_();
  }
  ASSERT_EQ(l.lora_A().scalar_type(), torch::kDouble);
  at::Tensor x = torch::randn({2, 3, 5}, torch::kDouble).requires_grad_();
  at::Tensor w = torch::randn({2, 3, 4}, torch::kDouble);
  double worst = lowmem::testing::gradcheck(
      [&](const std::vector<at::Tensor>& in) { return (l.forward(in[0]) * w).sum(); },
      {x, l.lora_A(), l.lora_B()});
  EXPECT_LE(worst, 1.0);
  // Frozen base gets no gradient.
  (l.forward(x) * w).sum().backward();
  EXPECT_FALSE(base->base_weight().requires_grad());
  EXPECT_FALSE(base->base_weight().grad().defined());
  EXPECT_TRUE(l.lora_A().grad().defined());
}

TEST(Lora, OptionValidationMessages) {
  using lowmem::adapters::validate;
  auto msg = [](const LoraOptions& o) { return error_of([&] { validate(o); }); };
  EXPECT_NE(msg(LoraOptions(0)).find("r must be > 0, got 0"), std::string::npos);
  EXPECT_NE(msg(LoraOptions().lora_dropout(1.5)).find("lora_dropout must be in [0, 1), got 1.5"),
            std::string::npos);
  EXPECT_NE(msg(LoraOptions().init_lora_weights("pissa")).find("'pissa'"), std::string::npos);
  EXPECT_NE(msg(LoraOptions().bias("all")).find("bias 'all'"), std::string::npos);
  EXPECT_EQ(msg(LoraOptions()), "");
  // for_each_field visits every scalar option once.
  std::vector<std::string> names;
  LoraOptions o;
  o.for_each_field([&](const char* n, auto&) { names.push_back(n); });
  EXPECT_EQ(names, (std::vector<std::string>{"r", "lora_alpha", "lora_dropout", "use_rslora",
                                             "init_lora_weights", "bias"}));
}

TEST(Lora, DropoutOnlyInTraining) {
  torch::manual_seed(7);
  auto base = std::make_shared<lowmem::nn::Linear>(32, 8);
  LoraLinear l(base, LoraOptions(4).lora_dropout(0.5));
  {
    torch::NoGradGuard g;
    l.lora_B().normal_();
  }
  at::Tensor x = torch::randn({4, 32});
  l.eval();
  at::Tensor e1 = l.forward(x), e2 = l.forward(x);
  EXPECT_TRUE(torch::equal(e1, e2));
  l.train();
  EXPECT_FALSE(torch::allclose(l.forward(x), e1));
}

}  // namespace
