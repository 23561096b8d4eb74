// Low-rank projections of an m x n matrix, shared by the gradient-transform
// form (optim/galore.h) and the adapter form (projection/projected_linear.h):
// GaLore's SVD projector (arXiv 2403.03507, galore_torch/galore_projector.py),
// a randomized-SVD refresh (Halko et al., arXiv 0909.4061), seeded random
// sketches and the two-sided (Kronecker) form P.A.Q^T (arXiv 2502.13811).
// Deviations from the official code: by default (proj_dtype "float32") the
// basis is kept in fp32 (fp64 for fp64 gradients) instead of the gradient
// dtype and the gradient is upcast before the projection matmul
// (proj_dtype "grad" is the official behaviour), project_back picks its side
// from the stored basis (not from the low-rank tensor's shape, which breaks
// reverse_std when m < n, r = m), and the rank is clamped to min(m, n) as the
// official slicing does silently.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace torch::serialize {
class OutputArchive;
class InputArchive;
}  // namespace torch::serialize

namespace lowmem::projection {

/// How a projector is configured. Official names (GaLore param-group keys)
/// where the concept exists upstream.
struct ProjectorOptions {
  /// r. Default: GaLore torchrun_main.py `--rank` default (128).
  TORCH_ARG(int64_t, rank) = 128;
  /// T: new basis when step % T == 0 (step counted from 0, before the
  /// optimizer's increment). Default: GaLoreProjector class default (200).
  TORCH_ARG(int64_t, update_proj_gap) = 200;
  /// alpha, applied in project_back only. Default: GaLoreProjector (1.0).
  TORCH_ARG(double, scale) = 1.0;
  /// std | reverse_std | left | right | full. Default: GaLoreProjector "std".
  /// std projects the longer side away (m >= n: right, else left).
  TORCH_ARG(std::string, proj_type) = "std";
  /// Where a basis comes from: svd (official: full SVD of the gradient),
  /// rsvd (randomized range finder + power iterations), gaussian (N(0, 1/r)
  /// entries) or orthogonal (semi-orthogonal, QR of a Gaussian). lowmem only.
  TORCH_ARG(std::string, basis) = "svd";
  /// rsvd: power iterations q. Halko et al. (2011) recommend q = 1..2.
  TORCH_ARG(int64_t, power_iters) = 2;
  /// rsvd: oversampling p. Halko et al. (2011) §4.2 suggest p = 5..10.
  TORCH_ARG(int64_t, oversample) = 8;
  /// Seed of the random sketches and of the rsvd test matrix. Each basis is
  /// drawn from (seed, stream, refresh index), so it can be regenerated.
  TORCH_ARG(int64_t, seed) = 0;
  /// Random sketches: keep the matrix (true) or regenerate it on every use
  /// from (seed, stream, refresh index) so it is never stored (false).
  TORCH_ARG(bool, cache_sketch) = true;
  /// The basis's dtype and that of the products with it: "float32" (lowmem's
  /// default: fp32, fp64 for fp64 gradients; a bf16/fp16 gradient is upcast
  /// for the product) or "grad" (galore_torch's GaLoreProjector: the basis is
  /// cast to the gradient's dtype and G Q, P^T G and the projection back run
  /// in it; bases are still computed in fp32). "grad" is 4-10x faster for a
  /// bf16 model on CPUs with bf16 GEMMs (docs/benchmarks/llama_7b_galore8.md)
  /// and is the official numerics; GaLore (the optimizer form) only.
  TORCH_ARG(std::string, proj_dtype) = "float32";

 public:
  /// Calls v("name", field_) for every field (drives CLI flags, save, print).
  template <class V>
  void for_each_field(V&& v) {
    v("rank", rank_);
    v("update_proj_gap", update_proj_gap_);
    v("scale", scale_);
    v("proj_type", proj_type_);
    v("basis", basis_);
    v("power_iters", power_iters_);
    v("oversample", oversample_);
    v("seed", seed_);
    v("cache_sketch", cache_sketch_);
    v("proj_dtype", proj_dtype_);
  }
  template <class V>
  void for_each_field(V&& v) const {
    const_cast<ProjectorOptions*>(this)->for_each_field(
        [&v](const char* name, const auto& field) { v(name, field); });
  }
};

/// Throws "[projection] ..." naming the bad value.
void validate(const ProjectorOptions& options);

/// Which side(s) of G the projector reduces.
enum class Side {
  kLeft,   // low = P^T G            [r, n];  back = P low
  kRight,  // low = G Q              [m, r];  back = low Q^T
  kBoth,   // low = P^T G Q          [r, r];  back = P low Q^T
};

/// The side GaLore's proj_type picks for an m x n matrix.
Side side_for(const std::string& proj_type, int64_t rows, int64_t cols);

/// The projection of one m x n matrix (one parameter).
class Projector {
 public:
  /// `stream` separates the random draws of different parameters that share
  /// one seed (use the parameter's index).
  Projector(ProjectorOptions options, int64_t rows, int64_t cols,
            int64_t stream = 0);

  const ProjectorOptions& options() const { return options_; }
  Side side() const { return side_; }
  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  /// Effective rank: min(rank, rows, cols).
  int64_t rank() const { return rank_; }
  /// Shape of project(G): [r, n], [m, r] or [r, r].
  std::vector<int64_t> low_rank_shape() const;
  /// Whether the basis comes from the gradient (svd, rsvd).
  bool needs_gradient() const;

  /// Official schedule: no basis yet, or step % update_proj_gap == 0 where
  /// `step` counts the optimizer steps done so far (before the increment).
  bool needs_refresh(int64_t step) const;
  /// Draws the next basis (refresh_count() increases by one). svd and rsvd
  /// read `grad` [rows, cols]; sketches ignore it and take dtype and device.
  void refresh(const at::Tensor& grad);
  void refresh(at::ScalarType dtype, c10::Device device);
  bool has_basis() const { return refreshes_ > 0; }
  /// How many bases were drawn; the current one has index refresh_count()-1.
  int64_t refresh_count() const { return refreshes_; }

  /// [rows, cols] -> low_rank_shape(), in the basis dtype.
  at::Tensor project(const at::Tensor& g) const;
  /// low_rank_shape() -> [rows, cols], times scale (GaLore's alpha).
  at::Tensor project_back(const at::Tensor& low) const;
  /// target += project_back(low).to(target's dtype), computed a block of
  /// rows at a time when target is bf16/fp16 and large (no full-size fp32
  /// temporary); target is [rows, cols] and written in place.
  void add_back_to(at::Tensor& target, const at::Tensor& low) const;
  /// Whether project's upcast and add_back_to work a block at a time (a
  /// one-sided projection of more than 2^20 elements), and the block: rows
  /// of the matrix (G Q, the update added back) or columns (P^T G); the
  /// whole rows() / cols() when not blocked. lowmem plan sizes the
  /// temporaries from these.
  bool blocked() const;
  int64_t block_rows() const;
  int64_t block_cols() const;
  /// low_rank_shape() -> [rows, cols] without the scale.
  at::Tensor expand(const at::Tensor& low) const;

  /// P [rows, r] (left or both) or undefined.
  at::Tensor left() const;
  /// Q [cols, r] (right or both) or undefined.
  at::Tensor right() const;
  /// Basis dtype (fp32, fp64 for fp64 gradients, the gradient's 16-bit
  /// dtype under proj_dtype "grad"); valid after a refresh.
  at::ScalarType dtype() const { return dtype_; }

  /// The stored basis tensors (empty for uncached sketches).
  std::vector<at::Tensor> state_tensors() const;

  /// Saves / loads the basis and counters under `prefix` (e.g. "galore/3/").
  /// Uncached sketches store only their counters.
  void save(torch::serialize::OutputArchive& archive,
            const std::string& prefix) const;
  void load(torch::serialize::InputArchive& archive,
            const std::string& prefix);

 private:
  bool random_sketch() const;
  void draw_sketch(at::Tensor* p, at::Tensor* q) const;
  uint64_t draw_seed(int64_t refresh_index) const;

  ProjectorOptions options_;
  int64_t rows_, cols_, rank_, stream_;
  Side side_;
  int64_t refreshes_ = 0;
  at::ScalarType dtype_ = at::kFloat;
  c10::Device device_ = c10::Device(c10::kCPU);
  at::Tensor p_;  // [rows, r]
  at::Tensor q_;  // [cols, r]
};

/// Top-r singular vectors (U [m, r], V [n, r]) of g by a randomized range
/// finder (Halko et al. 2011, Alg. 4.4) with `power_iters` QR-stabilised
/// power iterations and `oversample` extra columns; test matrix from `seed`.
std::pair<at::Tensor, at::Tensor> randomized_svd(const at::Tensor& g,
                                                 int64_t r,
                                                 int64_t power_iters,
                                                 int64_t oversample,
                                                 uint64_t seed);

}  // namespace lowmem::projection
