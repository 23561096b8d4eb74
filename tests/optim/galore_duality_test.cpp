// THE duality (arXiv 2502.13811): in float64, with weight decay 0 and no
// clipping of the full gradient, GaLore (gradient-transform form) and the
// projected adapter W0 + P.A (adapter form, merge-and-rebase at refreshes,
// state kept) give the same weights at every step, for SGD, AdamW and CAME as
// the inner optimizer, fixed projection and across refreshes. Where the
// equivalence must break (decoupled decay of the full weight, Adafactor's
// parameter scaling), the two forms are shown to differ.
#include "galore_test_util.h"

using namespace galore_test;
namespace lp = lowmem::projection;

namespace {

struct Run {
  double max_diff = 0;   // over all steps
  double final_diff = 0;
  double moved = 0;      // how far the weights moved (the test is not vacuous)
};

Run run_both(const lo::InnerFactory& inner, const lp::ProjectorOptions& po,
             const std::string& policy = "keep", int steps = 12,
             double galore_wd = 0.0,
             const lo::InnerFactory& adapter_inner = nullptr,
             int64_t micro = 1) {
  const std::vector<int64_t> sizes = {6, 10, 4};
  auto g_net = make_mlp(sizes, torch::kDouble);
  auto a_net = make_mlp(sizes, torch::kDouble);
  auto init = make_mlp(sizes, torch::kDouble);
  auto data = make_data(steps, 8, 6, 4, torch::kDouble);

  auto [proj, plain] = lo::GaLore::route(*g_net);
  lo::GaLore galore(proj, plain, inner,
                    lo::GaLoreOptions().projector(po).state_on_refresh(policy)
                        .weight_decay(galore_wd));
  auto layers = lpj::inject_projected(*a_net, po);
  lo::ProjectedAdapterOptimizer adapter(
      layers, plain_params(*a_net, layers),
      adapter_inner ? adapter_inner : inner,
      lo::GaLoreOptions().state_on_refresh(policy));
  Run r;
  // `micro` micro-batches per step: the rows of data[t] in equal parts.
  auto part = [&](int t, int64_t m) {
    const int64_t rows = data[t].x.size(0) / micro;
    return Batch{data[t].x.narrow(0, m * rows, rows),
                 data[t].y.narrow(0, m * rows, rows)};
  };
  for (int t = 0; t < steps; ++t) {
    galore.zero_grad();
    for (int64_t m = 0; m < micro; ++m) {
      (loss_of(*g_net, part(t, m)) / static_cast<double>(micro)).backward();
    }
    galore.step();

    adapter.zero_grad();
    for (int64_t m = 0; m < micro; ++m) {
      adapter.before_forward();
      (loss_of(*a_net, part(t, m)) / static_cast<double>(micro)).backward();
    }
    adapter.step();
    r.final_diff = max_weight_diff(*g_net, *a_net);
    r.max_diff = std::max(r.max_diff, r.final_diff);
  }
  r.moved = max_weight_diff(*g_net, *init);
  return r;
}

struct DualityCase {
  std::string name;
  lo::InnerFactory inner;
  // lowmem's Adafactor computes in fp32 even for fp64 params, so inputs that
  // differ in the last fp64 bits can round to neighbouring fp32 values.
  double tol = 1e-10;
};

std::vector<DualityCase> inner_optimizers() {
  return {{"sgd", sgd()}, {"adamw", adamw()}, {"came", came()},
          {"galore_adamw", [](Groups g) {
             return std::make_unique<lo::GaLoreAdamW>(
                 std::move(g), lo::GaLoreAdamWOptions(1e-2));
           }},
          {"adafactor_no_param_scale", adafactor(false), 1e-7}};
}

}  // namespace

TEST(GaLoreDuality, FixedProjectionSameWeightsEveryStep) {
  for (auto& c : inner_optimizers()) {
    for (std::string type : {"std", "left", "right", "full"}) {
      auto po = lp::ProjectorOptions().rank(3).update_proj_gap(1000)
                    .proj_type(type).basis("orthogonal").seed(5).scale(0.5);
      auto r = run_both(c.inner, po);
      EXPECT_LT(r.max_diff, c.tol) << c.name << " " << type;
      EXPECT_GT(r.moved, 1e-3) << c.name << " " << type;
    }
  }
}

TEST(GaLoreDuality, AcrossRefreshesWithMergeAndRebase) {
  for (auto& c : inner_optimizers()) {
    for (std::string basis : {"svd", "rsvd", "gaussian", "orthogonal"}) {
      for (std::string type : {"std", "full"}) {
        auto po = lp::ProjectorOptions().rank(3).update_proj_gap(4)
                      .proj_type(type).basis(basis).seed(9).scale(0.25);
        auto r = run_both(c.inner, po);
        EXPECT_LT(r.max_diff, c.tol) << c.name << " " << basis << " " << type;
        EXPECT_GT(r.moved, 1e-3) << c.name << " " << basis << " " << type;
      }
    }
  }
}

// Micro-batches (the trainer's accum_steps calls before_forward before each
// forward): an svd/rsvd refresh of the adapter takes the gradient of the
// whole batch, as GaLore does after accumulating it.
TEST(GaLoreDuality, SvdRefreshSumsEveryMicroBatch) {
  for (std::string basis : {"svd", "rsvd"}) {
    auto po = lp::ProjectorOptions()
                  .rank(3)
                  .update_proj_gap(4)
                  .basis(basis)
                  .seed(9)
                  .scale(0.25);
    auto r = run_both(adamw(), po, "keep", 12, 0.0, nullptr, /*micro=*/2);
    EXPECT_LT(r.max_diff, 1e-10) << basis;
    EXPECT_GT(r.moved, 1e-3) << basis;
  }
}

TEST(GaLoreDuality, StatePoliciesAgreeAcrossForms) {
  for (std::string policy : {"reset", "reproject"}) {
    for (auto& c : std::vector<DualityCase>{
             {"sgd", sgd()}, {"adamw", adamw()}, {"came", came()}}) {
      auto po = lp::ProjectorOptions().rank(3).update_proj_gap(3)
                    .basis("orthogonal").seed(2);
      auto r = run_both(c.inner, po, policy);
      EXPECT_LT(r.max_diff, 1e-10) << policy << " " << c.name;
    }
  }
  // The policies matter: keep, reset and reproject end at different weights.
  auto po = lp::ProjectorOptions().rank(3).update_proj_gap(3).basis("orthogonal");
  const std::vector<int64_t> sizes = {6, 10, 4};
  auto data = make_data(9, 8, 6, 4, torch::kDouble);
  std::vector<at::Tensor> finals;
  for (std::string policy : {"keep", "reset", "reproject"}) {
    auto net = make_mlp(sizes, torch::kDouble);
    auto [proj, plain] = lo::GaLore::route(*net);
    lo::GaLore g(proj, plain, adamw(),
                 lo::GaLoreOptions().projector(po).state_on_refresh(policy));
    for (auto& b : data) {
      g.zero_grad();
      loss_of(*net, b).backward();
      g.step();
    }
    finals.push_back(net->linear("fc0").effective_weight().clone());
  }
  EXPECT_GT((finals[0] - finals[1]).abs().max().item<double>(), 1e-6);
  EXPECT_GT((finals[0] - finals[2]).abs().max().item<double>(), 1e-6);
  EXPECT_GT((finals[1] - finals[2]).abs().max().item<double>(), 1e-6);
}

TEST(GaLoreDuality, BreaksWithDecoupledWeightDecayOnTheFullWeight) {
  // GaLore decays W; the adapter can only decay A (W0 is frozen).
  auto po = lp::ProjectorOptions().rank(3).update_proj_gap(4).basis("orthogonal");
  auto r = run_both(adamw(), po, "keep", 8, /*galore_wd=*/0.1,
                    /*adapter_inner=*/adamw(1e-2, 0.1));
  EXPECT_GT(r.final_diff, 1e-4);
  // And with decay 0 on both sides they agree (same setup otherwise).
  EXPECT_LT(run_both(adamw(), po, "keep", 8).max_diff, 1e-10);
}

TEST(GaLoreDuality, BreaksWithAdafactorParameterScaling) {
  // alpha_t = max(eps2, RMS(param)) * lr reads the param: GaLore's proxy is 0
  // (RMS 0 -> eps2), the adapter's A is not (once RMS(A) > eps2 = 1e-3).
  auto po = lp::ProjectorOptions().rank(3).update_proj_gap(4).basis("orthogonal");
  auto r = run_both(adafactor(/*scale_parameter=*/true, 1.0), po);
  EXPECT_GT(r.final_diff, 1e-4);
  EXPECT_GT(r.final_diff, 1e-2) << "a gross difference, not fp32 noise";
  // Without parameter scaling the forms agree (see the tests above).
}
