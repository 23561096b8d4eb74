// Behaviour every lowmem per-parameter optimizer shares: fused == ATen path,
// resume, dtypes, state bytes, param groups + LR schedulers, closures; and
// the fused AdamW against torch::optim::AdamW.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <sstream>

#include "lowmem/core/memory.h"
#include "lowmem/optim/adafactor.h"
#include "lowmem/optim/adamw.h"
#include "lowmem/optim/came.h"
#include "lowmem/optim/extras.h"
#include "optim_test_util.h"
#include "testing/golden.h"

namespace {

namespace lo = lowmem::optim;
using lowmem::testing::set_grad;
using Factory = std::function<std::unique_ptr<torch::optim::Optimizer>(
    std::vector<torch::Tensor>)>;

struct PerParamCase {
  std::string name;
  Factory make;
};

std::vector<PerParamCase> cases() {
  return {
      {"came", [](auto p) {
         return std::make_unique<lo::CAME>(
             p, lo::CameOptions(1e-2).weight_decay(0.1));
       }},
      {"adafactor_relative", [](auto p) {
         return std::make_unique<lo::Adafactor>(p, lo::AdafactorOptions());
       }},
      {"adafactor_beta1_wd", [](auto p) {
         return std::make_unique<lo::Adafactor>(
             p, lo::AdafactorOptions(1e-2)
                    .relative_step(false)
                    .beta1(0.9)
                    .weight_decay(0.1));
       }},
      {"adamw", [](auto p) {
         return std::make_unique<lo::AdamW>(
             p, lo::AdamWOptions(1e-2).weight_decay(0.1));
       }},
  };
}

// Shapes that cover: multi-chunk rows (300*257 > 2 chunks of 2^15), odd
// widths, 3-D factoring, a vector, a scalar.
std::vector<torch::Tensor> make_params(torch::Dtype dtype = torch::kFloat) {
  torch::manual_seed(42);
  std::vector<torch::Tensor> ps;
  for (auto shape : std::vector<std::vector<int64_t>>{
           {300, 257}, {17, 5}, {3, 4, 5}, {33}, {}}) {
    ps.push_back(torch::randn(shape).to(dtype).set_requires_grad(true));
  }
  return ps;
}

std::vector<std::vector<torch::Tensor>> make_grads(
    const std::vector<torch::Tensor>& ps, int steps) {
  torch::manual_seed(7);
  std::vector<std::vector<torch::Tensor>> out(steps);
  for (auto& s : out) {
    for (auto& p : ps) s.push_back(torch::randn(p.sizes()));
  }
  return out;
}

void run(torch::optim::Optimizer& opt, std::vector<torch::Tensor>& ps,
         const std::vector<std::vector<torch::Tensor>>& grads, int from,
         int to) {
  for (int t = from; t < to; ++t) {
    for (size_t i = 0; i < ps.size(); ++i) set_grad(ps[i], grads[t][i]);
    opt.step();
  }
}

std::vector<torch::Tensor> clones(const std::vector<torch::Tensor>& ps) {
  std::vector<torch::Tensor> out;
  for (auto& p : ps) out.push_back(p.detach().clone().set_requires_grad(true));
  return out;
}

class AllOptimizers : public ::testing::TestWithParam<PerParamCase> {};

TEST_P(AllOptimizers, FusedMatchesAtenPath) {
  auto a = make_params(), b = clones(a);
  auto grads = make_grads(a, 5);
  auto oa = GetParam().make(a);
  auto ob = GetParam().make(b);
  run(*oa, a, grads, 0, 5);
  {
    lowmem::testing::ReferencePath ref(true);
    run(*ob, b, grads, 0, 5);
  }
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_LE(lowmem::testing::closeness(a[i].detach(), b[i].detach(), 1e-5,
                                         1e-6), 1.0) << i;
  }
  auto sa = lo::state_tensors(*oa), sb = lo::state_tensors(*ob);
  ASSERT_EQ(sa.size(), sb.size());
}

TEST_P(AllOptimizers, ResumeIsExact) {
  auto a = make_params(), b = clones(a);
  auto grads = make_grads(a, 6);
  auto oa = GetParam().make(a);
  run(*oa, a, grads, 0, 3);
  std::stringstream ss;
  torch::save(*oa, ss);
  // A fresh optimizer on a copy of the parameters, loaded from the archive.
  for (size_t i = 0; i < a.size(); ++i) {
    torch::NoGradGuard ng;
    b[i].copy_(a[i]);
  }
  auto ob = GetParam().make(b);
  torch::load(*ob, ss);
  run(*oa, a, grads, 3, 6);
  run(*ob, b, grads, 3, 6);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(torch::equal(a[i].detach(), b[i].detach())) << i;
  }
  EXPECT_EQ(lo::state_bytes(*oa), lo::state_bytes(*ob));
}

TEST_P(AllOptimizers, HalfParamsKeepDtypeStateIsFp32) {
  for (auto dtype : {torch::kBFloat16, torch::kHalf}) {
    auto ps = make_params(dtype);
    auto ref = make_params(torch::kFloat);
    for (size_t i = 0; i < ps.size(); ++i) {
      torch::NoGradGuard ng;
      ref[i].copy_(ps[i]);  // the same (rounded) start
    }
    auto grads = make_grads(ps, 3);
    auto opt = GetParam().make(ps);
    auto opt_ref = GetParam().make(ref);
    run(*opt, ps, grads, 0, 3);
    run(*opt_ref, ref, grads, 0, 3);
    for (size_t i = 0; i < ps.size(); ++i) {
      EXPECT_EQ(ps[i].scalar_type(), dtype);
      EXPECT_TRUE(torch::isfinite(ps[i]).all().item<bool>());
      const double tol = dtype == torch::kBFloat16 ? 3e-2 : 5e-3;
      EXPECT_TRUE(torch::allclose(ps[i].detach().to(torch::kFloat),
                                  ref[i].detach(), tol, tol))
          << GetParam().name << " " << i;
    }
    for (const auto& s : lo::state_tensors(*opt)) {
      EXPECT_EQ(s.scalar_type(), torch::kFloat);
    }
  }
}

TEST_P(AllOptimizers, ParamGroupsAndStepLR) {
  // Two groups; StepLR halves both lrs; lr 0 freezes a group.
  auto a = make_params();
  std::vector<torch::Tensor> g1(a.begin(), a.begin() + 2);
  std::vector<torch::Tensor> g2(a.begin() + 2, a.end());
  auto opt = GetParam().make(g1);
  auto o2 = opt->defaults().clone();
  o2->set_lr(0.0);  // a relative-step Adafactor group ignores it
  opt->add_param_group(torch::optim::OptimizerParamGroup(g2, std::move(o2)));
  ASSERT_EQ(opt->param_groups().size(), 2u);
  const double lr0 = opt->param_groups()[0].options().get_lr();
  torch::optim::StepLR sched(*opt, /*step_size=*/1, /*gamma=*/0.5);
  auto frozen = clones(g2);
  auto grads = make_grads(a, 2);
  run(*opt, a, grads, 0, 1);
  sched.step();  // StepLR: the first call (count 0) keeps the lrs
  sched.step();
  const bool relative = GetParam().name == "adafactor_relative";
  EXPECT_DOUBLE_EQ(opt->param_groups()[0].options().get_lr(),
                   relative ? 0.0 : lr0 * 0.5);
  run(*opt, a, grads, 1, 2);
  for (size_t i = 0; i < g2.size(); ++i) {
    if (relative) continue;  // lr unused
    EXPECT_TRUE(torch::equal(g2[i].detach(), frozen[i].detach())) << i;
  }
}

TEST_P(AllOptimizers, ClosureAndMissingGrads) {
  auto w = torch::full({4, 3}, 1.0).set_requires_grad(true);
  auto unused = torch::ones({5}).set_requires_grad(true);
  auto opt = GetParam().make({w, unused});
  auto loss = opt->step([&] {
    opt->zero_grad();
    auto l = (w * w).sum();
    l.backward();
    return l;
  });
  EXPECT_NEAR(loss.item<double>(), 12.0, 1e-6);
  EXPECT_LT(w.detach().max().item<double>(), 1.0);  // moved down the gradient
  EXPECT_TRUE(torch::equal(unused.detach(), torch::ones({5})));
  EXPECT_EQ(lo::state_tensors(*opt).size(),
            static_cast<const lo::OptimizerExtras&>(
                dynamic_cast<const lo::OptimizerExtras&>(*opt))
                .state_tensors()
                .size());
}

INSTANTIATE_TEST_SUITE_P(Optim, AllOptimizers, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<PerParamCase>& i) {
                           return i.param.name;
                         });

// Analytic state sizes (fp32): m x n matrix and 1-D parameters.
int64_t bytes_after_one_step(torch::optim::Optimizer& opt,
                             std::vector<torch::Tensor>& ps) {
  for (auto& p : ps) set_grad(p, torch::randn(p.sizes()));
  opt.step();
  return lo::state_bytes(opt);
}

TEST(StateBytes, AnalyticCounts) {
  const int64_t m = 48, n = 20, k = 7;
  auto mk = [&] {
    return std::vector<torch::Tensor>{
        torch::zeros({m, n}).set_requires_grad(true)};
  };
  auto vec = [&] {
    return std::vector<torch::Tensor>{torch::zeros({k}).set_requires_grad(true)};
  };
  {
    auto ps = mk();
    lo::CAME opt(ps, lo::CameOptions(1e-3));
    EXPECT_EQ(bytes_after_one_step(opt, ps), 4 * (m * n + 2 * (m + n)));
  }
  {
    auto ps = vec();
    lo::CAME opt(ps, lo::CameOptions(1e-3));
    EXPECT_EQ(bytes_after_one_step(opt, ps), 4 * 2 * k);  // m and v
  }
  {
    auto ps = std::vector<torch::Tensor>{
        torch::zeros({3, 4, 5}).set_requires_grad(true)};
    lo::CAME opt(ps, lo::CameOptions(1e-3));
    EXPECT_EQ(bytes_after_one_step(opt, ps), 4 * (60 + 2 * (12 + 15)));
  }
  {
    auto ps = mk();
    lo::Adafactor opt(ps);
    EXPECT_EQ(bytes_after_one_step(opt, ps), 4 * (m + n));
  }
  {
    auto ps = vec();
    lo::Adafactor opt(ps);
    EXPECT_EQ(bytes_after_one_step(opt, ps), 4 * k);
  }
  {
    auto ps = mk();
    lo::Adafactor opt(ps, lo::AdafactorOptions().beta1(0.9));
    EXPECT_EQ(bytes_after_one_step(opt, ps), 4 * (m * n + m + n));
  }
  {
    auto ps = vec();
    lo::Adafactor opt(ps, lo::AdafactorOptions().beta1(0.9));
    EXPECT_EQ(bytes_after_one_step(opt, ps), 4 * 2 * k);
  }
  {
    auto ps = mk();
    lo::AdamW opt(ps);
    EXPECT_EQ(bytes_after_one_step(opt, ps), 4 * 2 * m * n);
  }
  {
    auto ps = std::vector<torch::Tensor>{
        torch::zeros({m, n}, torch::kBFloat16).set_requires_grad(true)};
    lo::CAME opt(ps, lo::CameOptions(1e-3));
    EXPECT_EQ(bytes_after_one_step(opt, ps), 4 * (m * n + 2 * (m + n)));
  }
}

// Fused AdamW == torch::optim::AdamW (1.13) with weight decay, several steps.
TEST(AdamW, MatchesTorchAdamW) {
  for (bool reference : {false, true}) {
    lowmem::testing::ReferencePath ref(reference);
    auto a = make_params(), b = clones(a);
    auto grads = make_grads(a, 8);
    lo::AdamW ours(a, lo::AdamWOptions(3e-2).betas({0.8, 0.99}).weight_decay(0.2).eps(1e-6));
    torch::optim::AdamW theirs(
        b, torch::optim::AdamWOptions(3e-2).betas({0.8, 0.99}).weight_decay(0.2).eps(1e-6));
    run(ours, a, grads, 0, 8);
    run(theirs, b, grads, 0, 8);
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_LE(lowmem::testing::closeness(a[i].detach(), b[i].detach(), 1e-6,
                                           1e-7), 1.0) << i << " " << reference;
    }
  }
}

TEST(AdamW, Validation) {
  auto p = torch::zeros({2}).set_requires_grad(true);
  auto check = [&](const lo::AdamWOptions& o, const std::string& substr) {
    try {
      lo::AdamW opt({p}, o);
      FAIL() << substr;
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what()).find(substr), std::string::npos)
          << e.what();
    }
  };
  check(lo::AdamWOptions().amsgrad(true), "[adamw] amsgrad=true is not supported");
  check(lo::AdamWOptions(-1), "[adamw] lr must be >= 0, got -1");
  check(lo::AdamWOptions().betas({1.0, 0.9}), "beta1 must be in [0, 1), got 1");
  check(lo::AdamWOptions().betas({0.9, -1.0}), "beta2 must be in [0, 1), got -1");
  check(lo::AdamWOptions().eps(-1), "eps must be >= 0, got -1");
  check(lo::AdamWOptions().weight_decay(-2), "weight_decay must be >= 0, got -2");
}

TEST(Options, SerializeRoundTripAndEquality) {
  auto o = lo::AdafactorOptions(0.5).relative_step(false).beta1(0.8).eps({1e-20, 2e-3});
  auto p = torch::zeros({2}).set_requires_grad(true);
  lo::Adafactor opt({p}, o);
  set_grad(p, torch::ones({2}));
  opt.step();
  std::stringstream ss;
  torch::save(opt, ss);
  auto q = torch::zeros({2}).set_requires_grad(true);
  lo::Adafactor fresh({q}, lo::AdafactorOptions(0.1).relative_step(false));
  torch::load(fresh, ss);
  const auto& got =
      static_cast<const lo::AdafactorOptions&>(fresh.param_groups()[0].options());
  EXPECT_TRUE(got == o);
  EXPECT_FALSE(got == lo::AdafactorOptions());
  ASSERT_NE(fresh.state_of(q), nullptr);
  EXPECT_EQ(fresh.state_of(q)->step, 1);
  EXPECT_FALSE(fresh.state_of(q)->exp_avg_sq_row.defined());
}

// clear_grads drops every parameter's gradient (zero_grad() keeps zeroed
// gradients on LibTorch 1.x and drops them on 2.x); parameters without a
// gradient stay as they are, and the next backward makes fresh gradients.
TEST(ClearGrads, DropsEveryGradientOfEveryGroup) {
  auto a = torch::ones({3, 2}).requires_grad_(true);
  auto b = torch::ones({4}).requires_grad_(true);
  auto c = torch::ones({2}).requires_grad_(true);
  torch::optim::AdamW opt({torch::optim::OptimizerParamGroup({a, b}),
                           torch::optim::OptimizerParamGroup({c})});
  (a.sum() * 2 + b.sum() + c.sum()).backward();
  ASSERT_TRUE(a.grad().defined() && b.grad().defined() && c.grad().defined());
  EXPECT_GT(lowmem::storage_bytes({a.grad(), b.grad(), c.grad()}), 0);
  lo::clear_grads(opt);
  EXPECT_FALSE(a.grad().defined());
  EXPECT_FALSE(b.grad().defined());
  EXPECT_FALSE(c.grad().defined());
  lo::clear_grads(opt);  // nothing to drop: no error
  (a.sum() * 3).backward();
  ASSERT_TRUE(a.grad().defined());
  EXPECT_TRUE(torch::equal(a.grad(), torch::full({3, 2}, 3.0)));  // not 2 + 3
  EXPECT_FALSE(b.grad().defined());
}

}  // namespace
