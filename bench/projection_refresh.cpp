// Cost of one projection refresh for a d x d gradient at rank d/4: full SVD
// (official GaLore), randomized SVD (range finder, 2 power iterations,
// oversampling 8) and seeded random sketches (Gaussian, semi-orthogonal).
//   build/bench/projection_refresh --benchmark_min_time=1
#include <ATen/ATen.h>
#include <benchmark/benchmark.h>

#include "lowmem/projection/projector.h"

namespace {

void refresh(benchmark::State& state, const char* basis) {
  const int64_t d = state.range(0);
  at::manual_seed(0);
  // A gradient-like matrix: decaying spectrum plus noise.
  auto g = at::randn({d, d / 8}).matmul(at::randn({d / 8, d})) +
           0.1 * at::randn({d, d});
  lowmem::projection::Projector p(
      lowmem::projection::ProjectorOptions().rank(d / 4).basis(basis).proj_type(
          "left"),
      d, d);
  for (auto _ : state) {
    p.refresh(g);
    benchmark::DoNotOptimize(p.left().data_ptr());
  }
  // How much of G's energy the basis keeps (sketches keep ~r/d of it).
  auto kept = p.project(g).norm().item<double>() / g.norm().item<double>();
  state.counters["kept_frac"] = kept * kept;
}

void BM_FullSvd(benchmark::State& s) { refresh(s, "svd"); }
void BM_RandomizedSvd(benchmark::State& s) { refresh(s, "rsvd"); }
void BM_GaussianSketch(benchmark::State& s) { refresh(s, "gaussian"); }
void BM_OrthogonalSketch(benchmark::State& s) { refresh(s, "orthogonal"); }

}  // namespace

BENCHMARK(BM_FullSvd)->Arg(512)->Arg(1024)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_RandomizedSvd)->Arg(512)->Arg(1024)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_GaussianSketch)->Arg(512)->Arg(1024)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_OrthogonalSketch)->Arg(512)->Arg(1024)->Unit(benchmark::kMillisecond);
BENCHMARK_MAIN();
