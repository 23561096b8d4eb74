// ZeRO stages 1 and 2 (dist/zero.h, train/data_parallel.h) against the
// replicated data-parallel run (stage 0) with the same number of workers:
// the parameters after every step, the optimizer state each worker keeps,
// and sharded checkpoints resumed with another number of workers. Workers
// are threads of this process (run_thread_ranks), so memory is counted as
// the distinct-storage bytes of each worker's optimizer state
// (optim::state_bytes, the "optimizer_state" role of lowmem info/compare).
#include "lowmem/dist/zero.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <mutex>
#include <unordered_set>

#include "dist_testing.h"
#include "lowmem/adapters/lora.h"
#include "lowmem/core/memory.h"
#include "lowmem/dist/shard.h"
#include "lowmem/io/checkpoint.h"
#include "lowmem/models/layers.h"
#include "lowmem/nn/linear.h"
#include "lowmem/optim/adafactor.h"
#include "lowmem/optim/adamw.h"
#include "lowmem/optim/came.h"
#include "lowmem/optim/extras.h"
#include "lowmem/optim/galore.h"
#include "lowmem/optim/galore_adamw.h"
#include "lowmem/optim/galore_adapter.h"
#include "lowmem/optim/kfac.h"
#include "lowmem/optim/singd.h"
#include "lowmem/projection/projected_linear.h"
#include "lowmem/train/data_parallel.h"

namespace {

namespace fs = std::filesystem;
using namespace lowmem;
using dist::Communicator;
using dist::testing::RegressionSource;
using dist::testing::run_thread_ranks;

struct RunSetup {
  std::string optim = "adamw";
  int64_t stage = 0;
  int workers = 1;
  int64_t steps = 5;
  std::string ckpt;  // checkpoint_dir ("" : none)
  int64_t save_every = 0;
  std::string resume;  // checkpoint to resume from
  bool lora = false;
  bool overlap = true;  // ZeRO-2's reduction during backward
  int64_t accum = 1;    // micro-batches per update
  int64_t batch = 8;    // global batch rows
};

// What rank 0 saw (parameters after every step) and every rank's state.
struct Trace {
  std::vector<std::vector<at::Tensor>> steps;  // [step][param]
  std::vector<at::Tensor> final_other;         // the last rank's final params
  std::vector<int64_t> state_bytes;            // per rank, after the run
  std::vector<int64_t> param_bytes;            // per parameter
  dist::CommStats stats;                       // rank 0's, whole run
  int64_t first_step = 0;
  // Rank 0's, per step (ZeRO only): other ranks' gradient bytes still held
  // when backward ended, and the buckets reduced from hooks during it.
  std::vector<int64_t> foreign_bytes, launched;
  int64_t own_grad_bytes = 0;      // rank 0's parameters' gradient bytes
  std::vector<int> owners;         // ZeRO only: each parameter's owner
  int64_t shared_state_bytes = 0;  // state every worker keeps whole (bases)
  std::vector<at::Tensor> init;    // rank 0's parameters before training
};

// Widths chosen so parameters differ in size (the partition has to balance).
// kind: "torch" (torch::nn::Linear), "lowmem" (nn::Linear, for KFAC) or
// "lora" (frozen nn::Linear with trainable LoRA factors).
torch::nn::Sequential make_model(const std::string& kind) {
  static std::mutex seed_mutex;  // the default generator is global
  std::lock_guard<std::mutex> lock(seed_mutex);
  torch::manual_seed(0);
  const std::vector<std::pair<int64_t, int64_t>> dims = {
      {8, 40}, {40, 24}, {24, 12}, {12, 4}};
  torch::nn::Sequential seq;
  for (size_t i = 0; i < dims.size(); ++i) {
    if (kind == "lora") {
      auto base = std::make_shared<nn::Linear>(dims[i].first, dims[i].second);
      for (auto& p : base->parameters()) p.set_requires_grad(false);
      seq->push_back(std::make_shared<adapters::LoraLinear>(
          base, adapters::LoraOptions(2).lora_alpha(4).init_lora_weights(
                    "gaussian")));
    } else if (kind == "lowmem") {
      seq->push_back(
          std::make_shared<nn::Linear>(dims[i].first, dims[i].second));
    } else {
      seq->push_back(torch::nn::Linear(dims[i].first, dims[i].second));
    }
    if (i + 1 < dims.size()) seq->push_back(torch::nn::Tanh());
  }
  return seq;
}

std::shared_ptr<torch::optim::Optimizer> make_optimizer(
    const std::string& name, torch::nn::Module& model) {
  std::vector<at::Tensor> params;
  for (const auto& p : model.parameters()) {
    if (p.requires_grad()) params.push_back(p);
  }
  if (name == "torch_adamw") {
    return std::make_shared<torch::optim::AdamW>(
        params, torch::optim::AdamWOptions(1e-2).weight_decay(0.01));
  }
  if (name == "adamw") {
    return std::make_shared<optim::AdamW>(
        params, optim::AdamWOptions(1e-2).weight_decay(0.01));
  }
  if (name == "came") {
    return std::make_shared<optim::CAME>(params, optim::CameOptions(1e-2));
  }
  if (name == "adafactor") {
    return std::make_shared<optim::Adafactor>(params);
  }
  // Curvature refreshed every step, with a large enough step that the
  // factors shape the update (a wrong average would show).
  if (name == "kfac") {
    return std::make_shared<optim::KFAC>(
        model, optim::KfacOptions().lr(0.05).T(1).stat_decay(0.5));
  }
  if (name == "singd") {
    return std::make_shared<optim::SINGD>(
        model, optim::SingdOptions().lr(0.05).T(1).lr_cov(0.1));
  }
  if (name == "projected" || name == "projected_svd") {
    // The adapter form of GaLore: W0 + P A per layer, merged and rebased
    // every 2 steps (orthogonal sketches: the same on every worker).
    const auto layers = projection::inject_projected(
        model, projection::ProjectorOptions()
                   .rank(2)
                   .update_proj_gap(2)
                   .scale(0.5)
                   .basis(name == "projected" ? "orthogonal" : "svd"));
    std::unordered_set<const void*> adapters;
    for (const auto& l : layers) adapters.insert(l->a().unsafeGetTensorImpl());
    std::vector<at::Tensor> plain;
    for (const auto& p : model.parameters()) {
      if (p.requires_grad() && adapters.count(p.unsafeGetTensorImpl()) == 0) {
        plain.push_back(p);
      }
    }
    return std::make_shared<optim::ProjectedAdapterOptimizer>(
        layers, plain, [](std::vector<torch::optim::OptimizerParamGroup> g) {
          return std::make_unique<optim::AdamW>(std::move(g),
                                                optim::AdamWOptions(1e-2));
        });
  }
  // galore: after backward; galore_layerwise: inside backward, svd bases;
  // galore_accum: 2 micro-batches accumulated in hooks, orthogonal sketches.
  EXPECT_TRUE(name == "galore" || name == "galore_layerwise" ||
              name == "galore_accum")
      << name;
  std::vector<at::Tensor> projected, plain;
  for (const auto& p : params) (p.dim() == 2 ? projected : plain).push_back(p);
  auto po = projection::ProjectorOptions().rank(3).update_proj_gap(2);
  if (name == "galore_accum") po.basis("orthogonal");
  return std::make_shared<optim::GaLore>(
      projected, plain,
      [](std::vector<torch::optim::OptimizerParamGroup> g) {
        return std::make_unique<optim::GaLoreAdamW>(
            std::move(g), optim::GaLoreAdamWOptions(1e-2));
      },
      optim::GaLoreOptions()
          .projector(po)
          .layerwise(name == "galore_layerwise")
          .accumulation_steps(name == "galore_accum" ? 2 : 1));
}

at::Tensor mse(torch::nn::Sequential model, const data::Batch& b) {
  return torch::mse_loss(model->forward(b.input), b.target);
}

/// One worker of `setup`; rank 0 fills trace.steps.
void run_worker(const RunSetup& setup, std::shared_ptr<Communicator> comm,
                Trace& trace, std::mutex& mu) {
  const bool slots = setup.optim == "kfac" || setup.optim == "singd" ||
                     setup.optim.rfind("projected", 0) == 0;
  auto model = make_model(setup.lora ? "lora" : slots ? "lowmem" : "torch");
  auto opt = make_optimizer(setup.optim, *model);
  train::TrainerOptions o;
  o.max_steps = setup.steps;
  o.accum_steps = setup.accum;
  o.clip_norm = 0.5;  // active: the global norm must be the replicated one
  o.checkpoint_dir = setup.ckpt;
  o.save_every = setup.save_every;
  o.keep_checkpoints = 0;
  train::Trainer trainer(
      model.ptr(), [model](const data::Batch& b) { return mse(model, b); },
      {{"opt", opt, {}}}, o);
  // Small buckets: several collectives per step.
  auto zero = train::attach_data_parallel(trainer, comm, setup.stage, 0.002,
                                          setup.overlap);
  dist::ShardedSource source(std::make_shared<RegressionSource>(setup.batch, 7),
                             comm->rank(), comm->world_size());
  if (!setup.resume.empty()) trainer.load_checkpoint(setup.resume, source);
  std::vector<std::vector<at::Tensor>> steps;
  std::vector<int64_t> foreign, launched;
  trainer.set_step_probe([&](train::ProbePoint point) {
    if (point == train::ProbePoint::kAfterBackward && zero != nullptr) {
      foreign.push_back(zero->foreign_gradient_bytes_after_backward());
      launched.push_back(zero->buckets_launched_in_backward());
    }
    if (point != train::ProbePoint::kAfterUpdate) return;
    std::vector<at::Tensor> now;
    for (const auto& p : trainer.parameters())
      now.push_back(p.detach().clone());
    steps.push_back(now);
  });
  std::vector<at::Tensor> init;
  for (const auto& p : trainer.parameters()) init.push_back(p.detach().clone());
  comm->reset_stats();
  // Checkpoints (save_every and at the end) go through the save hook.
  trainer.fit(source, nullptr);
  std::lock_guard<std::mutex> lock(mu);
  trace.state_bytes[static_cast<size_t>(comm->rank())] =
      optim::state_bytes(*opt);
  if (comm->rank() == 0) {
    trace.steps = steps;
    trace.init = init;
    trace.foreign_bytes = foreign;
    trace.launched = launched;
    if (zero != nullptr) trace.own_grad_bytes = zero->bytes_owned_by(0);
    trace.stats = comm->stats();
    if (zero != nullptr) trace.owners = zero->owners();
    if (auto* pa = dynamic_cast<optim::ProjectedAdapterOptimizer*>(opt.get())) {
      for (size_t i = 0; i < pa->num_layers(); ++i) {
        trace.shared_state_bytes +=
            storage_bytes(pa->layer(i).projector().state_tensors());
      }
    }
    // GaLore's hook modes project every gradient on every worker.
    const auto* g = dynamic_cast<const optim::GaLore*>(opt.get());
    if (g != nullptr && g->hook_modes()) {
      for (size_t i = 0; i < g->num_projected(); ++i) {
        trace.shared_state_bytes +=
            storage_bytes(g->projector(i).state_tensors());
      }
    }
    for (const auto& p : trainer.parameters()) {
      trace.param_bytes.push_back(p.numel() * p.element_size());
    }
  }
  if (comm->rank() == comm->world_size() - 1) trace.final_other = steps.back();
}

Trace run(const RunSetup& setup) {
  Trace trace;
  trace.state_bytes.assign(static_cast<size_t>(setup.workers), -1);
  std::mutex mu;
  const auto errors =
      run_thread_ranks(setup.workers, [&](std::shared_ptr<Communicator> comm) {
        run_worker(setup, std::move(comm), trace, mu);
      });
  for (size_t r = 0; r < errors.size(); ++r) {
    EXPECT_EQ(errors[r], "") << "rank " << r;
  }
  return trace;
}

/// Largest max|a - b| / max|b| over the parameters of one step (Adam-like
/// updates of ~lr per element make element-wise ratios of near-zero
/// entries meaningless).
double max_rel_diff(const std::vector<at::Tensor>& a,
                    const std::vector<at::Tensor>& b) {
  double worst = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, (a[i] - b[i]).abs().max().item<double>() /
                                b[i].abs().max().item<double>());
  }
  return worst;
}

bool bitwise_equal(const std::vector<at::Tensor>& a,
                   const std::vector<at::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!torch::equal(a[i], b[i])) return false;
  }
  return true;
}

/// Stage `stage` with `n` workers against stage 0 with `n` workers, after
/// every step: bitwise when `bitwise`, else to float32 round-off.
void expect_matches_replicated(const std::string& optim, int64_t stage, int n,
                               bool bitwise, bool lora = false,
                               int64_t accum = 1) {
  RunSetup rep;
  rep.optim = optim;
  rep.workers = n;
  rep.lora = lora;
  rep.accum = accum;
  RunSetup zero = rep;
  zero.stage = stage;
  const Trace a = run(rep);
  const Trace b = run(zero);
  ASSERT_EQ(a.steps.size(), b.steps.size());
  ASSERT_EQ(a.steps.size(), 5u);
  for (size_t s = 0; s < a.steps.size(); ++s) {
    if (bitwise) {
      EXPECT_TRUE(bitwise_equal(b.steps[s], a.steps[s]))
          << optim << " stage " << stage << " n " << n << " step " << s
          << " max rel diff " << max_rel_diff(b.steps[s], a.steps[s]);
    } else {
      EXPECT_LT(max_rel_diff(b.steps[s], a.steps[s]), 1e-5)
          << optim << " stage " << stage << " n " << n << " step " << s;
    }
  }
  // Every worker ends with the same parameters (the owners' broadcasts).
  EXPECT_TRUE(bitwise_equal(b.final_other, b.steps.back()));
  // The state is split, not copied: the workers' shares add up to the
  // replicated state (plus what each keeps whole: the projected adapter's
  // bases), and with several workers each holds less.
  int64_t total = 0;
  for (const int64_t bytes : b.state_bytes) total += bytes;
  EXPECT_EQ(total, a.state_bytes[0] + (n - 1) * b.shared_state_bytes)
      << optim << " n " << n;
  for (const int64_t bytes : b.state_bytes) {
    if (n > 1) EXPECT_LT(bytes, a.state_bytes[0]) << optim << " n " << n;
  }
}

TEST(Zero, PartitionBalancesBytesWithWholeItems) {
  const std::vector<int64_t> bytes = {100, 10, 60, 40, 40, 5, 45};
  const auto owners = dist::partition_by_bytes(bytes, 3);
  std::vector<int64_t> load(3, 0);
  for (size_t i = 0; i < bytes.size(); ++i) load[owners[i]] += bytes[i];
  // Largest first to the least loaded: 100->0, 60->1, 45->2, 40->2 (45),
  // 40->1 (60), 10->2 (85), 5->2 (95).
  EXPECT_EQ(owners, (std::vector<int>{0, 2, 1, 2, 1, 2, 2}));
  EXPECT_EQ(load, (std::vector<int64_t>{100, 100, 100}));
  EXPECT_EQ(dist::partition_by_bytes(bytes, 1), std::vector<int>(7, 0));
  EXPECT_THROW(dist::partition_by_bytes(bytes, 0), c10::Error);
}

// ZeRO-1 all-reduces exactly as stage 0 does and each owner steps its
// parameter as the replicated optimizer would: bitwise equal.
TEST(Zero, Stage1EqualsReplicatedBitwiseFor1To4Workers) {
  for (const int n : {1, 2, 4}) {
    expect_matches_replicated("torch_adamw", 1, n, /*bitwise=*/true);
  }
  for (const char* optim : {"adamw", "came", "adafactor", "galore"}) {
    expect_matches_replicated(optim, 1, 2, /*bitwise=*/true);
  }
  expect_matches_replicated("adamw", 1, 2, /*bitwise=*/true, /*lora=*/true);
}

// ZeRO-2 reduces each gradient to its owner (Gloo's reduce): a sum of two
// is the same in any order (bitwise for 2 workers); with 4 the reduction
// order may differ from the all-reduce's (float32 round-off).
TEST(Zero, Stage2EqualsReplicatedFor1To4Workers) {
  expect_matches_replicated("adamw", 2, 1, /*bitwise=*/true);
  expect_matches_replicated("adamw", 2, 2, /*bitwise=*/true);
  expect_matches_replicated("adamw", 2, 4, /*bitwise=*/false);
  for (const char* optim : {"came", "adafactor", "galore"}) {
    expect_matches_replicated(optim, 2, 4, /*bitwise=*/false);
  }
  expect_matches_replicated("torch_adamw", 2, 4, /*bitwise=*/false,
                            /*lora=*/true);
}

// ZeRO-2 with overlap: every bucket is reduced from the gradient hooks
// during backward and a rank ends backward holding no gradient of another
// rank's parameters; after-backward reduction (overlap off, and stage 1)
// ends it holding all of them. The trajectories are the same (2 workers:
// bitwise).
TEST(Zero, Stage2FreesOtherRanksGradientsDuringBackward) {
  RunSetup s;
  s.stage = 2;
  s.workers = 2;
  s.optim = "adamw";
  const Trace on = run(s);
  s.overlap = false;
  const Trace off = run(s);
  s.stage = 1;
  const Trace stage1 = run(s);
  int64_t all = 0;
  for (const int64_t b : on.param_bytes) all += b;
  const int64_t foreign = all - on.own_grad_bytes;
  ASSERT_GT(foreign, 0);
  ASSERT_EQ(on.foreign_bytes.size(), 5u);
  for (size_t k = 0; k < on.foreign_bytes.size(); ++k) {
    EXPECT_EQ(on.foreign_bytes[k], 0) << "step " << k;
    EXPECT_GT(on.launched[k], 1) << "step " << k;  // several small buckets
  }
  for (const Trace* t : {&off, &stage1}) {
    ASSERT_EQ(t->foreign_bytes.size(), 5u);
    for (size_t k = 0; k < t->foreign_bytes.size(); ++k) {
      EXPECT_EQ(t->foreign_bytes[k], foreign) << "step " << k;
      EXPECT_EQ(t->launched[k], 0) << "step " << k;
    }
  }
  for (size_t k = 0; k < on.steps.size(); ++k) {
    EXPECT_TRUE(bitwise_equal(on.steps[k], off.steps[k])) << "step " << k;
    EXPECT_TRUE(bitwise_equal(on.steps[k], stage1.steps[k])) << "step " << k;
  }
  // With two micro-batches per update only the last backward reduces.
  s.accum = 2;
  s.stage = 2;
  s.overlap = true;
  const Trace accum_on = run(s);
  s.stage = 0;
  const Trace accum_rep = run(s);
  ASSERT_EQ(accum_on.foreign_bytes.size(), 5u);
  EXPECT_EQ(accum_on.foreign_bytes.back(), 0);
  EXPECT_GT(accum_on.launched.back(), 1);
  for (size_t k = 0; k < accum_on.steps.size(); ++k) {
    EXPECT_TRUE(bitwise_equal(accum_on.steps[k], accum_rep.steps[k]))
        << "accum step " << k;
  }
}

// A weight shared by three checkpointed blocks accumulates its gradient in
// three nested backwards (as LoTR's shared factors do): under ZeRO-2's
// reduction during backward its later parts go out as reduces of their own
// and the owner adds them; the run follows the replicated one to float32
// round-off (the sum is taken in another order).
namespace {

struct SharedBlock : models::CheckpointableBlock {
  SharedBlock(torch::nn::Linear shared, int64_t d)
      : shared(std::move(shared)),
        own(register_module("own", torch::nn::Linear(d, d))) {}
  at::Tensor forward(const at::Tensor& x) override {
    return x + torch::tanh(shared(x) + own(x));
  }
  torch::nn::Linear shared;
  torch::nn::Linear own;
};

struct SharedNet : torch::nn::Module {
  // The shared weight is registered last: first in the buckets' reverse
  // order, so its bucket goes out at its first accumulation (block 2's).
  SharedNet() {
    shared = torch::nn::Linear(8, 8);
    for (int k = 0; k < 3; ++k) {
      blocks.push_back(std::make_shared<SharedBlock>(shared, 8));
      register_module("block" + std::to_string(k), blocks.back());
    }
    head = register_module("head", torch::nn::Linear(8, 4));
    register_module("shared", shared);
  }
  at::Tensor forward(at::Tensor x) {
    for (auto& b : blocks) x = models::run_block(*b, x, /*checkpoint=*/true);
    return head(x);
  }
  torch::nn::Linear shared{nullptr}, head{nullptr};
  std::vector<std::shared_ptr<SharedBlock>> blocks;
};

}  // namespace

TEST(Zero, Stage2SendsLaterAccumulationsOfASharedWeight) {
  std::vector<std::vector<at::Tensor>> params[2];
  int64_t late = 0;
  for (const int64_t stage : {0, 2}) {
    std::mutex mu;
    const auto errors =
        run_thread_ranks(2, [&](std::shared_ptr<Communicator> comm) {
          std::shared_ptr<SharedNet> net;
          {
            static std::mutex seed_mutex;
            std::lock_guard<std::mutex> lock(seed_mutex);
            torch::manual_seed(0);
            net = std::make_shared<SharedNet>();
          }
          auto opt = make_optimizer("adamw", *net);
          train::TrainerOptions o;
          o.max_steps = 4;
          train::Trainer trainer(
              net,
              [net](const data::Batch& b) {
                return torch::mse_loss(net->forward(b.input), b.target);
              },
              {{"opt", opt, {}}}, o);
          auto zero = train::attach_data_parallel(trainer, comm, stage, 0.0005);
          dist::ShardedSource source(std::make_shared<RegressionSource>(8, 7),
                                     comm->rank(), comm->world_size());
          std::vector<std::vector<at::Tensor>> steps;
          trainer.set_step_probe([&](train::ProbePoint point) {
            if (point == train::ProbePoint::kAfterBackward && zero != nullptr &&
                comm->rank() == 0) {
              late += zero->late_reduces_in_backward();
            }
            if (point != train::ProbePoint::kAfterUpdate) return;
            std::vector<at::Tensor> now;
            for (const auto& p : trainer.parameters())
              now.push_back(p.detach().clone());
            steps.push_back(now);
          });
          trainer.fit(source, nullptr);
          std::lock_guard<std::mutex> lock(mu);
          if (comm->rank() == 0) params[stage / 2] = steps;
        });
    for (const auto& e : errors) EXPECT_EQ(e, "");
  }
  // Two later accumulations of the shared weight and of its bias per step.
  EXPECT_EQ(late, 4 * 2 * 2);
  ASSERT_EQ(params[0].size(), 4u);
  ASSERT_EQ(params[1].size(), 4u);
  for (size_t k = 0; k < 4; ++k) {
    EXPECT_LT(max_rel_diff(params[1][k], params[0][k]), 1e-5) << "step " << k;
  }
}

// AdamW keeps 2 x the parameter bytes for each parameter it updates: a
// worker's share is at most 1/N of the total plus one parameter's state.
TEST(Zero, StateBytesPerWorkerAreOneNthPlusAtMostOneParameter) {
  for (const int n : {2, 4}) {
    RunSetup s;
    s.optim = "torch_adamw";
    s.stage = 2;
    s.workers = n;
    const Trace t = run(s);
    int64_t total = 0;
    int64_t largest = 0;
    for (const int64_t b : t.param_bytes) {
      total += 2 * b;
      largest = std::max(largest, 2 * b);
    }
    int64_t sum = 0;
    for (const int64_t b : t.state_bytes) {
      EXPECT_LE(b, total / n + largest) << "n " << n;
      sum += b;
    }
    EXPECT_EQ(sum, total);
  }
}

// What each stage hands to the collectives per step (CommStats, bytes this
// rank contributes), with B the gradient bytes and P the parameter count:
// stage 0 all-reduces B; stage 1 all-reduces B, broadcasts B (every rank
// takes part in every owner's broadcast) and all-reduces P float64 norms;
// stage 2 reduces B (each gradient to its owner) instead of all-reducing
// it. Both also all-gather P int32 gradient masks.
TEST(Zero, BytesPerStepOfEachStage) {
  std::vector<dist::CommStats> stats;
  int64_t grad_bytes = 0;
  int64_t count = 0;
  for (const int64_t stage : {0, 1, 2}) {
    RunSetup s;
    s.stage = stage;
    s.workers = 2;
    s.steps = 2;
    const Trace t = run(s);
    stats.push_back(t.stats);
    grad_bytes = 0;
    for (const int64_t b : t.param_bytes) grad_bytes += b;
    count = static_cast<int64_t>(t.param_bytes.size());
  }
  const int64_t steps = 2;
  EXPECT_EQ(stats[0].allreduce_bytes, steps * grad_bytes);
  EXPECT_EQ(stats[0].broadcast_bytes + stats[0].reduce_bytes, 0);
  EXPECT_EQ(stats[1].allreduce_bytes, steps * (grad_bytes + 8 * count));
  EXPECT_EQ(stats[1].broadcast_bytes, steps * grad_bytes);
  EXPECT_EQ(stats[1].reduce_bytes, 0);
  EXPECT_EQ(stats[2].allreduce_bytes, steps * 8 * count);
  EXPECT_EQ(stats[2].reduce_bytes, steps * grad_bytes);
  EXPECT_EQ(stats[2].broadcast_bytes, steps * grad_bytes);
  EXPECT_EQ(stats[1].allgather_bytes, steps * 4 * count);
  EXPECT_EQ(stats[2].allgather_bytes, steps * 4 * count);
}

TEST(Zero, RefusesBadStages) {
  const auto errors = run_thread_ranks(2, [](std::shared_ptr<Communicator> c) {
    auto model = make_model("torch");
    auto opt = make_optimizer("adamw", *model);
    train::Trainer trainer(
        model.ptr(), [model](const data::Batch& b) { return mse(model, b); },
        {{"adamw", opt, {}}}, train::TrainerOptions());
    try {
      train::attach_data_parallel(trainer, c, 3);
      ADD_FAILURE() << "expected stage 3 to be refused";
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what()).find(
                    "[dist] ZeRO stage must be 0, 1 or 2, got 3"),
                std::string::npos)
          << e.what();
    }
  });
  for (const auto& e : errors) EXPECT_EQ(e, "");
}

/// Largest max|a - b| / max|b - init| over the parameters of one step: the
/// difference relative to how far training moved the parameter.
double max_rel_update_diff(const std::vector<at::Tensor>& a,
                           const std::vector<at::Tensor>& b,
                           const std::vector<at::Tensor>& init) {
  double worst = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, (a[i] - b[i]).abs().max().item<double>() /
                                (b[i] - init[i]).abs().max().item<double>());
  }
  return worst;
}

/// `optim` replicated on 2 and 4 workers (split batch) against one process:
/// every step within 1e-4 of the update, every worker ending alike.
void expect_data_parallel_equals_one_process(const std::string& optim,
                                             int64_t accum = 1) {
  RunSetup one;
  one.optim = optim;
  one.accum = accum;
  const Trace a = run(one);
  ASSERT_EQ(a.steps.size(), 5u);
  for (const int n : {2, 4}) {
    RunSetup dp = one;
    dp.workers = n;
    const Trace b = run(dp);
    ASSERT_EQ(b.steps.size(), 5u);
    for (size_t s = 0; s < a.steps.size(); ++s) {
      EXPECT_LT(max_rel_update_diff(b.steps[s], a.steps[s], a.init), 1e-4)
          << optim << " n " << n << " step " << s;
    }
    EXPECT_TRUE(bitwise_equal(b.final_other, b.steps.back())) << optim;
  }
}

// SINGD and KFAC average their curvature statistics over the workers
// (dist::make_statistics_sync): 2 and 4 workers on the split batch take the
// 1-process steps, the Kronecker factors included (a worker's own rows
// alone would move the updates by percents, not round-off).
TEST(Zero, CurvatureOptimizersDataParallelEqualOneProcess) {
  for (const std::string optim : {"singd", "kfac"}) {
    expect_data_parallel_equals_one_process(optim);
  }
}

// ZeRO-1/2 with SINGD and KFAC: the steps of the replicated run; each worker
// keeps the Kronecker factors of every layer (its curvature taps use them)
// and the momenta of its own layers only, a layer's weight and bias on one
// worker.
TEST(Zero, CurvatureOptimizersShardTheirMomenta) {
  for (const std::string optim : {"singd", "kfac"}) {
    RunSetup rep;
    rep.optim = optim;
    rep.workers = 2;
    const Trace a = run(rep);
    int64_t momenta = 0;  // fp32, one per parameter (momentum 0.9)
    for (const int64_t b : a.param_bytes) momenta += b;
    const int64_t factors = a.state_bytes[0] - momenta;
    ASSERT_GT(factors, 0) << optim;
    for (const int64_t stage : {1, 2}) {
      RunSetup zero = rep;
      zero.stage = stage;
      const Trace b = run(zero);
      ASSERT_EQ(b.steps.size(), a.steps.size());
      for (size_t s = 0; s < a.steps.size(); ++s) {
        EXPECT_LT(max_rel_update_diff(b.steps[s], a.steps[s], a.init), 1e-5)
            << optim << " stage " << stage << " step " << s;
      }
      EXPECT_TRUE(bitwise_equal(b.final_other, b.steps.back()));
      // Parameters alternate weight, bias per layer: each pair one owner.
      ASSERT_EQ(b.owners.size(), 8u);
      std::vector<int64_t> own(2, 0);
      for (size_t i = 0; i < b.owners.size(); i += 2) {
        EXPECT_EQ(b.owners[i], b.owners[i + 1]) << optim << " layer " << i / 2;
      }
      for (size_t i = 0; i < b.owners.size(); ++i) {
        own[static_cast<size_t>(b.owners[i])] += b.param_bytes[i];
      }
      for (size_t r = 0; r < 2; ++r) {
        EXPECT_EQ(b.state_bytes[r], factors + own[r])
            << optim << " stage " << stage << " rank " << r;
        EXPECT_GT(own[r], 0) << optim;
      }
    }
  }
}

// The projected adapter under ZeRO: the owner of a layer's A steps it; every
// worker counts that step (OptimizerExtras::stepped_elsewhere) and so merges
// the broadcast A into its W0 and draws the next sketch on the same steps
// (5 steps, rebased at 0, 2 and 4). The inner AdamW state is split.
TEST(Zero, ProjectedAdapterRebasesOnEveryWorker) {
  for (const int64_t stage : {1, 2}) {
    expect_matches_replicated("projected", stage, 2, /*bitwise=*/false);
  }
  expect_matches_replicated("projected", 2, 4, /*bitwise=*/false);
}

// Gradients the trainer's sync never sees are averaged where they are used:
// GaLore's hook modes consume them inside backward (the full gradient of an
// svd refresh, then the projected r x n gradients and the plain ones), and
// the projected adapter's svd refresh reads the frozen W0's gradient. So 2
// and 4 workers take the 1-process steps: layer-wise GaLore with svd bases
// refreshed at steps 0, 2, 4, GaLore over 2 accumulated micro-batches, and
// the projected adapter rebased from svd at steps 0, 2, 4.
TEST(Zero, GradientsOutsideTheTrainersSyncAreAveraged) {
  for (const std::string optim :
       {"galore_layerwise", "galore_accum", "projected_svd"}) {
    expect_data_parallel_equals_one_process(optim,
                                            optim == "galore_accum" ? 2 : 1);
  }
}

// ZeRO-1/2 where gradients bypass the trainer's sync: GaLore's hook modes
// (layer-wise with svd bases refreshed at steps 0, 2, 4; 2 micro-batches
// accumulated in hooks) average the projected gradients inside backward and
// step only their own parameters there; the projected adapter rebased from
// svd gives A's new gradient to its owner only, and the owner broadcasts A
// also on a layer's first refresh, when A had no gradient in the sync. The
// replicated run's steps; the inner state split, the bases on every worker.
TEST(Zero, HookModesAndSvdRefreshesShardTheirState) {
  for (const int64_t stage : {1, 2}) {
    expect_matches_replicated("galore_layerwise", stage, 2, /*bitwise=*/false);
    expect_matches_replicated("galore_accum", stage, 2, /*bitwise=*/false,
                              /*lora=*/false, /*accum=*/2);
    expect_matches_replicated("projected_svd", stage, 2, /*bitwise=*/false);
  }
  expect_matches_replicated("galore_layerwise", 2, 4, /*bitwise=*/false);
  expect_matches_replicated("projected_svd", 2, 4, /*bitwise=*/false);
}

/// A ZeRO-2 run of `optim` on 2 workers, 5 steps, saving sharded
/// checkpoints at steps 2 and 4 into a fresh directory.
RunSetup sharded_saving_run(const std::string& optim) {
  RunSetup full;
  full.optim = optim;
  full.stage = 2;
  full.workers = 2;
  full.steps = 5;
  full.ckpt = dist::testing::temp_dir() + "/ckpt";
  full.save_every = 2;
  return full;
}

/// `full` resumed from its checkpoint of `step` by `n` workers at `stage`.
Trace resume_from(const RunSetup& full, int n, int64_t stage,
                  const std::string& step = "00000002") {
  RunSetup resumed = full;
  resumed.workers = n;
  resumed.stage = stage;
  resumed.ckpt = "";
  resumed.save_every = 0;
  resumed.resume = full.ckpt + "/step-" + step;
  return run(resumed);
}

// A sharded SINGD checkpoint (every shard: the factors and its owner's
// momenta) resumes with 1 and 2 workers where the uninterrupted run ends.
TEST(Zero, ShardedSingdCheckpointResumes) {
  const RunSetup full = sharded_saving_run("singd");
  const Trace whole = run(full);
  ASSERT_EQ(whole.steps.size(), 5u);
  for (const auto& [n, stage] :
       std::vector<std::pair<int, int64_t>>{{2, 1}, {1, 0}}) {
    const Trace t = resume_from(full, n, stage);
    ASSERT_EQ(t.steps.size(), 3u) << n;
    EXPECT_LT(
        max_rel_update_diff(t.steps.back(), whole.steps.back(), whole.init),
        1e-5)
        << "n " << n << " stage " << stage;
  }
}

// Layer-wise GaLore's sharded checkpoint (every shard: every basis and its
// owner's inner state) resumes with 2 workers at stage 1, with 1 process,
// and with 10 workers for 8 parameters (two own nothing and still read a
// shard, for the bases), from step 3, between the svd refreshes at 2 and 4.
TEST(Zero, ShardedLayerwiseGaloreCheckpointResumes) {
  RunSetup full = sharded_saving_run("galore_layerwise");
  full.batch = 10;
  full.save_every = 3;
  const Trace whole = run(full);
  ASSERT_EQ(whole.steps.size(), 5u);
  for (const auto& [n, stage] :
       std::vector<std::pair<int, int64_t>>{{2, 1}, {1, 0}, {10, 1}}) {
    const Trace t = resume_from(full, n, stage, "00000003");
    ASSERT_EQ(t.steps.size(), 2u) << n;
    EXPECT_LT(
        max_rel_update_diff(t.steps.back(), whole.steps.back(), whole.init),
        1e-5)
        << "n " << n << " stage " << stage;
  }
}

// A ZeRO-2 run with 2 workers saves sharded checkpoints at steps 2 and 4;
// resuming step 2 with 1 (unsharded: every shard is read), 2 or 4 workers
// (ZeRO-1 or -2: each reads the shards holding its new parameters) ends
// where the uninterrupted run ends.
TEST(Zero, ShardedCheckpointsResumeWithAnyWorldSize) {
  const RunSetup full = sharded_saving_run("adamw");
  const Trace whole = run(full);
  ASSERT_EQ(whole.steps.size(), 5u);
  const std::string step2 = full.ckpt + "/step-00000002";
  ASSERT_TRUE(fs::exists(step2 + "/manifest.json"));
  EXPECT_TRUE(fs::exists(step2 + "/optimizer-0.shard-0.safetensors"));
  EXPECT_TRUE(fs::exists(step2 + "/optimizer-0.shard-1.safetensors"));
  EXPECT_FALSE(fs::exists(step2 + "/optimizer-0.safetensors"));
  const io::CheckpointLayout layout = io::read_checkpoint_layout(full.ckpt);
  EXPECT_EQ(layout.shard_world_size, 2);
  EXPECT_EQ(layout.shard_owners.size(), 8u);
  for (const auto& [n, stage] :
       std::vector<std::pair<int, int64_t>>{{2, 2}, {1, 0}, {4, 1}, {4, 2}}) {
    const Trace t = resume_from(full, n, stage);
    ASSERT_EQ(t.steps.size(), 3u) << n;
    if (n == 2) {
      EXPECT_TRUE(bitwise_equal(t.steps.back(), whole.steps.back()));
    } else {
      EXPECT_LT(max_rel_diff(t.steps.back(), whole.steps.back()), 1e-5)
          << "n " << n << " stage " << stage;
    }
    int64_t sum = 0;
    for (const int64_t b : t.state_bytes) sum += b;
    EXPECT_EQ(sum, whole.state_bytes[0] + whole.state_bytes[1]) << n;
  }
}

// An unsharded checkpoint (stage 0) resumes sharded: each worker keeps only
// its parameters' state.
TEST(Zero, UnshardedCheckpointResumesSharded) {
  const std::string dir = dist::testing::temp_dir();
  RunSetup full;
  full.optim = "galore";
  full.workers = 2;
  full.steps = 4;
  full.ckpt = dir + "/ckpt";
  full.save_every = 2;
  const Trace whole = run(full);
  RunSetup resumed = full;
  resumed.workers = 4;
  resumed.stage = 2;
  resumed.ckpt = "";
  resumed.save_every = 0;
  resumed.resume = full.ckpt + "/step-00000002";
  const Trace t = run(resumed);
  ASSERT_EQ(t.steps.size(), 2u);
  EXPECT_LT(max_rel_diff(t.steps.back(), whole.steps.back()), 1e-5);
  for (const int64_t b : t.state_bytes) EXPECT_LT(b, whole.state_bytes[0]);
}

// A worker that did not write its shard leaves no step directory behind:
// the previous checkpoint stays the latest.
TEST(Zero, MissingShardCommitsNothing) {
  const std::string root = dist::testing::temp_dir() + "/ckpt";
  auto model = make_model("torch");
  auto opt = make_optimizer("adamw", *model);
  io::CheckpointState s;
  for (const auto& p : model->named_parameters()) {
    s.tensors.emplace_back(p.key(), p.value());
  }
  s.optimizers.emplace_back("opt", opt.get());
  io::save_checkpoint(root, 1, s);
  const std::string staging = io::prepare_sharded_staging(root, 2);
  io::save_optimizer_shard(staging, 0, 0, *opt);
  s.shard_world_size = 2;
  s.shard_owners.assign(8, 0);
  try {
    io::save_checkpoint(root, 2, s);
    ADD_FAILURE() << "expected a missing shard";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find(
                  "worker 1 did not write its shard of optimizer 'opt'"),
              std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(fs::exists(root + "/step-00000002"));
  EXPECT_EQ(io::resolve_checkpoint(root), root + "/step-00000001");
}

}  // namespace
