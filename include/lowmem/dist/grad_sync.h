// Data-parallel gradient averaging in buckets, overlapped with backward, the
// way torch.nn.parallel.DistributedDataParallel's Reducer does it (no paper).
// Deviations: a plain object (no module wrapper); buckets follow the reverse
// parameter order and are not rebuilt from the first iteration's grad order.
#pragma once

#include "lowmem/dist/communicator.h"

#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

namespace lowmem::dist {

struct GradSyncOptions {
  /// Bucket capacity in MiB; DDP's bucket_cap_mb default is 25.
  TORCH_ARG(double, bucket_cap_mb) = 25.0;
  /// Launch a bucket's all-reduce from gradient hooks as soon as all its
  /// gradients are ready (while backward is still running). false: everything
  /// is all-reduced in synchronize().
  TORCH_ARG(bool, overlap) = true;
  /// Divide the sum by world_size (DDP semantics: the mean over ranks).
  TORCH_ARG(bool, average) = true;
};

/// Averages the gradients of `params` over all ranks. Usage per step:
///   loss.backward();  sync.synchronize();  optimizer.step();
/// With overlap, hooks copy each gradient into its bucket during backward and
/// launch the bucket's all-reduce when the bucket is complete; synchronize()
/// launches what is left (unused parameters contribute zeros), waits, and
/// writes the averages into param.grad(). For gradient accumulation, call
/// set_enabled(false) for the micro-steps that must not communicate.
class GradSync {
 public:
  GradSync(
      std::shared_ptr<Communicator> comm,
      std::vector<at::Tensor> params,
      GradSyncOptions options = {});
  ~GradSync();
  GradSync(const GradSync&) = delete;
  GradSync& operator=(const GradSync&) = delete;

  /// Finishes the step's all-reduces and writes the averaged gradients.
  void synchronize();
  /// While disabled the hooks only pass gradients through (accumulation).
  void set_enabled(bool enabled);
  bool enabled() const {
    return enabled_;
  }

  /// Parameter indices (into the constructor's list) of each bucket, in
  /// launch order.
  std::vector<std::vector<int64_t>> bucket_indices() const;
  /// Payload bytes all-reduced by the last synchronize().
  int64_t bytes_last_step() const {
    return bytes_last_step_;
  }
  /// Buckets whose all-reduce was launched from a hook (before synchronize)
  /// in the last step: evidence of overlap.
  int64_t buckets_launched_early_last_step() const {
    return launched_early_last_;
  }
  const std::shared_ptr<Communicator>& communicator() const {
    return comm_;
  }

 private:
  struct Bucket {
    std::vector<int64_t> params;   // indices into params_
    std::vector<int64_t> offsets;  // element offset of each param in flat
    at::Tensor flat;               // all grads of the bucket, one dtype/device
    std::vector<bool> filled;
    int64_t pending = 0;
    bool launched = false;
    Work work;
  };

  void on_grad(int64_t param_index, const at::Tensor& grad);
  void launch_ready_locked(bool from_hook);
  void launch_locked(Bucket& b);
  void reset_step_locked();

  std::shared_ptr<Communicator> comm_;
  std::vector<at::Tensor> params_;
  GradSyncOptions options_;
  std::vector<Bucket> buckets_;
  std::vector<std::pair<int64_t, int64_t>> where_;  // param -> (bucket, slot)
  std::vector<unsigned> hook_ids_;
  std::mutex mutex_;
  size_t next_launch_ = 0;
  bool enabled_ = true;
  int64_t bytes_last_step_ = 0;
  int64_t bytes_this_step_ = 0;
  int64_t launched_early_ = 0;
  int64_t launched_early_last_ = 0;
};

/// Averages `grads` in place across ranks: packed into flat buckets of at
/// most bucket_cap_mb (same dtype/device), launched in order with at most
/// two in flight (so the flat copies cost two buckets, not a second set of
/// gradients). Every rank must pass the same shapes in the same order.
/// Returns the payload bytes handed to the all-reduces.
int64_t allreduce_mean_bucketed(
    Communicator& comm,
    std::vector<at::Tensor>& grads,
    double bucket_cap_mb = 25.0);

/// The train::Trainer data-parallel hook (Trainer::set_grad_sync): called
/// once per update after the last micro-batch's backward with the defined
/// gradients in optimizer order; runs allreduce_mean_bucketed. A rank whose
/// list differs (a parameter without gradient on one rank only) is caught:
/// the shapes are compared first and a "[dist] ..." error names the mismatch.
std::function<void(std::vector<at::Tensor>&)> make_trainer_grad_sync(
    std::shared_ptr<Communicator> comm,
    double bucket_cap_mb = 25.0);

/// Throws "[dist] <what> layouts differ: ... <likely_cause>" unless every
/// rank passes as many tensors with as many elements in all as this one.
void check_same_layout(Communicator& comm, const std::vector<at::Tensor>& ts,
                       const char* what, const char* likely_cause);

/// The data-parallel hook of optimizers that compute from their own rows
/// outside the trainer's gradient sync (optim::StatisticsSync: SINGD/KFAC's
/// curvature statistics, GaLore's gradients inside its hooks, the projected
/// adapter's svd refresh gradient): checks the layout as above, then
/// averages the tensors in place over the ranks (bf16/fp16 ones through an
/// fp32 copy), in buckets of at most bucket_cap_mb. Every rank then updates
/// the same state from the whole batch, as one process would.
std::function<void(std::vector<at::Tensor>&)> make_statistics_sync(
    std::shared_ptr<Communicator> comm, double bucket_cap_mb = 25.0);

}  // namespace lowmem::dist
