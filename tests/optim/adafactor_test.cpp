// Adafactor (HF semantics): closed-form steps, step-size rules, validation.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "lowmem/optim/adafactor.h"
#include "optim_test_util.h"

namespace {

using lowmem::optim::Adafactor;
using lowmem::optim::AdafactorOptions;
using lowmem::testing::set_grad;

AdafactorOptions fixed(double lr) {
  return AdafactorOptions(lr).relative_step(false).scale_parameter(false);
}

class AdafactorClosedForm : public ::testing::TestWithParam<bool> {
 protected:
  lowmem::testing::ReferencePath ref_{GetParam()};
};

// beta2_1 = 1 - 1^c = 0: the first EMA is the observation; eps1 = 0 makes
// u = sign(g) for vectors and for rank-one g^2 matrices.
TEST_P(AdafactorClosedForm, FirstStepIsSignDescent) {
  auto a = torch::tensor({1.0, -2.0, 0.5});
  auto b = torch::tensor({0.25, 4.0, -1.5, 2.0});
  auto gw = torch::outer(a, b);
  auto w = torch::ones({3, 4}).set_requires_grad(true);
  auto v = torch::tensor({0.5, -1.0, 2.0}).set_requires_grad(true);
  auto v0 = v.detach().clone();
  auto gv = torch::tensor({3.0, -0.1, 7.0});
  Adafactor opt({w, v}, fixed(0.1).eps({0.0, 1e-3}));
  set_grad(w, gw);
  set_grad(v, gv);
  opt.step();
  EXPECT_TRUE(torch::allclose(w.detach(), 1.0 - 0.1 * gw.sign(), 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(v.detach(), v0 - 0.1 * gv.sign(), 1e-6, 1e-7));
}

// Relative step with parameter scaling: alpha_1 = max(eps2, rms(p0)) * 1e-2.
TEST_P(AdafactorClosedForm, RelativeStepScaled) {
  auto p = torch::tensor({3.0, -4.0, 0.0, 0.0}).set_requires_grad(true);  // rms 2.5
  auto p0 = p.detach().clone();
  auto g = torch::tensor({1.0, 2.0, -3.0, 0.5});
  Adafactor opt({p}, AdafactorOptions().eps({0.0, 1e-3}));
  set_grad(p, g);
  opt.step();
  EXPECT_TRUE(torch::allclose(p.detach(), p0 - 0.025 * g.sign(), 1e-5, 1e-7));
}

// warmup_init: rho_1 = min(1e-6 * 1, 1) = 1e-6; tiny params: alpha uses eps2.
TEST_P(AdafactorClosedForm, WarmupInitAndEps2Floor) {
  auto p = torch::zeros({4}).set_requires_grad(true);
  auto g = torch::tensor({1.0, 2.0, -3.0, 0.5});
  Adafactor opt({p}, AdafactorOptions().warmup_init(true).eps({0.0, 1e-3}));
  set_grad(p, g);
  opt.step();
  EXPECT_TRUE(torch::allclose(p.detach(), -1e-9 * g.sign(), 1e-5, 1e-15));
}

// Weight decay is decoupled, scaled by alpha and applied before the update;
// momentum averages the alpha-scaled update.
TEST_P(AdafactorClosedForm, WeightDecayAndMomentum) {
  auto p = torch::tensor({1.0, -2.0, 4.0}).set_requires_grad(true);
  auto p0 = p.detach().clone();
  auto g = torch::tensor({1.0, 1.0, -1.0});
  Adafactor opt({p}, fixed(0.1).eps({0.0, 1e-3}).weight_decay(0.5).beta1(0.5));
  set_grad(p, g);
  opt.step();
  auto want = p0 - 0.1 * 0.5 * p0 - 0.5 * 0.1 * g.sign();
  EXPECT_TRUE(torch::allclose(p.detach(), want, 1e-6, 1e-7));
}

// Step 2 uses beta2_2 = 1 - 2^-0.8 (no clipping with a huge threshold).
TEST_P(AdafactorClosedForm, TimeDependentBeta2) {
  auto p = torch::zeros({3}).set_requires_grad(true);
  Adafactor opt({p}, fixed(0.1).eps({0.0, 1e-3}).clip_threshold(1e9));
  set_grad(p, torch::ones({3}));
  opt.step();
  set_grad(p, torch::full({3}, 2.0));
  opt.step();
  const double b = 1.0 - std::pow(2.0, -0.8);
  const double v2 = b * 1.0 + (1 - b) * 4.0;
  const double want = -0.1 - 0.1 * 2.0 / std::sqrt(v2);
  EXPECT_TRUE(torch::allclose(p.detach(), torch::full({3}, want), 1e-6, 0));
  EXPECT_NEAR(b, 0.4257, 1e-4);  // the spec's table
}

// Update clipping at RMS 1: a constant 2-D gradient gives u = 1 everywhere
// after the first step, so a half threshold halves the step.
TEST_P(AdafactorClosedForm, UpdateClipping) {
  auto p = torch::zeros({4, 3}).set_requires_grad(true);
  Adafactor opt({p}, fixed(1.0).clip_threshold(0.5));
  set_grad(p, torch::full({4, 3}, -3.0));
  opt.step();
  EXPECT_TRUE(torch::allclose(p.detach(), torch::full({4, 3}, 0.5), 1e-6, 0));
}

INSTANTIATE_TEST_SUITE_P(
    Paths, AdafactorClosedForm, ::testing::Values(false, true),
    [](const ::testing::TestParamInfo<bool>& i) {
      return i.param ? std::string("Reference") : std::string("Fused");
    });

TEST(Adafactor, StepSizeRule) {
  using lowmem::optim::adafactor_step_size;
  AdafactorOptions rel;  // relative_step, scale_parameter
  EXPECT_DOUBLE_EQ(adafactor_step_size(rel, 1, 0.5), 0.5 * 1e-2);
  EXPECT_DOUBLE_EQ(adafactor_step_size(rel, 1, 1e-6), 1e-3 * 1e-2);
  EXPECT_DOUBLE_EQ(adafactor_step_size(rel, 40000, 1.0), 1.0 / 200.0);
  auto warm = AdafactorOptions().warmup_init(true).scale_parameter(false);
  EXPECT_DOUBLE_EQ(adafactor_step_size(warm, 100, 9.0), 1e-4);
  EXPECT_DOUBLE_EQ(adafactor_step_size(warm, 10000, 9.0), 1e-2);
  EXPECT_DOUBLE_EQ(adafactor_step_size(fixed(0.3), 7, 9.0), 0.3);
}

void expect_invalid(const AdafactorOptions& o, const std::string& substr) {
  auto p = torch::zeros({2}).set_requires_grad(true);
  try {
    Adafactor opt({p}, o);
    FAIL() << "no throw for " << substr;
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find(substr), std::string::npos)
        << e.what();
  }
}

TEST(AdafactorOptions, Validation) {
  expect_invalid(AdafactorOptions(0.1), "lr=0.1 cannot be combined with relative_step=true");
  expect_invalid(AdafactorOptions().relative_step(false), "relative_step=false requires an lr");
  expect_invalid(fixed(0.1).warmup_init(true), "warmup_init=true requires relative_step=true");
  expect_invalid(fixed(-0.1), "[adafactor] lr must be >= 0, got -0.1");
  expect_invalid(fixed(0.1).eps({-1.0, 1e-3}), "eps1 (eps[0]) must be >= 0, got -1");
  expect_invalid(fixed(0.1).eps({1e-30, -1.0}), "eps2 (eps[1]) must be >= 0, got -1");
  expect_invalid(fixed(0.1).clip_threshold(-1), "clip_threshold must be > 0, got -1");
  expect_invalid(fixed(0.1).decay_rate(0.5), "decay_rate must be <= 0");
  expect_invalid(fixed(0.1).beta1(1.5), "beta1 must be in [0, 1], got 1.5");
  expect_invalid(fixed(0.1).weight_decay(-1), "weight_decay must be >= 0, got -1");
}

TEST(AdafactorOptions, DefaultsAreHf) {
  AdafactorOptions o;
  EXPECT_FALSE(o.lr().has_value());
  EXPECT_EQ(o.eps(), std::make_tuple(1e-30, 1e-3));
  EXPECT_EQ(o.clip_threshold(), 1.0);
  EXPECT_EQ(o.decay_rate(), -0.8);
  EXPECT_FALSE(o.beta1().has_value());
  EXPECT_EQ(o.weight_decay(), 0.0);
  EXPECT_TRUE(o.scale_parameter());
  EXPECT_TRUE(o.relative_step());
  EXPECT_FALSE(o.warmup_init());
  int n = 0;
  o.for_each_field([&](const char*, auto&) { ++n; });
  EXPECT_EQ(n, 10);
}

}  // namespace
