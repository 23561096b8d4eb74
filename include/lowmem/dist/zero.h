// ZeRO stages 1 and 2 (Rajbhandari et al., "ZeRO: Memory Optimizations
// Toward Training Trillion Parameter Models", SC 2020, arXiv 1910.02054) for
// data-parallel training on c10d: each rank owns whole parameters (balanced
// by bytes), keeps optimizer state only for them and steps only them; the
// updated parameters are broadcast from their owners. Stage 1 all-reduces
// every gradient and then drops those it does not own; stage 2 reduces each
// gradient to its owner only. Works with any optimizer that skips parameters
// without a gradient and creates their state on their first update
// (PerParamOptimizer, GaLore, torch's SGD/Adam/AdamW); optimizers that take
// gradients the sync never sees (GaLore's hook modes, the projected
// adapter's svd refresh) ask their ownership (OptimizerExtras::
// set_ownership) and name what they updated (mark_updated). SINGD and KFAC
// shard their momenta (a layer's weight and bias share an owner); their
// Kronecker factors stay on every rank, since every rank's curvature taps use
// them, and every rank updates them from the averaged statistics. Stage 2
// reduces bucket by bucket during the update's last backward (DeepSpeed's
// overlap_comm / reduce_bucket_size): a hook after each parameter's gradient
// accumulation launches a bucket's reduces as soon as each of its parameters
// has a gradient and frees every gradient of the bucket (the owner keeps the
// reduced sum), so a rank holds its own gradients plus at most two buckets in
// flight, not all of them, from the first update on. A parameter accumulating
// again after its bucket went out (a checkpointed segment's nested backward,
// LoTR's factors shared across layers) sends that later part in a reduce of its
// own, which the owner adds: the same sum, in another order (float round-off).
// Deviations from DeepSpeed: whole parameters instead of flat equal
// partitions (a rank holds 1/N of the bytes plus at most one parameter);
// ProcessGroupGloo of LibTorch 1.13 has no reduce_scatter, so stage 2 issues
// one reduce per owner and bucket; stage 1 (and stage 2 with overlap off)
// reduces after backward. Buckets follow the reverse parameter order (as
// torch DDP's first iteration); a bucket whose parameters are not all
// reached by backward goes out after it. As with DDP, every rank's backward
// must reach the same parameters: if not, the ranks' reduces disagree and
// fail after the collective timeout with a "[dist] ..." error.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "lowmem/dist/communicator.h"

namespace lowmem::dist {

/// The owner rank of each item: items taken largest first (ties: lower index
/// first), each given to the rank with the fewest bytes so far (ties: lower
/// rank). Every rank's total is at most sum/world_size + the largest item.
/// Deterministic: every rank computes the same owners from the same sizes.
std::vector<int> partition_by_bytes(const std::vector<int64_t>& bytes,
                                    int world_size);
/// partition_by_bytes over groups of items that must share an owner:
/// groups[i] is the index of the first item of item i's group (i for an
/// item of its own); empty: every item alone.
std::vector<int> partition_grouped(const std::vector<int64_t>& bytes,
                                   const std::vector<size_t>& groups,
                                   int world_size);

struct ZeroOptions {
  /// 1: shard optimizer state; 2: shard optimizer state and gradients.
  TORCH_ARG(int, stage) = 1;
  /// Largest flat buffer one collective moves (MiB); DDP's default is 25.
  TORCH_ARG(double, bucket_cap_mb) = 25.0;
  /// Stage 2: reduce from gradient hooks during the last backward and free
  /// the gradients of other ranks' parameters at once (DeepSpeed's
  /// overlap_comm, default true for stage 2 there too). false: after
  /// backward, as stage 1.
  TORCH_ARG(bool, overlap) = true;
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
  /// `groups` (partition_grouped): parameters one owner must update
  /// together, e.g. a SINGD/KFAC layer's weight and bias.
  ZeroSharding(std::shared_ptr<Communicator> comm,
               std::vector<at::Tensor> params, ZeroOptions options = {},
               const std::vector<size_t>& groups = {});
  ~ZeroSharding();
  ZeroSharding(const ZeroSharding&) = delete;
  ZeroSharding& operator=(const ZeroSharding&) = delete;

  /// Before each micro-batch's backward (train::Trainer's before-backward
  /// hook): arms stage 2's hooks for the update's last micro-batch.
  void before_backward(bool last_micro_batch);
  /// Bytes of gradients of parameters this rank does not own that were
  /// still held when the last update's backward ended (before
  /// reduce_gradients): with stage 2's overlap only the buckets that could
  /// not launch during backward; otherwise every such gradient.
  int64_t foreign_gradient_bytes_after_backward() const {
    return foreign_bytes_after_backward_;
  }
  /// Buckets whose reduces were launched from hooks during the last backward.
  int64_t buckets_launched_in_backward() const { return launched_in_backward_; }
  /// Reduces of a parameter's later accumulation during the last backward.
  int64_t late_reduces_in_backward() const { return late_reduces_; }

  /// Owner rank of parameter i (partition_grouped of the parameters' bytes).
  int owner(size_t i) const { return owners_.at(i); }
  const std::vector<int>& owners() const { return owners_; }
  bool owns(size_t i) const { return owner(i) == comm_->rank(); }
  /// Whether parameter i had a gradient in the last update (on every rank
  /// alike: the ranks' masks are compared).
  bool had_gradient(size_t i) const { return had_grad_.at(i); }
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
  /// Parameter i was updated this step although it had no gradient in the
  /// sync (optim::OptimizerExtras::updated_outside_sync): its owner
  /// broadcasts it too, and had_gradient(i) is true. Every rank must mark
  /// the same parameters, after reduce_gradients.
  void mark_updated(size_t i) { had_grad_.at(i) = true; }
  /// Copies every parameter that had a gradient this step (or was marked)
  /// from its owner to every rank (one broadcast per owner and bucket).
  void broadcast_parameters();

 private:
  std::shared_ptr<Communicator> comm_;
  std::vector<at::Tensor> params_;
  ZeroOptions options_;
  std::vector<int> owners_;
  std::vector<bool> had_grad_;  // this step's parameters with a gradient

  // Stage 2 with overlap (see the file's opening).
  struct Bucket {
    std::vector<size_t> params;  // indices into params_, reverse order
    int64_t waiting = 0;         // parameters without a gradient yet
    bool launched = false;
  };
  struct InFlight {
    size_t bucket = 0;  // launch order, for the in-flight bound
    int owner = 0;
    std::vector<size_t> params;
    at::Tensor flat;
    Work work;
    bool late = false;  // one parameter's later accumulation
  };
  class Hook;
  void install_hooks();
  void on_accumulated(size_t i);
  void launch_bucket(Bucket& b, bool in_backward);
  void launch_late(size_t i);
  void bound_in_flight(size_t newest);
  void finish(InFlight& f);
  void finish_all();
  void reduce_after_overlap(std::vector<at::Tensor>& grads);
  int64_t foreign_grad_bytes() const;

  std::vector<Bucket> buckets_;
  std::vector<size_t> bucket_of_;             // param -> bucket
  std::vector<std::shared_ptr<void>> nodes_;  // the grad accumulators
  std::vector<uintptr_t> hook_keys_;
  std::vector<InFlight> in_flight_;
  std::vector<bool> reached_;     // this backward gave it a gradient
  std::vector<bool> reduced_;     // its gradient went into a reduce
  std::vector<at::Tensor> sums_;  // owned: the reduced sum (into a flat)
  std::mutex mutex_;              // hooks may run on autograd's device threads
  size_t next_launch_ = 0;
  size_t launches_ = 0;  // collectives launched this step (in-flight bound)
  bool armed_ = false;   // the last micro-batch's backward is running
  int64_t foreign_bytes_after_backward_ = 0;
  int64_t launched_in_backward_ = 0;
  int64_t late_reduces_ = 0;
};

}  // namespace lowmem::dist
