#include "lowmem/adapters/lotr.h"

#include <gtest/gtest.h>

#include "adapters/tiny_model.h"
#include "testing/gradcheck.h"

namespace {

using namespace lowmem::adapters;
using lowmem::testing::error_of;
using lowmem::testing::TinyModel;

TEST(Lotr, ParameterCountsPerGroup) {
  torch::manual_seed(0);
  const int64_t d = 8, r = 3, L = 2;
  auto model = std::make_shared<TinyModel>(d, L);
  auto lotr = inject_lotr(model, TargetOptions({"q", "v", "up"}), LotrOptions(r));
  ASSERT_EQ(lotr->groups().size(), 3u);  // per_type: q, v, up
  // r(d_in + d_out) + L r^2 per group.
  int64_t want = (r * (d + d) + L * r * r) * 2 + (r * (d + 2 * d) + L * r * r);
  EXPECT_EQ(lotr->num_trainable_parameters(), want);
  // The shared factors appear once in the model's parameters.
  auto names = model->named_parameters();
  EXPECT_TRUE(names.contains("lotr_blocks_q.lhs"));
  EXPECT_TRUE(names.contains("lotr_blocks_q.rhs"));
  EXPECT_TRUE(names.contains("blocks.1.q.lotr_core"));
  EXPECT_EQ(names["lotr_blocks_up.lhs"].sizes(), (std::vector<int64_t>{r, 2 * d}));
  EXPECT_EQ(names["lotr_blocks_up.rhs"].sizes(), (std::vector<int64_t>{d, r}));
  EXPECT_EQ(static_cast<int64_t>(model->parameters().size()),
            static_cast<int64_t>(names.size()));
  // One group across types (repo experiments): r(d_in+d_out) + 2L r^2.
  auto model2 = std::make_shared<TinyModel>(d, L);
  auto shared = inject_lotr(model2, TargetOptions({"q", "v"}), LotrOptions(r).grouping("shared"));
  ASSERT_EQ(shared->groups().size(), 1u);
  EXPECT_EQ(shared->num_trainable_parameters(), r * (d + d) + 2 * L * r * r);
  // Mixed shapes in one group are rejected with the paths named.
  auto model3 = std::make_shared<TinyModel>(d, L);
  auto msg = error_of([&] {
    inject_lotr(model3, TargetOptions({"q", "up"}), LotrOptions(r).grouping("shared"));
  });
  EXPECT_NE(msg.find("mixes shapes 8x8 (blocks.0.q) and 16x8 (blocks.0.up)"), std::string::npos)
      << msg;
  // ... and the failed injection left the model as it was.
  for (const auto& p : model3->parameters()) EXPECT_TRUE(p.requires_grad());
  for (const auto& s : lowmem::nn::find_slots(*model3))
    EXPECT_NE(dynamic_cast<lowmem::nn::Linear*>(s.layer().get()), nullptr)
        << s.path;
  EXPECT_FALSE(model3->named_children().contains("lotr_all"));
}

TEST(Lotr, DefaultInitIsANoOpAndMatchesTheCode) {
  torch::manual_seed(1);
  auto model = std::make_shared<TinyModel>(8);
  at::Tensor x = torch::randn({3, 8});
  at::Tensor before = model->forward(x);
  auto lotr = inject_lotr(model, TargetOptions({"q", "v"}), LotrOptions(4));
  EXPECT_TRUE(torch::equal(model->forward(x), before));  // cores are zero
  auto& g = *lotr->groups()[0];
  EXPECT_GT(g.lhs.std().item<double>(), 0.5);  // N(0, 1)
  EXPECT_GT(g.rhs.std().item<double>(), 0.5);
}

TEST(Lotr, SvdInitGivesOrthonormalRightFactor) {
  torch::manual_seed(2);
  auto model = std::make_shared<TinyModel>(8);
  at::Tensor x = torch::randn({3, 8});
  at::Tensor before = model->forward(x);
  // The repo test's ('trivial', 'neutral', 'svd').
  auto lotr = inject_lotr(
      model, TargetOptions({"q"}),
      LotrOptions(3).init_left("trivial").init_middle("neutral").init_right("svd"));
  EXPECT_TRUE(torch::allclose(model->forward(x), before));
  auto& g = *lotr->groups()[0];
  EXPECT_TRUE(torch::allclose(g.rhs.t().mm(g.rhs), torch::eye(3), 1e-5, 1e-5));
  auto* l = static_cast<LotrLinear*>(lotr->layers()[0].layer.get());
  EXPECT_TRUE(torch::equal(l->core(), torch::eye(3)));
}

TEST(Lotr, SharedFactorsAccumulateGradientsFromAllMembers) {
  torch::manual_seed(3);
  auto opts = torch::TensorOptions().dtype(torch::kDouble);
  const int64_t d_in = 5, d_out = 4, r = 2;
  LotrOptions o = LotrOptions(r).scale(3.0);
  auto group = std::make_shared<LotrGroup>("g", d_in, d_out, r, opts);
  {
    torch::NoGradGuard ng;
    group->lhs.normal_();
    group->rhs.normal_();
  }
  std::vector<std::shared_ptr<LotrLinear>> layers;
  std::vector<at::Tensor> xs, ws;
  at::Tensor loss = torch::zeros({}, opts);
  for (int l = 0; l < 3; ++l) {
    auto base = std::make_shared<lowmem::nn::Linear>(d_in, d_out);
    base->to(torch::kDouble);
    layers.push_back(std::make_shared<LotrLinear>(base, group, o));
    {
      torch::NoGradGuard ng;
      layers.back()->core().normal_();
    }
    xs.push_back(torch::randn({6, d_in}, opts));
    ws.push_back(torch::randn({6, d_out}, opts));
    loss = loss + (layers.back()->forward(xs.back()) * ws.back()).sum();
  }
  loss.backward();
  // dL/dlhs = alpha Σ_l (x_l rhs mid_l)^T w_l; dL/drhs = alpha Σ_l x_l^T (w_l lhs^T mid_l^T).
  const double alpha = 3.0 / r;
  at::Tensor dl = torch::zeros_like(group->lhs), dr = torch::zeros_like(group->rhs);
  for (int l = 0; l < 3; ++l) {
    at::Tensor mid = layers[l]->core().detach();
    dl += alpha * xs[l].mm(group->rhs.detach()).mm(mid).t().mm(ws[l]);
    dr += alpha * xs[l].t().mm(ws[l].mm(group->lhs.detach().t()).mm(mid.t()));
  }
  EXPECT_TRUE(torch::allclose(group->lhs.grad(), dl, 1e-10, 1e-12));
  EXPECT_TRUE(torch::allclose(group->rhs.grad(), dr, 1e-10, 1e-12));
}

TEST(Lotr, Float64Gradcheck) {
  torch::manual_seed(4);
  auto opts = torch::TensorOptions().dtype(torch::kDouble);
  auto group = std::make_shared<LotrGroup>("g", 5, 4, 3, opts);
  auto base = std::make_shared<lowmem::nn::Linear>(5, 4);
  base->to(torch::kDouble);
  LotrLinear l(base, group, LotrOptions(3).scale(2.0));
  {
    torch::NoGradGuard ng;
    group->lhs.normal_();
    group->rhs.normal_();
    l.core().normal_();
  }
  at::Tensor x = torch::randn({2, 3, 5}, opts).requires_grad_();
  at::Tensor w = torch::randn({2, 3, 4}, opts);
  double worst = lowmem::testing::gradcheck(
      [&](const std::vector<at::Tensor>& in) { return (l.forward(in[0]) * w).sum(); },
      {x, group->lhs, group->rhs, l.core()});
  EXPECT_LE(worst, 1.0);
}

TEST(Lotr, MergeUnmergeAndUnload) {
  torch::manual_seed(5);
  auto model = std::make_shared<TinyModel>(8);
  auto before = lowmem::testing::snapshot(*model);
  auto lotr = inject_lotr(model, TargetOptions({"q", "v", "down"}), LotrOptions(4).scale(2));
  {
    torch::NoGradGuard ng;
    for (auto& l : lotr->layers())
      static_cast<LotrLinear*>(l.layer.get())->core().normal_(0, 0.3);
  }
  at::Tensor x = torch::randn({5, 8});
  at::Tensor unmerged = model->forward(x).detach();
  lotr->merge();
  EXPECT_LE((model->forward(x) - unmerged).abs().max().item<double>(), 1e-6);
  lotr->unmerge();
  for (const auto& l : lotr->layers())
    EXPECT_LE((l.layer->base_weight() - before[l.path + ".weight"]).abs().max().item<double>(),
              1e-6);
  lotr->merge_and_unload();
  EXPECT_FALSE(model->named_children().contains("lotr_blocks_q"));
  EXPECT_LE((model->forward(x) - unmerged).abs().max().item<double>(), 1e-6);
}

TEST(Lotr, OptionValidationMessages) {
  auto msg = [](const LotrOptions& o) { return error_of([&] { validate(o); }); };
  EXPECT_NE(msg(LotrOptions(0)).find("rank must be > 0, got 0"), std::string::npos);
  EXPECT_NE(msg(LotrOptions().init_left("svd2")).find("'svd2'"), std::string::npos);
  EXPECT_NE(msg(LotrOptions().init_middle("normal")).find("init_middle"), std::string::npos);
  EXPECT_NE(msg(LotrOptions().grouping("layer")).find("grouping must be per_type or shared, got 'layer'"),
            std::string::npos);
  EXPECT_EQ(msg(LotrOptions()), "");
}

}  // namespace

// Regression: the group key keeps the path structure. "layers.0.attn_in" and
// "layers.0.attn.in" are different projection types (they used to share the
// key "layers_attn_in", one group, and fail on their different shapes).
TEST(Lotr, GroupKeyKeepsThePathStructure) {
  struct Attn : lowmem::nn::SlotModule {
    Attn() { register_slot("in", std::make_shared<lowmem::nn::Linear>(4, 6)); }
  };
  struct Layer : lowmem::nn::SlotModule {
    Layer() {
      register_slot("attn_in", std::make_shared<lowmem::nn::Linear>(4, 4));
      register_module("attn", std::make_shared<Attn>());
    }
  };
  struct Net : torch::nn::Module {
    Net() {
      auto layers = register_module("layers", torch::nn::ModuleList());
      layers->push_back(std::make_shared<Layer>());
      layers->push_back(std::make_shared<Layer>());
    }
  };
  auto net = std::make_shared<Net>();
  auto lotr =
      inject_lotr(net, TargetOptions({"attn_in", "in"}), LotrOptions(2));
  ASSERT_EQ(lotr->groups().size(), 2u);
  auto names = net->named_parameters();
  EXPECT_TRUE(names.contains("lotr_layers_attn__in.lhs"));
  EXPECT_TRUE(names.contains("lotr_layers_attn_in.lhs"));
  EXPECT_EQ(names["lotr_layers_attn__in.lhs"].sizes(),
            (std::vector<int64_t>{2, 4}));
  EXPECT_EQ(names["lotr_layers_attn_in.lhs"].sizes(),
            (std::vector<int64_t>{2, 6}));
}
