// Train-step time and preconditioner memory of SINGD per structure, KFAC and
// AdamW, on an MLP (256-1024-1024-10, batch 128) and on lowmem::models::GPT
// (4 layers, d = 256, 128 tokens x batch 8; the tied embedding, position
// embedding and LayerNorms go to AdamW next to SINGD/KFAC, as the trainer's
// routing does). One iteration = forward + backward + step; T = 10 (official
// default), 20 iterations, so each timing includes 2 preconditioner refreshes.
//
// BM_Precondition times the per-step product S (S^T X) of one factor alone.
//
//   build/bench/singd_step --benchmark_repetitions=3
//     (add --benchmark_report_aggregates_only=true for the aggregates)
#include <ATen/ATen.h>
#include <benchmark/benchmark.h>
#include <torch/optim/adamw.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "lowmem/models/gpt.h"
#include "lowmem/models/mlp.h"
#include "lowmem/nn/curvature_tap.h"
#include "lowmem/optim/extras.h"
#include "lowmem/optim/kfac.h"
#include "lowmem/optim/singd.h"
#include "lowmem/optim/structures/structured_matrix.h"

namespace {

namespace lo = lowmem::optim;
namespace lm = lowmem::models;

// Every official structure family (block and hierarchical at the official
// sizes).
const std::vector<std::string> kStructures = {
    "dense",           "diagonal",          "block30diagonal",
    "hierarchical15_15", "triltoeplitz",    "triutoeplitz",
    "trilbottomrightdiag", "triltopleftdiag", "triubottomrightdiag",
    "triutopleftdiag"};

std::shared_ptr<lm::Model> make_model(bool gpt) {
  at::manual_seed(0);
  if (gpt)
    return std::make_shared<lm::GPT>(
        lm::GPTConfig().n_layer(4).n_head(4).n_embd(256).block_size(128));
  return std::make_shared<lm::MLP>(
      lm::MLPConfig().sizes({256, 1024, 1024, 10}).activation("tanh"));
}

std::pair<at::Tensor, at::Tensor> batch(bool gpt) {
  if (gpt)
    return {at::randint(256, {8, 128}, at::kLong), at::randint(256, {8, 128}, at::kLong)};
  return {at::randn({128, 256}), at::randint(10, {128}, at::kLong)};
}

// kind: 0 AdamW, 1 KFAC, 2 + i SINGD with kStructures[i].
void BM_TrainStep(benchmark::State& state, bool gpt) {
  const int kind = static_cast<int>(state.range(0));
  auto model = make_model(gpt);
  std::vector<std::unique_ptr<torch::optim::Optimizer>> opts;
  int64_t precond = 0;
  if (kind == 0) {
    opts.push_back(std::make_unique<torch::optim::AdamW>(
        model->parameters(), torch::optim::AdamWOptions(1e-4)));
    state.SetLabel("adamw");
  } else {
    auto split = lowmem::nn::split_curvature_parameters(*model);
    if (kind == 1) {
      auto k = std::make_unique<lo::KFAC>(*model, lo::KfacOptions().lr(1e-4));
      precond = k->preconditioner_bytes();
      opts.push_back(std::move(k));
      state.SetLabel("kfac");
    } else {
      const auto& key = kStructures.at(static_cast<size_t>(kind - 2));
      auto s = std::make_unique<lo::SINGD>(*model, lo::SingdOptions(1e-4).structures(key));
      precond = s->preconditioner_bytes();
      opts.push_back(std::move(s));
      state.SetLabel("singd/" + key);
    }
    if (!split.uncovered.empty()) {
      std::vector<at::Tensor> rest;
      for (auto& p : split.uncovered) rest.push_back(p.second);
      opts.push_back(std::make_unique<torch::optim::AdamW>(
          rest, torch::optim::AdamWOptions(1e-4)));
    }
  }
  at::manual_seed(1);
  auto [x, y] = batch(gpt);
  for (auto _ : state) {
    for (auto& o : opts) lo::before_forward(*o);
    at::Tensor loss = model->loss(x, y);
    for (auto& o : opts) lo::clear_grads(*o);
    loss.backward();
    for (auto& o : opts) o->step();
  }
  int64_t total_state = 0;
  for (auto& o : opts) total_state += lo::state_bytes(*o);
  int64_t params = 0;
  for (auto& p : model->parameters()) params += p.numel();
  state.counters["precond_MiB"] = static_cast<double>(precond) / (1 << 20);
  state.counters["state_MiB"] = static_cast<double>(total_state) / (1 << 20);
  state.counters["params_M"] = static_cast<double>(params) / 1e6;
}

// LOWMEM_BENCH_ITERS overrides the 20 iterations (e.g. 1 for the exact
// memory counters only; timings then include one refresh and mean little).
int64_t iterations() {
  const char* v = std::getenv("LOWMEM_BENCH_ITERS");
  return v ? std::max<int64_t>(1, std::atoll(v)) : 20;
}

void Kinds(benchmark::internal::Benchmark* b) {
  for (int k = 0; k < 2 + static_cast<int>(kStructures.size()); ++k) b->Arg(k);
  b->Iterations(iterations())->Unit(benchmark::kMillisecond);
}

BENCHMARK_CAPTURE(BM_TrainStep, mlp, false)->Apply(Kinds);
BENCHMARK_CAPTURE(BM_TrainStep, gpt, true)->Apply(Kinds);

// The per-step preconditioning product alone: S (S^T X) for an n x n factor
// of each structure (random stored numbers) and X [n, m]; the label is the
// structure, range(1) = n, range(2) = m (the sizes of the MLP's and GPT's
// layers: 257 x 1024, 1025 x 1024, 1024 x 257).
void BM_Precondition(benchmark::State& state) {
  namespace st = lowmem::optim::structures;
  const auto& key = kStructures.at(static_cast<size_t>(state.range(0)));
  const int64_t n = state.range(1), m = state.range(2);
  at::manual_seed(0);
  auto z = st::make_structured(key, n, at::TensorOptions().dtype(at::kFloat), false);
  std::vector<at::Tensor> ts;
  for (auto& t : z->tensors()) ts.push_back(at::randn_like(t));
  auto s = z->with_tensors(ts);
  at::Tensor x = at::randn({n, m});
  for (auto _ : state) benchmark::DoNotOptimize(s->matmul(s->rmatmat(x)));
  state.SetLabel(key);
}

void PrecondArgs(benchmark::internal::Benchmark* b) {
  for (int k = 0; k < static_cast<int>(kStructures.size()); ++k)
    for (auto nm : {std::pair<int, int>{257, 1024}, {1025, 1024}, {1024, 257}})
      b->Args({k, nm.first, nm.second});
  b->Unit(benchmark::kMillisecond);
}

BENCHMARK(BM_Precondition)->Apply(PrecondArgs);

}  // namespace

BENCHMARK_MAIN();
