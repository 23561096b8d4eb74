// Optimizer step time on a 25.2M-parameter GPT-like set (d = 512, 8 layers of
// [3d,d], [d,d], [4d,d], [d,4d], [d], [d]; random grads) for lowmem's CAME,
// Adafactor and fused AdamW, torch::optim::AdamW, and the ATen (reference)
// paths of CAME/Adafactor. The memory bandwidth is probed in the same run (a
// fused triad loop, best of several) and each step is reported against its
// minimal-traffic bound: bytes that must be read + written per step / BW.
//
//   build/bench/optim_step --benchmark_min_time=2
//   taskset -c 0 build/bench/optim_step --benchmark_min_time=2   (1 thread)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>
#include <torch/optim/adamw.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <vector>

#include "lowmem/core/threads.h"
#include "lowmem/optim/adafactor.h"
#include "lowmem/optim/adamw.h"
#include "lowmem/optim/came.h"

namespace {

namespace lo = lowmem::optim;

std::vector<std::vector<int64_t>> shapes() {
  const int64_t d = 512;
  std::vector<std::vector<int64_t>> s;
  for (int l = 0; l < 8; ++l) {
    s.push_back({3 * d, d});
    s.push_back({d, d});
    s.push_back({4 * d, d});
    s.push_back({d, 4 * d});
    s.push_back({d});
    s.push_back({d});
  }
  return s;
}

std::vector<at::Tensor> make_params() {
  at::manual_seed(0);
  std::vector<at::Tensor> ps;
  for (const auto& s : shapes()) {
    auto p = at::randn(s).mul_(0.02).set_requires_grad(true);
    p.mutable_grad() = at::randn(s).mul_(1e-3);
    ps.push_back(p);
  }
  return ps;
}

// Bytes per step that any implementation must move (compulsory traffic):
// every state/param tensor read once and written once, the grad read once.
// `passes` instead counts the traffic of the fewest passes the algorithm's
// data dependencies allow (what the fused kernels do).
struct Traffic {
  double compulsory = 0, passes = 0;
};

Traffic traffic(const std::string& which) {
  Traffic t;
  for (const auto& s : shapes()) {
    double n = 1;
    for (auto d : s) n *= static_cast<double>(d);
    const bool mat = s.size() >= 2;
    if (which == "adamw") {
      t.compulsory += 28 * n;  // p, g, m, v read; p, m, v written
      t.passes += 28 * n;
    } else if (which == "came") {
      // matrix: p, g, m read, p, m written; passes: g | g,m->m | p,m->p
      // vector: + v; passes: g,v->v | g,v,m,p->m,p
      t.compulsory += (mat ? 20 : 28) * n;
      t.passes += (mat ? 28 : 36) * n;
    } else if (which == "adafactor") {
      // HF defaults (no beta1, parameter scaling): matrix p, g read, p
      // written; passes: g,p | g,p->p. Vector: + v; passes:
      // p | g,v->v | g,v,p->p.
      t.compulsory += (mat ? 12 : 20) * n;
      t.passes += (mat ? 20 : 32) * n;
    }
  }
  return t;
}

// Best-of-N fused triad a = b + s*c over 32M floats: bytes/s (12 B/elem).
// Probed again next to every benchmark (the machine is shared and noisy).
double probe_bandwidth(int reps = 7) {
  const int64_t n = 32 << 20;
  at::Tensor a = at::zeros({n}), b = at::rand({n}), c = at::rand({n});
  float* __restrict pa = a.data_ptr<float>();
  const float* __restrict pb = b.data_ptr<float>();
  const float* __restrict pc = c.data_ptr<float>();
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    at::parallel_for(0, n, 1 << 16, [&](int64_t b0, int64_t e0) {
      for (int64_t i = b0; i < e0; ++i) pa[i] = pb[i] + 0.5f * pc[i];
    });
    auto t1 = std::chrono::steady_clock::now();
    best = std::min(best, std::chrono::duration<double>(t1 - t0).count());
    benchmark::ClobberMemory();
  }
  return 12.0 * static_cast<double>(n) / best;
}

void BM_Bandwidth(benchmark::State& state) {
  lowmem::set_default_threads();
  double bw = 0;
  for (auto _ : state) bw = probe_bandwidth(15);
  state.counters["GB/s"] = bw / 1e9;
}
BENCHMARK(BM_Bandwidth)->Iterations(1);

void run_steps(benchmark::State& state, const std::string& traffic_kind,
               const std::function<std::unique_ptr<torch::optim::Optimizer>(
                   std::vector<at::Tensor>)>& make,
               bool reference = false) {
  lowmem::set_default_threads();
  auto ps = make_params();
  auto opt = make(ps);
  lo::detail::set_reference_path(reference);
  opt->step();  // state allocation outside the timed loop
  double seconds = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    opt->step();
    benchmark::ClobberMemory();
    seconds += std::chrono::duration<double>(
                   std::chrono::steady_clock::now() - t0)
                   .count();
  }
  lo::detail::set_reference_path(false);
  const double per_step = seconds / static_cast<double>(state.iterations());
  const double bw = probe_bandwidth();
  state.counters["GB/s_triad"] = bw / 1e9;
  int64_t n = 0;
  for (auto& p : ps) n += p.numel();
  state.counters["params"] = static_cast<double>(n);
  const Traffic t = traffic(traffic_kind);
  state.counters["B/param"] = t.compulsory / static_cast<double>(n);
  state.counters["bound_ms"] = 1e3 * t.compulsory / bw;
  state.counters["pass_bound_ms"] = 1e3 * t.passes / bw;
  // Step time / bound (1.0 = at the bound).
  state.counters["x_bound"] = per_step / (t.compulsory / bw);
  state.counters["x_pass_bound"] = per_step / (t.passes / bw);
  state.counters["GB/s_eff"] = t.compulsory / per_step / 1e9;
}

void BM_CAME(benchmark::State& state) {
  run_steps(state, "came", [](auto p) {
    return std::make_unique<lo::CAME>(p, lo::CameOptions(1e-4).weight_decay(1e-2));
  });
}
void BM_CAME_AtenPath(benchmark::State& state) {
  run_steps(state, "came", [](auto p) {
    return std::make_unique<lo::CAME>(p, lo::CameOptions(1e-4).weight_decay(1e-2));
  }, /*reference=*/true);
}
void BM_Adafactor(benchmark::State& state) {
  run_steps(state, "adafactor", [](auto p) {
    return std::make_unique<lo::Adafactor>(p, lo::AdafactorOptions());
  });
}
void BM_Adafactor_AtenPath(benchmark::State& state) {
  run_steps(state, "adafactor", [](auto p) {
    return std::make_unique<lo::Adafactor>(p, lo::AdafactorOptions());
  }, /*reference=*/true);
}
void BM_FusedAdamW(benchmark::State& state) {
  run_steps(state, "adamw", [](auto p) {
    return std::make_unique<lo::AdamW>(p, lo::AdamWOptions(1e-4));
  });
}
void BM_TorchAdamW(benchmark::State& state) {
  run_steps(state, "adamw", [](auto p) {
    return std::make_unique<torch::optim::AdamW>(
        p, torch::optim::AdamWOptions(1e-4));
  });
}
BENCHMARK(BM_CAME)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Adafactor)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_FusedAdamW)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_TorchAdamW)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_CAME_AtenPath)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Adafactor_AtenPath)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
