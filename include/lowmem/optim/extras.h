// What the trainer, memory accounting and checkpoints need from an optimizer
// beyond torch::optim::Optimizer. lowmem's optimizers implement
// OptimizerExtras; torch's own (SGD, Adam, AdamW, ...) are handled by the free
// functions below.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace torch::optim {
class Optimizer;
}

namespace lowmem::optim {

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
/// Drops the .grad of every parameter of `opt` (sets it to an undefined
/// tensor), freeing gradient memory between steps. Use it instead of
/// zero_grad(): LibTorch 1.x's zero_grad() zeroes the gradients in place (they
/// stay allocated) while 2.x's sets them to none, so memory measurements and
/// peaks would depend on the LibTorch version.
void clear_grads(torch::optim::Optimizer& opt);

}  // namespace lowmem::optim
