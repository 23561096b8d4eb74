// GaLore's layer-wise mode, gradient accumulation (projected, never full),
// resume, conversion between the two forms, and option validation.
#include <torch/serialize.h>

#include "galore_test_util.h"
#include "lowmem/core/memory.h"
#include "lowmem/optim/adamw.h"
#include "lowmem/optim/extras.h"

using namespace galore_test;
namespace lp = lowmem::projection;

namespace {

void train(Mlp& net, torch::optim::Optimizer& opt,
           const std::vector<Batch>& data, int from, int to,
           int micro_batches = 1) {
  for (int t = from; t < to; ++t) {
    lowmem::optim::before_forward(opt);
    opt.zero_grad();
    const int64_t n = data[t].x.size(0) / micro_batches;
    for (int k = 0; k < micro_batches; ++k) {
      Batch b{data[t].x.narrow(0, k * n, n), data[t].y.narrow(0, k * n, n)};
      (loss_of(net, b) / micro_batches).backward();
    }
    opt.step();
  }
}

double diff(Mlp& a, Mlp& b) { return max_weight_diff(a, b); }

std::unique_ptr<lo::GaLore> make_galore(Mlp& net, lo::GaLoreOptions o,
                                        lo::InnerFactory inner = adamw()) {
  auto [proj, plain] = lo::GaLore::route(net);
  return std::make_unique<lo::GaLore>(proj, plain, inner, std::move(o));
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what();
  }
  return "<no error>";
}

}  // namespace

TEST(GaLoreLayerwise, SameUpdatesAtMostOneFullGradientAlive) {
  const std::vector<int64_t> sizes = {128, 128, 128, 128, 128, 128, 16};
  auto data = make_data(4, 8, 128, 16, torch::kFloat);
  auto po = lp::ProjectorOptions().rank(16).update_proj_gap(2);
  auto a = make_mlp(sizes, torch::kFloat), b = make_mlp(sizes, torch::kFloat);
  auto ga = make_galore(*a, lo::GaLoreOptions().projector(po));
  auto gb = make_galore(*b, lo::GaLoreOptions().projector(po).layerwise(true));
  lowmem::MemoryTracker tracker;
  int64_t peak_a = 0, peak_b = 0;
  for (int t = 0; t < 4; ++t) {
    {
      ga->zero_grad();
      auto scope = tracker.scope();
      loss_of(*a, data[t]).backward();
      ga->step();
      peak_a = std::max(peak_a, scope.peak_delta());
    }
    {
      gb->zero_grad();
      auto scope = tracker.scope();
      loss_of(*b, data[t]).backward();
      gb->step();  // no-op: updated inside backward
      peak_b = std::max(peak_b, scope.peak_delta());
    }
    for (auto& p : b->parameters()) EXPECT_FALSE(p.grad().defined());
  }
  EXPECT_LT(diff(*a, *b), 1e-6);
  EXPECT_EQ(gb->max_live_full_grads(), 1);
  const int64_t grad_bytes = 128 * 128 * 4;
  // Non-layerwise holds all 5 full 128x128 gradients at its peak.
  EXPECT_GE(peak_a, 5 * grad_bytes);
  EXPECT_LT(peak_b + 3 * grad_bytes, peak_a)
      << "layerwise peak " << peak_b << " vs " << peak_a;
}

TEST(GaLoreAccumulation, ProjectedMicroBatchesEqualOneBatch) {
  const std::vector<int64_t> sizes = {6, 10, 4};
  auto data = make_data(6, 8, 6, 4, torch::kDouble);
  auto po = lp::ProjectorOptions().rank(3).update_proj_gap(2).basis("orthogonal");
  for (bool layerwise : {false, true}) {
    auto one = make_mlp(sizes, torch::kDouble);
    auto acc = make_mlp(sizes, torch::kDouble);
    auto g1 = make_galore(*one, lo::GaLoreOptions().projector(po));
    auto g2 = make_galore(*acc, lo::GaLoreOptions().projector(po)
                                    .accumulation_steps(4).layerwise(layerwise));
    train(*one, *g1, data, 0, 6);
    train(*acc, *g2, data, 0, 6, /*micro_batches=*/4);
    EXPECT_LT(diff(*one, *acc), 1e-12) << "layerwise " << layerwise;
    EXPECT_EQ(g2->step_count(0), 6);
    EXPECT_EQ(g2->max_live_full_grads(), 1);
  }
  // Full gradients never survive a micro-batch; projected ones accumulate.
  auto net = make_mlp(sizes, torch::kDouble);
  auto g = make_galore(*net, lo::GaLoreOptions().projector(po).accumulation_steps(2));
  loss_of(*net, data[0]).backward();
  for (auto& ref : lowmem::nn::find_slots(*net))
    EXPECT_FALSE(ref.layer()->base_weight().grad().defined());
  bool has_acc = false;
  for (auto& t : g->state_tensors())
    has_acc |= t.dim() == 2 && t.size(0) == 10 && t.size(1) == 3;
  EXPECT_TRUE(has_acc);
}

TEST(GaLoreAccumulation, AdapterFormAccumulatesLowRankGradients) {
  const std::vector<int64_t> sizes = {6, 10, 4};
  auto data = make_data(6, 8, 6, 4, torch::kDouble);
  auto po = lp::ProjectorOptions().rank(3).update_proj_gap(2).basis("svd");
  auto one = make_mlp(sizes, torch::kDouble), acc = make_mlp(sizes, torch::kDouble);
  auto l1 = lpj::inject_projected(*one, po),
       l2 = lpj::inject_projected(*acc, po);
  lo::ProjectedAdapterOptimizer o1(l1, plain_params(*one, l1), adamw());
  lo::ProjectedAdapterOptimizer o2(l2, plain_params(*acc, l2), adamw());
  train(*one, o1, data, 0, 6);
  train(*acc, o2, data, 0, 6, /*micro_batches=*/4);
  EXPECT_LT(diff(*one, *acc), 1e-10);
}

TEST(GaLoreResume, SaveLoadThenStepBothIdentical) {
  const std::vector<int64_t> sizes = {6, 10, 4};
  auto data = make_data(8, 8, 6, 4, torch::kDouble);
  for (std::string basis : {"svd", "orthogonal"}) {
    for (bool cache : {true, false}) {
      auto po = lp::ProjectorOptions().rank(3).update_proj_gap(3).basis(basis)
                    .cache_sketch(cache).seed(4);
      auto a = make_mlp(sizes, torch::kDouble);
      auto ga = make_galore(*a, lo::GaLoreOptions().projector(po), came());
      train(*a, *ga, data, 0, 4);
      torch::serialize::OutputArchive out;
      ga->save(out);
      std::stringstream ss;
      out.save_to(ss);
      auto b = make_mlp(sizes, torch::kDouble, /*seed=*/99);
      {
        torch::NoGradGuard ng;
        auto pa = a->parameters(), pb = b->parameters();
        for (size_t i = 0; i < pa.size(); ++i) pb[i].copy_(pa[i]);
      }
      auto gb = make_galore(*b, lo::GaLoreOptions().projector(po), came());
      torch::serialize::InputArchive in;
      in.load_from(ss);
      gb->load(in);
      train(*a, *ga, data, 4, 8);
      train(*b, *gb, data, 4, 8);
      EXPECT_EQ(diff(*a, *b), 0.0) << basis << " cache " << cache;
      EXPECT_EQ(gb->step_count(1), 8);
    }
  }
}

TEST(GaLoreResume, AdapterFormSaveLoad) {
  const std::vector<int64_t> sizes = {6, 10, 4};
  auto data = make_data(8, 8, 6, 4, torch::kDouble);
  auto po = lp::ProjectorOptions().rank(3).update_proj_gap(3);
  auto a = make_mlp(sizes, torch::kDouble), b = make_mlp(sizes, torch::kDouble);
  auto la_ = lpj::inject_projected(*a, po), lb = lpj::inject_projected(*b, po);
  lo::ProjectedAdapterOptimizer oa(la_, plain_params(*a, la_), adamw());
  lo::ProjectedAdapterOptimizer ob(lb, plain_params(*b, lb), adamw());
  train(*a, oa, data, 0, 4);
  torch::serialize::OutputArchive out;
  oa.save(out);
  std::stringstream ss;
  out.save_to(ss);
  {
    torch::NoGradGuard ng;
    auto pa = a->parameters(), pb = b->parameters();
    for (size_t i = 0; i < pa.size(); ++i) pb[i].copy_(pa[i]);
  }
  torch::serialize::InputArchive in;
  in.load_from(ss);
  ob.load(in);
  train(*a, oa, data, 4, 8);
  train(*b, ob, data, 4, 8);
  EXPECT_EQ(diff(*a, *b), 0.0);
}

// Switching forms mid-run keeps the trajectory. The refresh steps fall in
// both phases (T = 3: steps 6 in the adapter phase, 9 in the second GaLore
// phase). Regression: the SVD refresh of the adapter form used to sum the
// full gradient GaLore had left on W into the captured one (1.8e-2 off).
TEST(GaLoreConversion, SwitchFormsMidRunKeepsTheTrajectory) {
  const std::vector<int64_t> sizes = {6, 10, 4};
  auto data = make_data(10, 8, 6, 4, torch::kDouble);
  for (std::string basis : {"svd", "rsvd", "orthogonal"}) {
    auto po = lp::ProjectorOptions().rank(3).update_proj_gap(3).scale(0.5)
                  .basis(basis);
    auto ref = make_mlp(sizes, torch::kDouble);
    auto gref = make_galore(*ref, lo::GaLoreOptions().projector(po));
    train(*ref, *gref, data, 0, 10);

    // GaLore for 4 steps, adapter form for 3, GaLore again for 3.
    auto net = make_mlp(sizes, torch::kDouble);
    auto g1 = make_galore(*net, lo::GaLoreOptions().projector(po));
    train(*net, *g1, data, 0, 4);
    auto layers = lpj::inject_projected(*net, po);
    lo::ProjectedAdapterOptimizer ad(layers, plain_params(*net, layers), adamw());
    lo::transfer_state(*g1, ad);
    for (auto& l : layers) EXPECT_FALSE(l->base_weight().grad().defined());
    train(*net, ad, data, 4, 7);
    auto refs = lowmem::nn::find_slots(*net);
    for (size_t i = 0; i < refs.size(); ++i) {
      refs[i].replace(layers[i]->base());
      layers[i]->base_weight().set_requires_grad(true);
    }
    auto g2 = make_galore(*net, lo::GaLoreOptions().projector(po));
    lo::transfer_state(ad, *g2);
    train(*net, *g2, data, 7, 10);
    EXPECT_LT(diff(*ref, *net), 1e-10) << basis;
    EXPECT_EQ(g2->step_count(0), 10);
    EXPECT_EQ(g2->projector(0).refresh_count(), 4) << basis;  // 0, 3, 6, 9
  }
}

TEST(GaLoreOptions, ValidationMessages) {
  auto net = make_mlp({6, 10, 4}, torch::kDouble);
  auto [proj, plain] = lo::GaLore::route(*net);
  auto build = [&](lo::GaLoreOptions o, lo::InnerFactory f = adamw()) {
    return [=] { lo::GaLore g(proj, plain, f, o); };
  };
  EXPECT_NE(error_of(build(lo::GaLoreOptions().state_on_refresh("rotate")))
                .find("[galore] state_on_refresh must be keep, reset or "
                      "reproject, got 'rotate'"),
            std::string::npos);
  EXPECT_NE(error_of(build(lo::GaLoreOptions().accumulation_steps(0)))
                .find("accumulation_steps must be >= 1, got 0"),
            std::string::npos);
  EXPECT_NE(error_of(build(lo::GaLoreOptions().weight_decay(-1)))
                .find("weight_decay must be >= 0, got -1"),
            std::string::npos);
  EXPECT_NE(error_of(build(lo::GaLoreOptions().projector(
                         lp::ProjectorOptions().rank(0))))
                .find("[projection] rank must be >= 1, got 0"),
            std::string::npos);
  EXPECT_NE(error_of(build({}, adamw(1e-3, 0.01)))
                .find("inner optimizer's weight_decay on projected params "
                      "must be 0 (got 0.01)"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              lo::GaLore g({plain[0]}, {}, adamw(), {});
            }).find("[galore] projected param 0 must have 2 or more dims"),
            std::string::npos);
  auto layers = lpj::inject_projected(*net, {});
  EXPECT_NE(error_of([&] {
              lo::ProjectedAdapterOptimizer o(
                  layers, {}, adamw(), lo::GaLoreOptions().weight_decay(0.1));
            }).find("[projected_adapter] weight_decay on the full weight is "
                    "not available in the adapter form"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              lo::GaLoreAdamW o(std::vector<at::Tensor>{plain[0]},
                                lo::GaLoreAdamWOptions().beta2(1.0));
            }).find("[galore_adamw] beta2 must be in [0, 1), got 1"),
            std::string::npos);
  // Reproject refuses inner states it does not understand.
  auto rms = [](Groups g) {
    return std::make_unique<torch::optim::RMSprop>(
        std::move(g), torch::optim::RMSpropOptions(1e-2));
  };
  auto net2 = make_mlp({6, 10, 4}, torch::kDouble);
  auto g = make_galore(*net2, lo::GaLoreOptions().state_on_refresh("reproject")
                                  .projector(lp::ProjectorOptions().rank(2)
                                                 .update_proj_gap(1)),
                       rms);
  auto d = make_data(2, 4, 6, 4, torch::kDouble);
  train(*net2, *g, d, 0, 1);
  EXPECT_NE(error_of([&] { train(*net2, *g, d, 1, 2); })
                .find("'reproject' does not know this inner optimizer's state"),
            std::string::npos);
}

TEST(GaLoreOptions, ForEachFieldAndStateAccounting) {
  lo::GaLoreOptions o;
  std::vector<std::string> names;
  o.for_each_field([&](const char* n, auto&) { names.emplace_back(n); });
  EXPECT_EQ(names, (std::vector<std::string>{"weight_decay", "state_on_refresh",
                                             "layerwise", "accumulation_steps"}));
  // GaLore state for a 64x32 weight at rank 8 ("std": right, Q 32x8):
  // AdamW moments 2 * 64x8 + basis 32x8, against 2 * 64x32 for AdamW.
  torch::manual_seed(0);
  auto w = torch::randn({64, 32}).set_requires_grad(true);
  lo::GaLore g({w}, {}, adamw(),
               lo::GaLoreOptions().projector(lp::ProjectorOptions().rank(8)));
  w.mutable_grad() = torch::randn({64, 32});
  g.step();
  EXPECT_EQ(lowmem::optim::state_bytes(g), (2 * 64 * 8 + 32 * 8) * 4);
}

// Regression: the inner optimizer's weight decay is read through one
// interface for every optimizer (optim/state_roles.h). lowmem's own AdamW
// with decay used to be accepted, its decay acting on the zero proxy.
TEST(GaLoreModes, InnerWeightDecayIsRefusedForEveryOptimizer) {
  auto w = torch::randn({6, 4}).set_requires_grad(true);
  auto with = [](auto make_options) {
    return
        [make_options](Groups g) -> std::unique_ptr<torch::optim::Optimizer> {
          return make_options(std::move(g));
        };
  };
  const std::vector<std::pair<std::string, lo::InnerFactory>> inners = {
      {"lowmem AdamW", with([](Groups g) {
         return std::make_unique<lo::AdamW>(
             std::move(g), lo::AdamWOptions(1e-2).weight_decay(0.01));
       })},
      {"GaLoreAdamW", with([](Groups g) {
         return std::make_unique<lo::GaLoreAdamW>(
             std::move(g), lo::GaLoreAdamWOptions(1e-2).weight_decay(0.01));
       })},
      {"CAME", with([](Groups g) {
         return std::make_unique<lo::CAME>(
             std::move(g), lo::CameOptions(1e-2).weight_decay(0.01));
       })},
      {"torch SGD", with([](Groups g) {
         return std::make_unique<torch::optim::SGD>(
             std::move(g), torch::optim::SGDOptions(1e-2).weight_decay(0.01));
       })},
      {"torch AdamW", adamw(1e-2, 0.01)},
  };
  for (const auto& [name, inner] : inners) {
    SCOPED_TRACE(name);
    EXPECT_NE(error_of([&] {
                lo::GaLore g({w}, {}, inner, {});
              }).find("weight_decay on projected params must be 0 (got 0.01)"),
              std::string::npos);
  }
  // Without decay every one of them is accepted.
  EXPECT_NO_THROW(lo::GaLore({w}, {}, with([](Groups g) {
                               return std::make_unique<lo::AdamW>(
                                   std::move(g),
                                   lo::AdamWOptions(1e-2).weight_decay(0));
                             }),
                             {}));
}

// Any parameter of 2 or more dims: a conv kernel [out, in, k, k] is projected
// as the matrix [out, in k k], and its update has the parameter's shape.
TEST(GaLoreModes, ProjectsTensorsOfMoreThanTwoDims) {
  torch::manual_seed(0);
  auto w = torch::randn({8, 3, 2, 2}).set_requires_grad(true);
  lo::GaLore g({w}, {}, sgd(0.1, 0.0),
               lo::GaLoreOptions().projector(
                   lp::ProjectorOptions().rank(2).update_proj_gap(10)));
  const auto before = w.detach().clone();
  const auto grad = torch::randn({8, 3, 2, 2});
  w.mutable_grad() = grad.clone();
  g.step();
  EXPECT_EQ(g.projector(0).low_rank_shape(), (std::vector<int64_t>{2, 12}));
  // SGD without momentum: W -= lr * P P^T G, in the matrix view.
  const auto m = grad.reshape({8, 12});
  const auto expect =
      before - 0.1 * g.projector(0)
                         .project_back(g.projector(0).project(m))
                         .reshape({8, 3, 2, 2});
  EXPECT_TRUE(at::allclose(w.detach(), expect, 1e-5, 1e-6));
}
