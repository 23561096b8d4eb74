// Memory of one training step, full AdamW vs GaLore (AdamW inner) vs GaLore
// layer-wise vs the random-sketch adapter form, rank d/4, fp32: (1) a stack of
// SlotModule linears (8 x 512x512, batch 64, tanh), (2) lowmem::models::GPT
// (4 layers, n_embd 256, 4 heads, batch 8 x 128 byte tokens). Counters: optimizer state
// bytes, gradient bytes alive after backward, peak tracked bytes of the step
// (absolute, weights included) and the step's peak above its start.
//   build/bench/galore_memory
#include <ATen/ATen.h>
#include <benchmark/benchmark.h>
#include <torch/optim/adamw.h>

#include "lowmem/adapters/projected_adapter.h"
#include "lowmem/adapters/slot_module.h"
#include "lowmem/core/memory.h"
#include "lowmem/models/gpt.h"
#include "lowmem/optim/extras.h"
#include "lowmem/optim/galore.h"
#include "lowmem/optim/galore_adapter.h"

namespace {

namespace la = lowmem::adapters;
namespace lo = lowmem::optim;

constexpr int64_t kDim = 512, kLayers = 8, kBatch = 64, kRank = 128;

struct Stack : la::SlotModule {
  Stack() {
    for (int64_t i = 0; i < kLayers; ++i)
      register_slot("fc" + std::to_string(i),
                    std::make_shared<la::Linear>(kDim, kDim));
  }
  at::Tensor forward(at::Tensor x) {
    for (int64_t i = 0; i < kLayers; ++i)
      x = at::tanh(linear("fc" + std::to_string(i)).forward(x));
    return x;
  }
};

lo::InnerFactory adamw() {
  return [](std::vector<torch::optim::OptimizerParamGroup> g) {
    return std::make_unique<torch::optim::AdamW>(
        std::move(g), torch::optim::AdamWOptions(1e-3).weight_decay(0.0));
  };
}

enum Mode { kAdamW, kGaLore, kLayerwise, kAdapter };

struct StackModel : Stack {
  at::Tensor x = at::randn({kBatch, kDim});
  at::Tensor loss() { return forward(x).pow(2).mean(); }
};

struct GptModel : lowmem::models::GPT {
  GptModel() : GPT(lowmem::models::GPTConfig().n_layer(4).n_embd(256).n_head(4)) {}
  at::Tensor idx = at::randint(256, {8, 128}, at::kLong);
  at::Tensor target = at::randint(256, {8, 128}, at::kLong);
  at::Tensor loss() { return GPT::loss(idx, target); }
};

template <class Net>
void run(benchmark::State& state, Mode mode, int64_t rank) {
  lowmem::MemoryTracker tracker;
  at::manual_seed(0);
  auto net = std::make_shared<Net>();
  auto po = lowmem::projection::ProjectorOptions().rank(rank).update_proj_gap(200);
  std::unique_ptr<torch::optim::Optimizer> opt;
  if (mode == kAdamW) {
    opt = adamw()({torch::optim::OptimizerParamGroup(net->parameters())});
  } else if (mode == kAdapter) {
    auto layers = la::inject_projected(*net, po.basis("orthogonal"));
    std::vector<at::Tensor> plain;
    for (auto& p : net->parameters())
      if (p.requires_grad()) {
        bool is_a = false;
        for (auto& l : layers)
          is_a |= l->a().unsafeGetTensorImpl() == p.unsafeGetTensorImpl();
        if (!is_a) plain.push_back(p);
      }
    opt = std::make_unique<lo::ProjectedAdapterOptimizer>(layers, plain,
                                                          adamw());
  } else {
    auto [proj, plain] = lo::GaLore::route(*net);
    opt = std::make_unique<lo::GaLore>(
        proj, plain, adamw(),
        lo::GaLoreOptions().projector(po).layerwise(mode == kLayerwise));
  }
  auto step = [&](int64_t* grad_bytes) {
    lo::before_forward(*opt);
    opt->zero_grad();
    net->loss().backward();
    std::vector<at::Tensor> grads;
    for (auto& p : net->parameters())
      if (p.grad().defined()) grads.push_back(p.grad());
    if (grad_bytes) *grad_bytes = lowmem::storage_bytes(grads);
    opt->step();
  };
  step(nullptr);  // the refresh step and state initialisation
  int64_t grad_bytes = 0, peak = 0, peak_delta = 0;
  for (auto _ : state) {
    auto scope = tracker.scope();
    step(&grad_bytes);
    peak = std::max(peak, scope.peak_bytes());
    peak_delta = std::max(peak_delta, scope.peak_delta());
  }
  state.counters["opt_state_MiB"] = lo::state_bytes(*opt) / 1048576.0;
  state.counters["grad_MiB"] = grad_bytes / 1048576.0;
  state.counters["peak_MiB"] = peak / 1048576.0;
  state.counters["step_peak_MiB"] = peak_delta / 1048576.0;
}

void BM_Stack_FullAdamW(benchmark::State& s) { run<StackModel>(s, kAdamW, kRank); }
void BM_Stack_GaLore(benchmark::State& s) { run<StackModel>(s, kGaLore, kRank); }
void BM_Stack_GaLoreLayerwise(benchmark::State& s) {
  run<StackModel>(s, kLayerwise, kRank);
}
void BM_Stack_ProjectedAdapter(benchmark::State& s) {
  run<StackModel>(s, kAdapter, kRank);
}
void BM_GPT_FullAdamW(benchmark::State& s) { run<GptModel>(s, kAdamW, 64); }
void BM_GPT_GaLore(benchmark::State& s) { run<GptModel>(s, kGaLore, 64); }
void BM_GPT_GaLoreLayerwise(benchmark::State& s) {
  run<GptModel>(s, kLayerwise, 64);
}
void BM_GPT_ProjectedAdapter(benchmark::State& s) {
  run<GptModel>(s, kAdapter, 64);
}

}  // namespace

BENCHMARK(BM_Stack_FullAdamW)->Iterations(3)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Stack_GaLore)->Iterations(3)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Stack_GaLoreLayerwise)->Iterations(3)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Stack_ProjectedAdapter)->Iterations(3)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_GPT_FullAdamW)->Iterations(3)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_GPT_GaLore)->Iterations(3)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_GPT_GaLoreLayerwise)->Iterations(3)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_GPT_ProjectedAdapter)->Iterations(3)->Unit(benchmark::kMillisecond);
BENCHMARK_MAIN();
