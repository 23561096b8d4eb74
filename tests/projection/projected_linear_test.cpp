#include "lowmem/projection/projected_linear.h"

#include "lowmem/core/memory.h"
#include "lowmem/nn/slot_module.h"
#include "testing/gradcheck.h"
#include "testing/pch.h"

namespace la = lowmem::nn;
namespace lp = lowmem::projection;

namespace {

std::shared_ptr<lowmem::projection::ProjectedLinear> make(
    int64_t in, int64_t out, const std::string& type,
    torch::Dtype dtype = torch::kDouble) {
  torch::manual_seed(1);
  auto base = std::make_shared<la::Linear>(in, out);
  base->to(dtype);
  auto l = std::make_shared<lowmem::projection::ProjectedLinear>(
      base, lp::ProjectorOptions().rank(3).proj_type(type).basis("orthogonal"));
  l->rebase(at::Tensor());
  torch::NoGradGuard ng;
  l->a().normal_();
  return l;
}

}  // namespace

TEST(ProjectedLinear, ForwardIsW0PlusPAAndOnlyAGetsAGradient) {
  for (std::string type : {"left", "right", "full", "std"}) {
    auto l = make(7, 5, type);
    auto x = torch::randn({4, 7}, torch::kDouble);
    auto w = l->effective_weight();
    auto& pr = l->projector();
    auto expect_w = l->base_weight() + pr.expand(l->a().detach());
    EXPECT_TRUE(torch::allclose(w, expect_w));
    auto y = l->forward(x);
    EXPECT_TRUE(torch::allclose(y, torch::linear(x, w, l->bias())));
    auto gy = torch::randn_like(y);
    y.backward(gy);
    EXPECT_FALSE(l->base_weight().grad().defined());
    // dL/dA = project(dL/dW) with dL/dW = gy^T x.
    auto g_full = gy.t().matmul(x);
    EXPECT_TRUE(torch::allclose(l->a().grad(), pr.project(g_full)));
  }
}

TEST(ProjectedLinear, GradcheckInputAndA) {
  for (std::string type : {"left", "right", "full"}) {
    auto l = make(5, 4, type);
    auto x = torch::randn({3, 5}, torch::kDouble).requires_grad_(true);
    const double worst = lowmem::testing::gradcheck(
        [&](const std::vector<at::Tensor>& in) {
          return l->forward(in[0]).pow(2).sum();
        },
        {x});
    EXPECT_LE(worst, 1.0) << type;
    // A's gradient through the layer itself, against central differences.
    auto f = [&](const at::Tensor& a) {
      torch::NoGradGuard ng;
      l->a().copy_(a);
      return l->forward(x.detach()).pow(2).sum().item<double>();
    };
    auto a0 = l->a().detach().clone();
    l->a().mutable_grad() = at::Tensor();
    l->forward(x.detach()).pow(2).sum().backward();
    auto analytic = l->a().grad().clone();
    auto numeric = torch::zeros_like(a0);
    auto flat = numeric.view(-1);
    for (int64_t i = 0; i < a0.numel(); ++i) {
      auto ap = a0.clone(), am = a0.clone();
      ap.view(-1)[i] += 1e-6;
      am.view(-1)[i] -= 1e-6;
      flat[i] = (f(ap) - f(am)) / 2e-6;
    }
    EXPECT_TRUE(torch::allclose(analytic, numeric, 1e-5, 1e-7)) << type;
    torch::NoGradGuard ng;
    l->a().copy_(a0);
  }
}

TEST(ProjectedLinear, MergeAndRebaseKeepTheFunction) {
  auto l = make(8, 6, "right");
  auto x = torch::randn({2, 8}, torch::kDouble);
  auto y0 = l->forward(x).detach();
  auto old = l->projector().right().clone();
  l->merge();
  EXPECT_EQ(l->a().abs().max().item<double>(), 0.0);
  EXPECT_TRUE(torch::allclose(l->forward(x), y0));
  l->rebase(at::Tensor());
  EXPECT_EQ(l->projector().refresh_count(), 2);
  EXPECT_FALSE(torch::allclose(old, l->projector().right()));
  EXPECT_TRUE(torch::allclose(l->forward(x), y0));
  // svd bases need the full gradient, captured on request.
  auto s = std::make_shared<lowmem::projection::ProjectedLinear>(
      std::make_shared<la::Linear>(8, 6), lp::ProjectorOptions().rank(2));
  try {
    s->rebase(at::Tensor());
    ADD_FAILURE();
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("needs the full weight gradient"),
              std::string::npos);
  }
  s->capture_full_grad(true);
  s->forward(torch::randn({3, 8})).sum().backward();
  ASSERT_TRUE(s->base_weight().grad().defined());
  s->rebase(s->base_weight().grad());
  s->capture_full_grad(false);
  EXPECT_FALSE(s->base_weight().grad().defined());
  EXPECT_FALSE(s->base_weight().requires_grad());
}

TEST(ProjectedLinear, BackwardNeverFormsTheWeightGradient) {
  const int64_t d = 512;
  torch::manual_seed(0);
  auto l = std::make_shared<lowmem::projection::ProjectedLinear>(
      std::make_shared<la::Linear>(d, d, /*bias=*/false),
      lp::ProjectorOptions().rank(8).basis("gaussian"));
  l->rebase(at::Tensor());
  lowmem::MemoryTracker tracker;
  auto x = torch::randn({4, d});
  auto y = l->forward(x);
  auto scope = tracker.scope();
  y.sum().backward();
  const int64_t weight_bytes = d * d * 4;
  EXPECT_LT(scope.peak_delta(), weight_bytes / 8);  // 1 MiB gradient never made
  EXPECT_TRUE(l->a().grad().defined());
  EXPECT_FALSE(l->base_weight().grad().defined());
}

TEST(ProjectedLinear, InjectUsesSlotOrderAsStream) {
  struct Net : la::SlotModule {
    Net() {
      register_slot("a", std::make_shared<la::Linear>(4, 6));
      register_slot("b", std::make_shared<la::Linear>(6, 4));
    }
  } net;
  auto layers = lowmem::projection::inject_projected(
      net, lp::ProjectorOptions().rank(2).basis("gaussian").seed(3));
  ASSERT_EQ(layers.size(), 2u);
  EXPECT_EQ(&net.linear("a"), layers[0].get());
  layers[0]->rebase(at::Tensor());
  lp::Projector same(lp::ProjectorOptions().rank(2).basis("gaussian").seed(3),
                     6, 4, /*stream=*/0);
  same.refresh(at::kFloat, at::kCPU);
  EXPECT_TRUE(torch::equal(same.right(), layers[0]->projector().right()));
  int trainable = 0;
  for (auto& p : net.parameters()) trainable += p.requires_grad() ? 1 : 0;
  EXPECT_EQ(trainable, 4);  // two A's and two biases
}

// proj_dtype "grad" is GaLore's (the optimizer form); the adapter says so.
TEST(ProjectedLinear, RefusesProjDtypeGrad) {
  try {
    lowmem::projection::ProjectedLinear l(
        std::make_shared<la::Linear>(8, 6),
        lp::ProjectorOptions().rank(2).proj_dtype("grad"));
    ADD_FAILURE() << "proj_dtype grad accepted by the adapter";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("set proj_dtype float32"),
              std::string::npos)
        << e.what();
  }
}
