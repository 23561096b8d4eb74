#include "lowmem/adapters/snell.h"

#include <gtest/gtest.h>

#include <cmath>

#include "adapters/tiny_model.h"
#include "lowmem/core/memory.h"
#include "testing/gradcheck.h"

namespace {

using namespace lowmem::adapters;
using lowmem::testing::error_of;
using lowmem::testing::TinyModel;

// Deterministic SNELL (no dropout / DropPath) for exact comparisons.
SnellOptions det(int64_t r) { return SnellOptions(r).dropout(0).drop_path(0); }

std::shared_ptr<lowmem::nn::Linear> dbl_linear(int64_t in, int64_t out) {
  auto l = std::make_shared<lowmem::nn::Linear>(in, out);
  l->to(torch::kDouble);
  return l;
}

TEST(Snell, KernelIsPiecewiseLinearDistance) {
  torch::manual_seed(0);
  at::Tensor a = torch::randn({2, 5, 3}, torch::kDouble);
  at::Tensor b = torch::randn({2, 4, 3}, torch::kDouble);
  at::Tensor c = torch::tensor({0.1, -0.1}, torch::kDouble);
  at::Tensor k = snell_kernel(a, b, c);
  ASSERT_EQ(k.sizes(), (std::vector<int64_t>{5, 4}));
  for (int i = 0; i < 5; ++i)
    for (int j = 0; j < 4; ++j) {
      double want = 0.1 * (a[0][i] - b[0][j]).norm().item<double>() -
                    0.1 * (a[1][i] - b[1][j]).norm().item<double>();
      EXPECT_NEAR(k[i][j].item<double>(), want, 1e-12);
    }
}

TEST(Snell, ThresholdMatchesQuantileAndEq5) {
  torch::manual_seed(1);
  at::Tensor a = torch::rand({37, 11}, torch::kDouble);
  for (double q : {0.0, 0.1, 0.5, 0.77, 0.99}) {
    at::Tensor want = torch::quantile(a.reshape({-1}), q);
    EXPECT_NEAR(snell_threshold(a, q, "code").item<double>(), want.item<double>(), 1e-15) << q;
    at::Tensor sorted = std::get<0>(a.reshape({-1}).sort());
    int64_t k = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(q * a.numel())));
    EXPECT_EQ(snell_threshold(a, q, "paper").item<double>(), sorted[k - 1].item<double>()) << q;
  }
}

TEST(Snell, SparsifyKeepsTheLargestEntries) {
  torch::manual_seed(2);
  at::Tensor k = torch::randn({20, 30}, torch::kDouble);
  const double q = 0.7;
  at::Tensor tau = snell_threshold(k.abs(), q, "code");
  at::Tensor ks = snell_sparsify(k, q, "code");
  at::Tensor kept = k.abs() > tau;
  // Survivors become sign(K)·K², the rest 0 (code semantics).
  EXPECT_TRUE(torch::allclose(ks, torch::where(kept, k * k.abs(), torch::zeros_like(k))));
  EXPECT_NEAR(kept.to(torch::kDouble).mean().item<double>(), 1 - q, 1.0 / 600 + 1e-12);
  at::Tensor kp = snell_sparsify(k, q, "paper");
  at::Tensor tp = snell_threshold(k.abs(), q, "paper");
  EXPECT_TRUE(torch::allclose(kp, k * torch::relu(k.abs() - tp)));
  EXPECT_EQ(snell_sparsify(k, 0.0, "code").data_ptr(), k.data_ptr());  // q = 0: KLoRA
}

// The recomputing custom Function gives autograd's gradients of the
// stored-graph version, for both sparsifiers, with and without sparsity.
TEST(Snell, CustomBackwardEqualsStoredGraphAutograd) {
  for (std::string variant : {"code", "paper"}) {
    for (double q : {0.0, 0.4}) {
      torch::manual_seed(3);
      auto opts = torch::TensorOptions().dtype(torch::kDouble);
      at::Tensor u = torch::randn({7, 6}, opts);
      at::Tensor a = torch::randn({2, 6, 2}, opts) * 0.5;
      at::Tensor b = torch::randn({2, 5, 2}, opts) * 0.5;
      at::Tensor c = torch::tensor({0.1, -0.1}, opts);
      at::Tensor w = torch::randn({7, 5}, opts);
      auto run = [&](bool custom) {
        std::vector<at::Tensor> in = {u.clone().requires_grad_(), a.clone().requires_grad_(),
                                      b.clone().requires_grad_(), c.clone().requires_grad_()};
        at::Tensor out = custom ? snell_matmul(in[0], in[1], in[2], in[3], q, variant)
                                : in[0].mm(snell_sparsify(snell_kernel(in[1], in[2], in[3]),
                                                          q, variant));
        (out * w).sum().backward();
        std::vector<at::Tensor> g = {out.detach()};
        for (auto& t : in) g.push_back(t.grad());
        return g;
      };
      auto ref = run(false), got = run(true);
      const char* what[] = {"output", "du", "dA", "dB", "dc"};
      for (size_t i = 0; i < ref.size(); ++i)
        EXPECT_TRUE(torch::allclose(got[i], ref[i], 1e-10, 1e-12))
            << variant << " q=" << q << " " << what[i] << "\n"
            << (got[i] - ref[i]).abs().max();
    }
  }
}

TEST(Snell, Float64Gradcheck) {
  torch::manual_seed(4);
  // q = 0: the true gradient of the kernelised merge, through the custom
  // Function, w.r.t. input, A, B and c.
  SnellLinear l(dbl_linear(6, 5), det(4).learnable_coeff(true));
  at::Tensor x = torch::randn({2, 3, 6}, torch::kDouble).requires_grad_();
  at::Tensor w = torch::randn({2, 3, 5}, torch::kDouble);
  double worst = lowmem::testing::gradcheck(
      [&](const std::vector<at::Tensor>& in) { return (l.forward(in[0]) * w).sum(); },
      {x, l.snell_A(), l.snell_B(), l.snell_coeff()});
  EXPECT_LE(worst, 1.0);
  // q > 0: the mask is a stopped function of A, B, so only the input
  // gradient is a true derivative; A, B are checked against autograd above.
  SnellLinear s(dbl_linear(6, 5), det(4).sparsity(0.5));
  worst = lowmem::testing::gradcheck(
      [&](const std::vector<at::Tensor>& in) { return (s.forward(in[0]) * w).sum(); }, {x});
  EXPECT_LE(worst, 1.0);
}

TEST(Snell, ParameterCountInitAndMerge) {
  torch::manual_seed(5);
  const int64_t d = 8, r = 4;
  auto model = std::make_shared<TinyModel>(d);
  auto snell = inject_snell(model, TargetOptions({"q", "up"}), SnellOptions(r).sparsity(0.5));
  // r(d_in + d_out) per layer, like LoRA-r (c is fixed).
  EXPECT_EQ(snell->num_trainable_parameters(), 2 * (r * (d + d) + r * (d + 2 * d)));
  auto* l = static_cast<SnellLinear*>(snell->layers()[0].layer.get());
  EXPECT_EQ(l->snell_A().sizes(), (std::vector<int64_t>{2, d, r / 2}));
  EXPECT_FALSE(l->snell_coeff().requires_grad());
  EXPECT_TRUE(torch::equal(l->snell_coeff(), torch::tensor({0.1f, -0.1f})));
  // kaiming_uniform(a=√5), fan_in = d_in·r/H.
  EXPECT_LE(l->snell_A().abs().max().item<double>(), 1.0 / std::sqrt(d * r / 2.0));
  // About q of ΔW is zero.
  at::Tensor dw = l->delta_weight();
  EXPECT_NEAR((dw == 0).to(torch::kDouble).mean().item<double>(), 0.5, 1.0 / 64 + 1e-9);
  model->eval();  // no dropout / DropPath
  at::Tensor x = torch::randn({3, d});
  at::Tensor unmerged = model->forward(x).detach();
  auto before = lowmem::testing::snapshot(*model);
  snell->merge();
  EXPECT_LE((model->forward(x) - unmerged).abs().max().item<double>(), 1e-6);
  snell->unmerge();
  for (const auto& p : model->named_parameters())
    EXPECT_LE((p.value() - before.at(p.key())).abs().max().item<double>(), 1e-6) << p.key();
  // With learnable coefficients c is trainable too.
  auto model2 = std::make_shared<TinyModel>(d);
  auto s2 = inject_snell(model2, TargetOptions({"q"}), SnellOptions(r).learnable_coeff(true));
  EXPECT_EQ(s2->num_trainable_parameters(), 2 * (r * 2 * d + 2));
}

TEST(Snell, DropoutAndDropPathOnlyInTraining) {
  torch::manual_seed(6);
  SnellLinear l(std::make_shared<lowmem::nn::Linear>(16, 16), SnellOptions(4));
  at::Tensor x = torch::randn({64, 16});
  l.eval();
  EXPECT_TRUE(torch::equal(l.forward(x), l.forward(x)));
  l.train();
  // DropPath zeroes whole samples of the branch: some rows equal base(x).
  at::Tensor delta = l.forward(x) - l.base()->forward(x);
  at::Tensor dropped = (delta.abs().sum(1) == 0);
  EXPECT_GT(dropped.sum().item<int64_t>(), 0);
  EXPECT_LT(dropped.sum().item<int64_t>(), 64);
}

// Activation memory: the custom Function keeps no d_in x d_out tensor alive
// between forward and backward; the stored graph keeps K, K_s and the H
// distance matrices (which of them autograd keeps depends on the op).
TEST(Snell, RecomputeKeepsNoDenseUpdateAlive) {
  lowmem::MemoryTracker tracker;
  const int64_t d = 96, n = 4;
  auto measure = [&](bool recompute) {
    torch::manual_seed(7);
    SnellLinear l(std::make_shared<lowmem::nn::Linear>(d, d),
                  det(8).sparsity(0.5).recompute(recompute));
    at::Tensor x = torch::randn({n, d});
    int64_t before = tracker.current_bytes();
    at::Tensor y = l.forward(x);
    int64_t held = tracker.current_bytes() - before;  // output + saved tensors
    y.sum().backward();
    EXPECT_TRUE(l.snell_A().grad().defined());
    return held;
  };
  int64_t custom = measure(true), stored = measure(false);
  const int64_t dense = d * d * 4;  // one float d x d matrix
  EXPECT_LT(custom, dense) << custom;           // only O(n·d) kept
  EXPECT_GE(stored - custom, 2 * dense) << stored << " vs " << custom;
}

TEST(Snell, OptionValidationMessages) {
  auto msg = [](const SnellOptions& o) { return error_of([&] { validate(o); }); };
  EXPECT_NE(msg(SnellOptions(0)).find("r must be > 0, got 0"), std::string::npos);
  EXPECT_NE(msg(SnellOptions(5)).find("r 5 must be divisible by pieces 2"), std::string::npos);
  EXPECT_NE(msg(SnellOptions().sparsity(1.0)).find("sparsity must be in [0, 1), got 1"),
            std::string::npos);
  EXPECT_NE(msg(SnellOptions().sparsify("eq5")).find("got 'eq5'"), std::string::npos);
  EXPECT_NE(msg(SnellOptions().drop_path(-0.1)).find("drop_path"), std::string::npos);
  EXPECT_EQ(msg(SnellOptions()), "");
  std::vector<std::string> names;
  SnellOptions o;
  o.for_each_field([&](const char* n, auto&) { names.push_back(n); });
  EXPECT_EQ(names.size(), 9u);
}

}  // namespace
