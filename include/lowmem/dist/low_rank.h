// Low-rank gradient communication for data-parallel training: each m x n
// gradient G is all-reduced as its r-dimensional projection (P^T G, r x n, for
// m <= n; G Q, m x r, otherwise), so r/min(m,n) of the bytes move. Following
// the gradient-transformation/adapter duality (arXiv 2502.13811, spec
// research/optim-galore.md section 4.4.3) and GaLore's projection (arXiv
// 2403.03507). Deviations: the paper's merge schedule is unknown; see
// docs/distributed.md for the per-worker variant implemented here.
#pragma once

#include "lowmem/dist/communicator.h"

#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

namespace lowmem::optim {
class GaLore;
}

namespace lowmem::dist {

enum class ProjectionMode {
  /// Every rank projects onto the same basis (same seed, or a basis all ranks
  /// agree on): the projections are averaged with one all-reduce and mapped
  /// back, G <- P mean_w(P^T G_w). With orthonormal P this equals
  /// P P^T mean_w(G_w), so W ranks reproduce one process with the global batch.
  kShared,
  /// Rank w projects its own gradient onto its own random basis P_w (seeded by
  /// rank); the r-dim pieces are all-gathered and combined,
  /// G <- (1/W) sum_w P_w P_w^T G_w, an update of rank up to W r.
  kPerWorker,
};

/// Returns the basis to use for parameter `index` (shape [m, n]) this step:
/// [m, r] (P, left) if m < n, else [n, r] (Q, right), GaLore's "std" side;
/// or an undefined tensor to all-reduce the parameter in full (e.g. on
/// GaLore's SVD refresh steps). Must give the same tensor on every rank.
using BasisProvider =
    std::function<at::Tensor(int64_t index, const at::Tensor& param, int64_t step)>;

struct LowRankSyncOptions {
  /// Projection rank r; GaLore's default is 128 (galore_torch README).
  TORCH_ARG(int64_t, rank) = 128;
  /// Steps between fresh random bases; GaLore's update_proj_gap default 200.
  TORCH_ARG(int64_t, update_proj_gap) = 200;
  /// Seed of the random bases (kShared: the same on all ranks).
  TORCH_ARG(uint64_t, seed) = 0;
  TORCH_ARG(ProjectionMode, mode) = ProjectionMode::kShared;
  /// Where the bases come from; empty = seeded Gaussian, orthonormalised.
  TORCH_ARG(BasisProvider, basis_provider) = nullptr;
};

/// Replaces the gradients of `params` by their rank-averaged low-rank
/// versions. 2-D parameters with min(m,n) > rank are projected; all others
/// are averaged in full. Call after backward, before the optimizer step. With
/// one process it still projects (so 1-process and W-process runs agree).
class LowRankGradSync {
  // A basis for [m, n]: [m, r] if m < n (left), else [n, r] (right).
 public:
  LowRankGradSync(
      std::shared_ptr<Communicator> comm,
      std::vector<at::Tensor> params,
      LowRankSyncOptions options = {});

  void synchronize();

  /// The basis used for parameter `index` in the last synchronize() by this
  /// rank (undefined if it was synced in full).
  at::Tensor last_basis(int64_t index) const {
    return last_basis_.at(index);
  }
  /// True if parameter `index` is eligible for projection.
  bool projected(int64_t index) const {
    return projected_.at(index);
  }
  /// The seeded random basis of parameter `index` for `worker` at `step`.
  at::Tensor random_basis(int64_t index, int64_t step, int worker) const;
  /// Payload bytes this rank handed to collectives in the last synchronize().
  int64_t bytes_last_step() const {
    return bytes_last_step_;
  }
  /// Bytes a full all-reduce of the same gradients would hand over.
  int64_t full_bytes_per_step() const {
    return full_bytes_;
  }
  /// Steps synchronized so far (drives the basis refresh).
  int64_t step() const {
    return step_;
  }
  void set_step(int64_t step) {
    step_ = step;
  }

 private:
  /// The basis parameter i is projected onto this step (undefined: averaged
  /// in full), checked.
  at::Tensor basis_for(size_t i, bool per_worker);
  /// Per-worker mode: every rank's projected pieces, each projected back
  /// with that rank's regenerated basis, averaged.
  void average_per_worker(const std::vector<at::Tensor>& low,
                          const std::vector<int64_t>& low_idx);
  std::shared_ptr<Communicator> comm_;
  std::vector<at::Tensor> params_;
  LowRankSyncOptions options_;
  std::vector<bool> projected_;
  std::vector<at::Tensor> last_basis_;
  int64_t step_ = 0;
  int64_t bytes_last_step_ = 0;
  int64_t full_bytes_ = 0;
};

/// Bases from a GaLore optimizer (optim/galore.h) built over `projected`
/// (the same list, same order): parameter p uses its projector's current
/// basis; on GaLore's refresh steps (and for params it does not project, or
/// projects on the other side / both sides) it returns undefined, so the
/// full gradient is averaged and every rank's SVD sees the same global
/// gradient. The GaLore update then equals the one from a full all-reduce
/// (P^T P = I). Not for GaLore's layerwise / accumulation hook modes.
BasisProvider galore_basis_provider(
    const optim::GaLore& galore,
    std::vector<at::Tensor> projected);

}  // namespace lowmem::dist
