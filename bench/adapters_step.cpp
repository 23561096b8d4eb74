// Forward + backward of a stack of adapted linears (d x d, L layers, N tokens)
// at equal rank: dense (full fine-tuning) vs LoRA vs LoTR vs SNELL (recomputing
// custom backward, and the stored-graph variant for reference). Counters:
// trainable parameters, bytes held between forward and backward (saved
// activations + output), peak bytes during forward+backward (MemoryTracker,
// byte-exact on CPU), both relative to the start of the step.
//
//   build/bench/adapters_step --benchmark_min_time=1
#include <ATen/ATen.h>
#include <benchmark/benchmark.h>
#include <torch/autograd.h>

#include "lowmem/adapters/lora.h"
#include "lowmem/adapters/lotr.h"
#include "lowmem/adapters/snell.h"
#include "lowmem/core/memory.h"
#include "lowmem/core/threads.h"

namespace {

using namespace lowmem::adapters;

constexpr int64_t kDim = 512, kLayers = 4, kTokens = 256, kRank = 8;

struct Stack : lowmem::nn::SlotModule {
  Stack() {
    for (int64_t i = 0; i < kLayers; ++i)
      register_slot("l" + std::to_string(i),
                    std::make_shared<lowmem::nn::Linear>(kDim, kDim));
  }
  at::Tensor forward(at::Tensor x) {
    for (int64_t i = 0; i < kLayers; ++i) x = at::tanh(linear("l" + std::to_string(i)).forward(x));
    return x;
  }
};

enum Method { kDense, kLora, kLotr, kSnell, kSnellStored };

void BM_AdapterStep(benchmark::State& state) {
  lowmem::set_default_threads();
  lowmem::MemoryTracker tracker;
  const auto method = static_cast<Method>(state.range(0));
  at::manual_seed(0);
  auto model = std::make_shared<Stack>();
  TargetOptions targets = TargetOptions().target_regex("l\\d+");
  std::shared_ptr<AdapterModel> adapter;
  switch (method) {
    case kDense: break;
    case kLora: adapter = inject_lora(model, targets, LoraOptions(kRank)); break;
    case kLotr: adapter = inject_lotr(model, targets, LotrOptions(kRank).grouping("shared")); break;
    case kSnell:
    case kSnellStored:
      adapter = inject_snell(model, targets,
                             SnellOptions(kRank).sparsity(0.5).dropout(0).drop_path(0)
                                 .recompute(method == kSnell));
      break;
  }
  if (adapter) {
    // Non-zero updates so every branch does real work.
    at::NoGradGuard g;
    for (auto& kv : adapter->state_tensors()) kv.second.normal_(0, 0.02);
  }
  int64_t trainable = 0;
  for (const auto& p : model->parameters())
    if (p.requires_grad()) trainable += p.numel();
  at::Tensor x = at::randn({kTokens, kDim});
  auto step = [&] {
    at::Tensor y = model->forward(x);
    y.sum().backward();
  };
  step();  // warm-up; gradients now allocated (same for every later step)
  // Memory of one step, measured once outside the timed loop.
  int64_t held = 0, peak = 0;
  {
    auto scope = tracker.scope();
    at::Tensor y = model->forward(x);
    held = tracker.current_bytes() - scope.start_bytes();
    y.sum().backward();
    y = at::Tensor();
    peak = scope.peak_delta();
  }
  for (auto _ : state) step();
  state.counters["trainable_params"] = static_cast<double>(trainable);
  state.counters["held_fwd_bytes"] = static_cast<double>(held);
  state.counters["peak_step_bytes"] = static_cast<double>(peak);
  state.SetLabel(method == kDense ? "dense" : method == kLora ? "lora" : method == kLotr ? "lotr"
                 : method == kSnell ? "snell" : "snell_stored");
}

BENCHMARK(BM_AdapterStep)
    ->ArgName("method")
    ->DenseRange(kDense, kSnellStored)
    ->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
