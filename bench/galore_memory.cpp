// Memory of one training step (after a first step that builds the optimizer
// state and the basis) for full AdamW vs GaLore (AdamW inner, SVD basis) vs
// GaLore layer-wise vs the adapter form (semi-orthogonal random sketch,
// regenerated, never stored, as `lowmem compare`'s rsketch-adapter), rank
// d/4, fp32, same initial weights and data for every form, on
// (1) lowmem::models::GPT (4 layers, n_embd 256, 4 heads, batch 8 x 128 byte
// tokens, rank 64) and (2) a stack of 8 SlotModule 512 x 512 linears (tanh,
// batch 64, rank 128). Exact bytes (MemoryTracker / storage_bytes):
//   state      optimizer state (inner state, stored bases, proxies)
//   grads      gradients alive after backward (layer-wise: all freed)
//   live_grads most gradient bytes alive at once during backward (tensor
//              hooks at every gradient's arrival)
//   peak       highest tracked bytes of the step above the bytes live before
//              the model was built (weights, state, grads, activations)
// After the Google Benchmark run it prints an exact-bytes table and checks the
// relations of arXiv 2502.13811 / issue 5 (exit code 1 if one fails): adapter
// peak < GaLore peak, layer-wise live_grads <= the largest single parameter.
//   build/bench/galore_memory
#include <ATen/ATen.h>
#include <benchmark/benchmark.h>
#include <torch/optim/adamw.h>

#include <cstdio>
#include <map>
#include <string>

#include "lowmem/core/memory.h"
#include "lowmem/models/gpt.h"
#include "lowmem/nn/slot_module.h"
#include "lowmem/optim/extras.h"
#include "lowmem/optim/galore.h"
#include "lowmem/optim/galore_adapter.h"
#include "lowmem/projection/projected_linear.h"

namespace {

namespace ln = lowmem::nn;
namespace lo = lowmem::optim;

constexpr int64_t kDim = 512, kLayers = 8, kBatch = 64;

struct StackModel : ln::SlotModule {
  StackModel() {
    for (int64_t i = 0; i < kLayers; ++i)
      register_slot("fc" + std::to_string(i),
                    std::make_shared<ln::Linear>(kDim, kDim));
  }
  at::Tensor loss() {
    auto y = x;
    for (int64_t i = 0; i < kLayers; ++i)
      y = at::tanh(linear("fc" + std::to_string(i)).forward(y));
    return y.pow(2).mean();
  }
  at::Tensor x = at::randn({kBatch, kDim});
  static constexpr int64_t kRank = kDim / 4;
};

struct GptModel : lowmem::models::GPT {
  GptModel()
      : GPT(lowmem::models::GPTConfig().n_layer(4).n_embd(256).n_head(4).block_size(128)) {}
  at::Tensor loss() { return GPT::loss(idx, target); }
  at::Tensor idx = at::randint(256, {8, 128}, at::kLong);
  at::Tensor target = at::randint(256, {8, 128}, at::kLong);
  static constexpr int64_t kRank = 256 / 4;
};

lo::InnerFactory adamw() {
  return [](std::vector<torch::optim::OptimizerParamGroup> g) {
    return std::make_unique<torch::optim::AdamW>(
        std::move(g), torch::optim::AdamWOptions(1e-3).weight_decay(0.0));
  };
}

enum Mode { kAdamW, kGaLore, kLayerwise, kAdapter };
const char* kModeName[] = {"full AdamW", "GaLore", "GaLore layer-wise",
                           "adapter (random sketch)"};

struct Row {
  int64_t state = 0, grads = 0, live_grads = 0, peak = 0, params = 0,
          largest_param = 0;
};
std::map<std::string, std::map<int, Row>>& rows() {
  static std::map<std::string, std::map<int, Row>> r;
  return r;
}

// Most gradient bytes alive at once: at each gradient's arrival (before it is
// accumulated into .grad), the .grad of every param plus the incoming one.
struct LiveGrads {
  explicit LiveGrads(std::vector<at::Tensor> ps) : params(std::move(ps)) {
    for (size_t i = 0; i < params.size(); ++i)
      handles.push_back(params[i].register_hook([this, i](const at::Tensor& g) {
        std::vector<at::Tensor> live{g};
        for (auto& p : params) live.push_back(p.grad());
        peak = std::max(peak, lowmem::storage_bytes(live));
        (void)i;
      }));
  }
  ~LiveGrads() {
    for (size_t i = 0; i < params.size(); ++i) params[i].remove_hook(handles[i]);
  }
  std::vector<at::Tensor> params;
  std::vector<unsigned> handles;
  int64_t peak = 0;
};

std::vector<at::Tensor> trainable(torch::nn::Module& m) {
  std::vector<at::Tensor> out;
  for (auto& p : m.parameters())
    if (p.requires_grad()) out.push_back(p);
  return out;
}

template <class Net>
void run(benchmark::State& state, const std::string& model, Mode mode) {
  lowmem::MemoryTracker tracker;
  const int64_t base = tracker.current_bytes();
  at::manual_seed(0);
  auto net = std::make_shared<Net>();
  const int64_t r = Net::kRank;
  auto po = lowmem::projection::ProjectorOptions().rank(r).update_proj_gap(200);
  std::unique_ptr<torch::optim::Optimizer> opt;
  Row row;
  for (auto& p : net->parameters())
    row.largest_param = std::max(row.largest_param, lowmem::storage_bytes({p}));
  if (mode == kAdamW) {
    opt = adamw()({torch::optim::OptimizerParamGroup(trainable(*net))});
  } else if (mode == kAdapter) {
    auto layers = lowmem::projection::inject_projected(
        *net, po.basis("orthogonal").cache_sketch(false));
    std::vector<at::Tensor> plain;
    for (auto& p : trainable(*net)) {
      bool is_a = false;
      for (auto& l : layers)
        is_a |= l->a().unsafeGetTensorImpl() == p.unsafeGetTensorImpl();
      if (!is_a) plain.push_back(p);
    }
    opt = std::make_unique<lo::ProjectedAdapterOptimizer>(layers, plain, adamw());
  } else {
    auto [proj, plain] = lo::GaLore::route(*net);
    opt = std::make_unique<lo::GaLore>(
        proj, plain, adamw(),
        lo::GaLoreOptions().projector(po).layerwise(mode == kLayerwise));
  }
  auto step = [&](Row* out) {
    lo::before_forward(*opt);
    lo::clear_grads(*opt);
    LiveGrads live(trainable(*net));
    net->loss().backward();
    std::vector<at::Tensor> grads;
    for (auto& p : net->parameters())
      if (p.grad().defined()) grads.push_back(p.grad());
    opt->step();
    if (out) {
      out->grads = std::max(out->grads, lowmem::storage_bytes(grads));
      out->live_grads = std::max(out->live_grads, live.peak);
    }
  };
  step(nullptr);  // the refresh step and state initialisation
  for (auto _ : state) {
    auto scope = tracker.scope();
    step(&row);
    row.peak = std::max(row.peak, scope.peak_bytes() - base);
  }
  row.state = lo::state_bytes(*opt);
  row.params = lowmem::storage_bytes(net->parameters());
  rows()[model][mode] = row;
  state.counters["state_B"] = static_cast<double>(row.state);
  state.counters["grads_B"] = static_cast<double>(row.grads);
  state.counters["live_grads_B"] = static_cast<double>(row.live_grads);
  state.counters["peak_B"] = static_cast<double>(row.peak);
}

void BM_GPT_FullAdamW(benchmark::State& s) { run<GptModel>(s, "GPT", kAdamW); }
void BM_GPT_GaLore(benchmark::State& s) { run<GptModel>(s, "GPT", kGaLore); }
void BM_GPT_GaLoreLayerwise(benchmark::State& s) { run<GptModel>(s, "GPT", kLayerwise); }
void BM_GPT_ProjectedAdapter(benchmark::State& s) { run<GptModel>(s, "GPT", kAdapter); }
void BM_Stack_FullAdamW(benchmark::State& s) { run<StackModel>(s, "Stack", kAdamW); }
void BM_Stack_GaLore(benchmark::State& s) { run<StackModel>(s, "Stack", kGaLore); }
void BM_Stack_GaLoreLayerwise(benchmark::State& s) {
  run<StackModel>(s, "Stack", kLayerwise);
}
void BM_Stack_ProjectedAdapter(benchmark::State& s) {
  run<StackModel>(s, "Stack", kAdapter);
}

}  // namespace

BENCHMARK(BM_GPT_FullAdamW)->Iterations(2)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_GPT_GaLore)->Iterations(2)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_GPT_GaLoreLayerwise)->Iterations(2)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_GPT_ProjectedAdapter)->Iterations(2)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Stack_FullAdamW)->Iterations(2)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Stack_GaLore)->Iterations(2)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Stack_GaLoreLayerwise)->Iterations(2)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Stack_ProjectedAdapter)->Iterations(2)->Unit(benchmark::kMillisecond);

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  bool ok = true;
  for (auto& [model, by_mode] : rows()) {
    std::printf("\n%s (exact bytes)\n", model.c_str());
    std::printf("| form | params | optimizer state | grads after backward | "
                "max live grads | step peak |\n|---|---:|---:|---:|---:|---:|\n");
    for (auto& [mode, r] : by_mode)
      std::printf("| %s | %lld | %lld | %lld | %lld | %lld |\n", kModeName[mode],
                  static_cast<long long>(r.params), static_cast<long long>(r.state),
                  static_cast<long long>(r.grads), static_cast<long long>(r.live_grads),
                  static_cast<long long>(r.peak));
    if (by_mode.count(kGaLore) && by_mode.count(kAdapter)) {
      const bool below = by_mode[kAdapter].peak < by_mode[kGaLore].peak;
      ok &= below;
      std::printf("check %s: adapter peak %lld < GaLore peak %lld: %s\n", model.c_str(),
                  static_cast<long long>(by_mode[kAdapter].peak),
                  static_cast<long long>(by_mode[kGaLore].peak), below ? "yes" : "NO");
    }
    if (by_mode.count(kLayerwise)) {
      const auto& r = by_mode[kLayerwise];
      const bool one = r.live_grads <= r.largest_param;
      ok &= one;
      std::printf("check %s: layer-wise max live grads %lld <= largest param %lld: %s\n",
                  model.c_str(), static_cast<long long>(r.live_grads),
                  static_cast<long long>(r.largest_param), one ? "yes" : "NO");
    }
  }
  return ok ? 0 : 1;
}
