// Cost of one projection refresh for a d x d fp32 gradient at rank r = d/4
// (d = 512, 1024): full SVD (official GaLore), randomized SVD (range finder,
// 2 power iterations, oversampling 8) and seeded random sketches (Gaussian,
// semi-orthogonal). The bound: sgemm throughput of the rsvd's own GEMM shape
// ([d, d] x [d, k], k = r + 8) measured in the same run (BM_Sgemm runs first).
// Counters: gemm_GF = GEMM FLOPs of the method (rsvd: 2 d^2 k (2 + 2q);
// svd: 8/3 d^3, the Householder bidiagonalisation alone, a lower bound),
// bound_ms = gemm_GF / measured sgemm rate, kept_frac = |P^T G|^2 / |G|^2
// (orthonormal bases; the best rank-d/4 basis keeps the top-d/4 energy).
// Each case runs with 1 torch thread and with all cores (threads:0).
//   build/bench/projection_refresh --benchmark_min_time=1
#include <ATen/ATen.h>
#include <benchmark/benchmark.h>

#include <chrono>
#include <map>
#include <string>

#include "lowmem/core/threads.h"
#include "lowmem/projection/projector.h"

namespace {

constexpr int64_t kPowerIters = 2, kOversample = 8;  // ProjectorOptions defaults

int64_t rank_of(int64_t d) { return d / 4; }
int64_t sketch_width(int64_t d) { return std::min(rank_of(d) + kOversample, d); }

std::map<int64_t, double>& sgemm_rate() {  // d*1000+threads -> FLOP/s (BM_Sgemm)
  static std::map<int64_t, double> rate;
  return rate;
}

// A gradient-like matrix with a slowly decaying spectrum, sigma_i =
// (i + 1)^-1/2 (no exact low rank: the top d/4 directions hold ~80% of the
// energy at d = 1024), so an approximate basis shows in kept_frac.
at::Tensor gradient(int64_t d) {
  at::manual_seed(0);
  auto u = std::get<0>(at::linalg_qr(at::randn({d, d})));
  auto v = std::get<0>(at::linalg_qr(at::randn({d, d})));
  auto s = at::arange(1, d + 1, at::kFloat).pow(-0.5);
  return (u * s).matmul(v.t()).contiguous();
}

// Second argument: torch intra-op threads (0: all cores). One thread gives
// CPU times that stay meaningful when the machine is shared.
void set_threads(const benchmark::State& state) {
  lowmem::set_default_threads(static_cast<int>(state.range(1)));
}

void BM_Sgemm(benchmark::State& state) {
  set_threads(state);
  const int64_t d = state.range(0), k = sketch_width(d);
  auto a = at::randn({d, d}), b = at::randn({d, k}), c = at::empty({d, k});
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    at::mm_out(c, a, b);
    benchmark::DoNotOptimize(c.data_ptr<float>());
  }
  const double s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double flops = 2.0 * d * d * k;
  sgemm_rate()[d * 1000 + state.range(1)] = flops * state.iterations() / s;
  state.counters["GFLOP/s"] = flops * state.iterations() / s / 1e9;
}

void refresh(benchmark::State& state, const char* basis, double gemm_flops) {
  set_threads(state);
  const int64_t d = state.range(0);
  auto g = gradient(d);
  lowmem::projection::Projector p(lowmem::projection::ProjectorOptions()
                                      .rank(rank_of(d))
                                      .basis(basis)
                                      .power_iters(kPowerIters)
                                      .oversample(kOversample)
                                      .proj_type("left"),
                                  d, d);
  for (auto _ : state) {
    p.refresh(g);
    benchmark::DoNotOptimize(p.left().data_ptr());
  }
  // How much of G's energy the orthonormal bases keep (a random one: r/d).
  if (std::string(basis) != "gaussian") {
    const double kept = p.project(g).norm().item<double>() / g.norm().item<double>();
    state.counters["kept_frac"] = kept * kept;
  }
  state.counters["rank"] = static_cast<double>(rank_of(d));
  if (gemm_flops > 0) {
    state.counters["gemm_GF"] = gemm_flops / 1e9;
    auto it = sgemm_rate().find(d * 1000 + state.range(1));
    if (it != sgemm_rate().end())
      state.counters["bound_ms"] = 1e3 * gemm_flops / it->second;
  }
}

void BM_FullSvd(benchmark::State& s) {
  const double d = static_cast<double>(s.range(0));
  refresh(s, "svd", 8.0 / 3.0 * d * d * d);
}
void BM_RandomizedSvd(benchmark::State& s) {
  const double d = static_cast<double>(s.range(0));
  const double k = static_cast<double>(sketch_width(s.range(0)));
  // G.Omega, q x (G^T.Q, G.Z), Q^T.G: (2 + 2q) products of [d, d] x [d, k].
  refresh(s, "rsvd", 2.0 * d * d * k * (2 + 2 * kPowerIters));
}
void BM_GaussianSketch(benchmark::State& s) { refresh(s, "gaussian", 0); }
void BM_OrthogonalSketch(benchmark::State& s) { refresh(s, "orthogonal", 0); }

}  // namespace

void cases(benchmark::internal::Benchmark* b) {
  b->ArgsProduct({{512, 1024}, {1, 0}})
      ->ArgNames({"d", "threads"})
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
}

BENCHMARK(BM_Sgemm)->Apply(cases);
BENCHMARK(BM_FullSvd)->Apply(cases);
BENCHMARK(BM_RandomizedSvd)->Apply(cases);
BENCHMARK(BM_GaussianSketch)->Apply(cases);
BENCHMARK(BM_OrthogonalSketch)->Apply(cases);
BENCHMARK_MAIN();
