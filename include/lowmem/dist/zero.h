// ZeRO stages 1 and 2 (Rajbhandari et al., "ZeRO: Memory Optimizations
// Toward Training Trillion Parameter Models", SC 2020, arXiv 1910.02054) for
// data-parallel training on c10d: each rank owns whole parameters (balanced
// by bytes), keeps optimizer state only for them and steps only them; the
// updated parameters are broadcast from their owners. Stage 1 all-reduces
// every gradient and then drops those it does not own; stage 2 reduces each
// gradient to its owner only. Works with any optimizer that skips parameters
// without a gradient and creates their state on their first update
// (PerParamOptimizer, GaLore, torch's SGD/Adam/AdamW); not with whole-layer
// curvature optimizers (SINGD, KFAC).
// Deviations from DeepSpeed: whole parameters instead of flat equal
// partitions (a rank holds 1/N of the bytes plus at most one parameter);
// gradients are reduced after backward, not bucket by bucket during it, so
// backward's peak still holds every gradient (stage 2 frees the others'
// gradients when the reduction is done); ProcessGroupGloo of LibTorch 1.13 has
// no reduce_scatter, so stage 2 issues one reduce per owner and bucket.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "lowmem/dist/communicator.h"

namespace lowmem::dist {

/// The owner rank of each item: items taken largest first (ties: lower index
/// first), each given to the rank with the fewest bytes so far (ties: lower
/// rank). Every rank's total is at most sum/world_size + the largest item.
/// Deterministic: every rank computes the same owners from the same sizes.
std::vector<int> partition_by_bytes(const std::vector<int64_t>& bytes,
                                    int world_size);

struct ZeroOptions {
  /// 1: shard optimizer state; 2: shard optimizer state and gradients.
  TORCH_ARG(int, stage) = 1;
  /// Largest flat buffer one collective moves (MiB); DDP's default is 25.
  TORCH_ARG(double, bucket_cap_mb) = 25.0;
};

void validate(const ZeroOptions& options);

/// The ZeRO step of one data-parallel rank over `params` (every trainable
/// parameter, in the same order on every rank). Per update:
///   reduce_gradients(grads);   // after backward: mean gradients, own only
///   norms = gather_norms(local per-tensor norms);   // for clipping
///   optimizer.step();           // steps (and creates state for) own params
///   broadcast_parameters();     // owners send their updated parameters
/// train::Trainer calls these through its grad-sync, norm-sync and
/// after-update hooks (train/data_parallel.h wires them).
class ZeroSharding {
 public:
  ZeroSharding(std::shared_ptr<Communicator> comm,
               std::vector<at::Tensor> params, ZeroOptions options = {});

  /// Owner rank of parameter i (partition_by_bytes of the parameters' bytes).
  int owner(size_t i) const { return owners_.at(i); }
  const std::vector<int>& owners() const { return owners_; }
  bool owns(size_t i) const { return owner(i) == comm_->rank(); }
  /// Parameter bytes owned by `rank`.
  int64_t bytes_owned_by(int rank) const;
  const ZeroOptions& options() const { return options_; }

  /// `grads` holds the defined gradients of the parameters, in parameter
  /// order (train::Trainer's grad-sync list); every rank must have the same
  /// parameters with gradients (checked: "[dist] ..."). Stage 1 all-reduces
  /// them; stage 2 reduces each to its owner. Both divide by the world size
  /// and then drop every gradient this rank does not own (its .grad is reset
  /// and it leaves `grads`), so the optimizer neither steps nor keeps state
  /// for it.
  void reduce_gradients(std::vector<at::Tensor>& grads);
  /// `local`: the per-tensor norms of the gradients reduce_gradients left,
  /// in order. Returns the per-tensor norms of every gradient of the step in
  /// parameter order (each from its owner, exactly), so every rank computes
  /// the same global norm a replicated run computes.
  std::vector<at::Tensor> gather_norms(const std::vector<at::Tensor>& local);
  /// Copies every parameter that had a gradient this step from its owner to
  /// every rank (one broadcast per owner and bucket).
  void broadcast_parameters();

 private:
  std::shared_ptr<Communicator> comm_;
  std::vector<at::Tensor> params_;
  ZeroOptions options_;
  std::vector<int> owners_;
  std::vector<bool> had_grad_;  // this step's parameters with a gradient
};

}  // namespace lowmem::dist
