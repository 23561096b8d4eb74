// The machine's physical bounds, measured in the same run as the other
// benchmarks: memory bandwidth (a fused triad loop, the way the optimizer loops
// are written) and sgemm throughput (torch::mm, float32).
//
//   build/bench/machine_bounds --benchmark_min_time=0.5
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include "lowmem/core/threads.h"

namespace {

// a[i] = b[i] + s * c[i]: reads 8 B, writes 4 B per element (12 B counted, as
// STREAM does; write-allocate traffic is not counted).
void BM_Triad(benchmark::State& state) {
  lowmem::set_default_threads();
  const int64_t n = state.range(0);
  at::Tensor a = at::zeros({n}), b = at::rand({n}), c = at::rand({n});  // pages touched
  float* __restrict pa = a.data_ptr<float>();
  const float* __restrict pb = b.data_ptr<float>();
  const float* __restrict pc = c.data_ptr<float>();
  for (auto _ : state) {
    at::parallel_for(0, n, 1 << 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) pa[i] = pb[i] + 0.5f * pc[i];
    });
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * n * 12);
}
BENCHMARK(BM_Triad)->Arg(64 << 20)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_Sgemm(benchmark::State& state) {
  lowmem::set_default_threads();
  const int64_t n = state.range(0);
  at::Tensor a = at::randn({n, n}), b = at::randn({n, n}), c = at::empty({n, n});
  for (auto _ : state) {
    at::mm_out(c, a, b);
    benchmark::DoNotOptimize(c.data_ptr<float>());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(
      2.0 * n * n * n * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Sgemm)->Arg(1024)->Arg(2048)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
