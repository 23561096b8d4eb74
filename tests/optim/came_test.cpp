// CAME: closed-form steps with degenerate hyperparameters, option validation.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "lowmem/optim/came.h"
#include "optim_test_util.h"

namespace {

using lowmem::optim::CAME;
using lowmem::optim::CameOptions;
using lowmem::testing::set_grad;

class CameClosedForm : public ::testing::TestWithParam<bool> {
 protected:
  lowmem::testing::ReferencePath ref_{GetParam()};
};

// 1-D, beta2 = 0, eps1 = 0: v = g^2, u = sign(g); beta1 = 0: m = u.
TEST_P(CameClosedForm, VectorFirstStepIsSignDescent) {
  auto p = torch::tensor({0.5, -1.0, 2.0, 0.0}).set_requires_grad(true);
  auto p0 = p.detach().clone();
  auto g = torch::tensor({0.3, -2.0, 1e-3, 5.0});
  CAME opt({p}, CameOptions(0.1).betas({0.0, 0.0, 0.0}).eps({0.0, 1e-16}));
  set_grad(p, g);
  opt.step();
  EXPECT_TRUE(torch::allclose(p.detach(), p0 - 0.1 * g.sign(), 1e-6, 1e-7));
}

// No bias correction: with beta1 = 0.9 the first step is 0.1 * lr * sign(g).
TEST_P(CameClosedForm, NoBiasCorrection) {
  auto p = torch::zeros({6}).set_requires_grad(true);
  auto g = torch::tensor({1.0, -2.0, 3.0, -4.0, 5.0, -6.0});
  CAME opt({p}, CameOptions(0.1).betas({0.9, 0.0, 0.5}).eps({0.0, 1e-16}));
  set_grad(p, g);
  opt.step();
  EXPECT_TRUE(torch::allclose(p.detach(), -0.01 * g.sign(), 1e-5, 1e-8));
}

// RMS(u) = 1 for sign(g); clip_threshold 0.5 halves the update.
TEST_P(CameClosedForm, UpdateClipping) {
  auto p = torch::zeros({5}).set_requires_grad(true);
  auto g = torch::tensor({1.0, -2.0, 3.0, -4.0, 5.0});
  CAME opt({p}, CameOptions(1.0)
                    .betas({0.0, 0.0, 0.0})
                    .eps({0.0, 1e-16})
                    .clip_threshold(0.5));
  set_grad(p, g);
  opt.step();
  EXPECT_TRUE(torch::allclose(p.detach(), -0.5 * g.sign(), 1e-6, 1e-7));
}

// Decoupled weight decay before the update: p1 = p0 - lr*wd*p0 - lr*sign(g).
TEST_P(CameClosedForm, DecoupledWeightDecay) {
  auto p = torch::tensor({1.0, -2.0, 4.0}).set_requires_grad(true);
  auto p0 = p.detach().clone();
  auto g = torch::tensor({1.0, 1.0, -1.0});
  CAME opt({p}, CameOptions(0.1)
                    .betas({0.0, 0.0, 0.0})
                    .eps({0.0, 1e-16})
                    .weight_decay(0.5));
  set_grad(p, g);
  opt.step();
  auto want = p0 - 0.1 * 0.5 * p0 - 0.1 * g.sign();
  EXPECT_TRUE(torch::allclose(p.detach(), want, 1e-6, 1e-7));
}

// Factored, g = a b^T (so g^2 is rank one and the factored second moment is
// exact): u = sign(g). beta1 = 0 makes the residual exactly eps2, so with
// beta3 = 0 the confidence factors are rsqrt(eps2/eps2) * rsqrt(eps2):
// Delta = m / sqrt(eps2).
TEST_P(CameClosedForm, FactoredRankOneWithConfidence) {
  auto a = torch::tensor({1.0, -2.0, 0.5});
  auto b = torch::tensor({0.25, 4.0, -1.5, 2.0});
  auto g = torch::outer(a, b);
  for (double eps2 : {1.0, 4.0}) {
    auto p = torch::ones({3, 4}).set_requires_grad(true);
    CAME opt({p}, CameOptions(0.1).betas({0.0, 0.0, 0.0}).eps({0.0, eps2}));
    set_grad(p, g);
    opt.step();
    auto want = 1.0 - 0.1 * g.sign() / std::sqrt(eps2);
    EXPECT_TRUE(torch::allclose(p.detach(), want, 1e-5, 1e-6)) << eps2;
  }
}

// >2-D: factored over the last two dims, each leading slice on its own.
TEST_P(CameClosedForm, ThreeDimFactorsLastTwoDims) {
  torch::manual_seed(0);
  auto g = torch::randn({3, 4, 5});
  auto p = torch::zeros({3, 4, 5}).set_requires_grad(true);
  CAME opt3({p}, CameOptions(0.1));
  set_grad(p, g);
  opt3.step();
  for (int k = 0; k < 3; ++k) {
    auto q = torch::zeros({4, 5}).set_requires_grad(true);
    CAME opt2({q}, CameOptions(0.1));
    set_grad(q, g[k]);
    opt2.step();
    EXPECT_TRUE(torch::allclose(p.detach()[k], q.detach(), 1e-5, 1e-7)) << k;
  }
  const auto* s = opt3.state_of(p);
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->exp_avg_sq_row.sizes(), (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(s->exp_avg_sq_col.sizes(), (std::vector<int64_t>{3, 5}));
}

// The current official 1-D path: momentum survives (no in-place lr scaling of
// m, the old aliasing bug): with constant grads, step 2 moves by
// lr*(0.9*0.1 + 0.1) = 0.19*lr.
TEST_P(CameClosedForm, VectorMomentumIsNotAliased) {
  auto p = torch::zeros({4}).set_requires_grad(true);
  auto g = torch::ones({4});
  CAME opt({p}, CameOptions(0.1).betas({0.9, 0.0, 0.5}).eps({0.0, 1e-16}));
  set_grad(p, g);
  opt.step();
  auto p1 = p.detach().clone();
  set_grad(p, g);
  opt.step();
  EXPECT_TRUE(torch::allclose(p1 - p.detach(), torch::full({4}, 0.019), 1e-5,
                              1e-8));
  const auto* s = opt.state_of(p);
  EXPECT_TRUE(torch::allclose(s->exp_avg, torch::full({4}, 0.19), 1e-6, 0));
}

INSTANTIATE_TEST_SUITE_P(
    Paths, CameClosedForm, ::testing::Values(false, true),
    [](const ::testing::TestParamInfo<bool>& i) {
      return i.param ? std::string("Reference") : std::string("Fused");
    });

void expect_invalid(const CameOptions& o, const std::string& substr) {
  auto p = torch::zeros({2}).set_requires_grad(true);
  try {
    CAME opt({p}, o);
    FAIL() << "no throw for " << substr;
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find(substr), std::string::npos)
        << e.what();
  }
}

TEST(CameOptions, Validation) {
  expect_invalid(CameOptions(-1.0), "[came] lr must be >= 0, got -1");
  expect_invalid(CameOptions(1e-3).eps({-1.0, 1e-16}), "eps1 (eps[0]) must be >= 0, got -1");
  expect_invalid(CameOptions(1e-3).eps({1e-30, -2.0}), "eps2 (eps[1]) must be >= 0, got -2");
  expect_invalid(CameOptions(1e-3).clip_threshold(0), "clip_threshold must be > 0, got 0");
  expect_invalid(CameOptions(1e-3).betas({1.5, 0.999, 0.9999}), "beta1 must be in [0, 1], got 1.5");
  expect_invalid(CameOptions(1e-3).betas({0.9, -0.1, 0.9999}), "beta2 must be in [0, 1], got -0.1");
  expect_invalid(CameOptions(1e-3).betas({0.9, 0.999, 2.0}), "beta3 must be in [0, 1], got 2");
  expect_invalid(CameOptions(1e-3).weight_decay(-0.5), "weight_decay must be >= 0, got -0.5");
}

TEST(CameOptions, DefaultsAreOfficial) {
  CameOptions o;
  EXPECT_EQ(std::get<0>(o.eps()), 1e-30);
  EXPECT_EQ(std::get<1>(o.eps()), 1e-16);
  EXPECT_EQ(o.clip_threshold(), 1.0);
  EXPECT_EQ(o.betas(), std::make_tuple(0.9, 0.999, 0.9999));
  EXPECT_EQ(o.weight_decay(), 0.0);
  std::vector<std::string> names;
  o.for_each_field([&](const char* n, auto&) { names.emplace_back(n); });
  EXPECT_EQ(names,
            (std::vector<std::string>{"lr", "eps1", "eps2", "clip_threshold",
                                      "beta1", "beta2", "beta3", "weight_decay",
                                      "optim_bits", "min_8bit_size"}));
  EXPECT_EQ(o.optim_bits(), 32);
  EXPECT_EQ(o.min_8bit_size(), 4096);
}

TEST(CameOptions, BadGroupAddedLaterThrowsAtStep) {
  auto p = torch::zeros({2}).set_requires_grad(true);
  auto q = torch::zeros({2}).set_requires_grad(true);
  CAME opt({p}, CameOptions(1e-3));
  opt.add_param_group(torch::optim::OptimizerParamGroup(
      {q}, std::make_unique<CameOptions>(CameOptions(-3.0))));
  set_grad(q, torch::ones({2}));
  EXPECT_THROW(opt.step(), c10::Error);
}

}  // namespace
