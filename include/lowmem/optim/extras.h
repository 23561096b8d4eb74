// What the trainer, memory accounting and checkpoints need from an optimizer
// beyond torch::optim::Optimizer. lowmem's optimizers implement
// OptimizerExtras; torch's own (SGD, Adam, AdamW, ...) are handled by the free
// functions below.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <utility>
#include <vector>

namespace torch::optim {
class Optimizer;
}

namespace lowmem::optim {

/// Averages tensors in place over the workers of a data-parallel run (every
/// worker passes the same shapes in the same order).
using StatisticsSync = std::function<void(std::vector<at::Tensor>&)>;
/// ZeRO: whether this worker owns (keeps the state of and steps) a parameter.
using Ownership = std::function<bool(const at::Tensor&)>;

class OptimizerExtras {
 public:
  virtual ~OptimizerExtras() = default;
  /// Every state tensor the optimizer holds (moments, factors, projections).
  virtual std::vector<at::Tensor> state_tensors() const = 0;
  /// Called by the trainer before each forward pass of a training step
  /// (e.g. SINGD/KFAC arm their curvature taps on refresh steps).
  virtual void before_forward() {}
  /// Forgets every state the optimizer keeps for `param` (ZeRO: a parameter
  /// another worker updates), so that the next update of `param` starts
  /// from fresh state. Returns false if the optimizer keeps its
  /// per-parameter state in torch::optim's state() map only (the default):
  /// optim::drop_state then erases it there.
  virtual bool forget_state(const at::Tensor& param) {
    (void)param;
    return false;
  }
  /// ZeRO: `param` had a gradient this step but another worker owns it: that
  /// worker stepped it and its new value has arrived by broadcast. An
  /// optimizer whose schedule changes more than its own state (the
  /// projected adapter rebases the frozen weight every update_proj_gap
  /// steps) advances that schedule here, so every worker keeps the same
  /// model. Default: nothing.
  virtual void stepped_elsewhere(const at::Tensor& param) { (void)param; }
  /// Data-parallel training: optimizers that compute from each worker's own
  /// rows outside the trainer's gradient sync (SINGD, KFAC: the Kronecker
  /// factors' curvature statistics; GaLore's hook modes: the gradients they
  /// consume inside backward; the projected adapter: the frozen weight's
  /// gradient of an svd refresh) pass those tensors to average_statistics()
  /// before using them, which averages them with `sync`, so every worker
  /// updates its state from the whole batch, as one process would. Others
  /// never call it (the trainer's gradient averaging is all they need).
  void set_statistics_sync(StatisticsSync sync) {
    statistics_sync_ = std::move(sync);
  }
  /// ZeRO: which parameters this worker owns. The trainer's sync drops the
  /// gradients of other workers' parameters, which is all most optimizers
  /// need; an optimizer that takes gradients the sync never sees (GaLore's
  /// hook modes inside backward, the projected adapter's svd/rsvd refresh)
  /// asks owns() before it steps a parameter or keeps state for it.
  void set_ownership(Ownership owns) { ownership_ = std::move(owns); }
  /// ZeRO: the parameters this optimizer updated in its last step although
  /// the trainer's gradient sync saw no gradient of theirs (GaLore's hook
  /// modes: every parameter; the projected adapter: A of each layer rebased
  /// from the full gradient, which on the first refresh had none). The same
  /// list on every worker: their owners broadcast them, as every parameter
  /// that had a gradient. Default: none.
  virtual std::vector<at::Tensor> updated_outside_sync() const { return {}; }

 protected:
  /// Averages `ts` in place over the workers with the set_statistics_sync
  /// hook; nothing outside data-parallel training.
  void average_statistics(std::vector<at::Tensor> ts) const {
    if (statistics_sync_) statistics_sync_(ts);
  }
  /// Whether this worker steps `param` (set_ownership; true without ZeRO).
  bool owns(const at::Tensor& param) const {
    return !ownership_ || ownership_(param);
  }

 private:
  StatisticsSync statistics_sync_;
  Ownership ownership_;
};

/// State tensors of any optimizer: OptimizerExtras, or torch's SGD, Adam,
/// AdamW, Adagrad and RMSprop states.
std::vector<at::Tensor> state_tensors(const torch::optim::Optimizer& opt);
/// Distinct-storage bytes of state_tensors(opt).
int64_t state_bytes(const torch::optim::Optimizer& opt);
/// Calls before_forward() if `opt` implements OptimizerExtras.
void before_forward(torch::optim::Optimizer& opt);
/// Forgets `param`'s state in `opt` (OptimizerExtras::forget_state, else
/// its entry in opt.state(); nothing if it has none).
void drop_state(torch::optim::Optimizer& opt, const at::Tensor& param);
/// stepped_elsewhere(param) if `opt` implements OptimizerExtras.
void stepped_elsewhere(torch::optim::Optimizer& opt, const at::Tensor& param);
/// set_statistics_sync(sync) if `opt` implements OptimizerExtras.
void set_statistics_sync(torch::optim::Optimizer& opt, StatisticsSync sync);
/// set_ownership(owns) if `opt` implements OptimizerExtras.
void set_ownership(torch::optim::Optimizer& opt, Ownership owns);
/// updated_outside_sync() if `opt` implements OptimizerExtras, else none.
std::vector<at::Tensor> updated_outside_sync(
    const torch::optim::Optimizer& opt);
/// Drops the .grad of every parameter of `opt` (sets it to an undefined
/// tensor), freeing gradient memory between steps. Use it instead of
/// zero_grad(): LibTorch 1.x's zero_grad() zeroes the gradients in place (they
/// stay allocated) while 2.x's sets them to none, so memory measurements and
/// peaks would depend on the LibTorch version.
void clear_grads(torch::optim::Optimizer& opt);

}  // namespace lowmem::optim
