// GaLore as a gradient transformation around ANY inner optimizer (arXiv
// 2403.03507; duality view: arXiv 2502.13811). Each routed m x n param gets a
// projection::Projector; its gradient is projected to r dims, the inner
// optimizer steps a low-rank proxy tensor, and the proxy's update is projected
// back (times scale) onto the param. Deviations from galore_torch/adamw.py:
// the inner optimizer is pluggable (use GaLoreAdamW for the official numbers),
// the inner state may be reset or re-projected on a basis refresh (official:
// kept), gradient accumulation accumulates projected gradients, and the
// layer-wise mode keeps accumulation working (official: silently broken), and
// a parameter with more than 2 dims is projected as the matrix [size(0),
// rest] (official: 2-D only; GaLoreProjectorTensor's Tucker form is not
// implemented). Data-parallel hook modes average the gradients inside the
// hooks (set_statistics_sync); the official code has no hook-mode DDP.
// Under ZeRO the hook modes keep every basis on every worker (each worker
// projects each gradient, so only r x n values are averaged) and step only
// the params the worker owns (set_ownership): the inner state is sharded.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/optim/optimizer.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "lowmem/optim/extras.h"
#include "lowmem/projection/projector.h"

namespace torch::autograd {
struct Node;
}
namespace torch::nn {
class Module;
}

namespace lowmem::optim {

class GaLore;
class ProjectedAdapterOptimizer;
void transfer_state(GaLore& from, ProjectedAdapterOptimizer& to);
void transfer_state(ProjectedAdapterOptimizer& from, GaLore& to);

/// Builds the inner optimizer over the groups it is given (plain params
/// first, then the low-rank proxies; empty groups are left out).
using InnerFactory = std::function<std::unique_ptr<torch::optim::Optimizer>(
    std::vector<torch::optim::OptimizerParamGroup>)>;

struct GaLoreOptions {
  /// Rank, refresh gap T, scale, proj_type, basis (see projector.h).
  TORCH_ARG(projection::ProjectorOptions, projector);
  /// Decoupled decay on the FULL weight after the update, p -= lr*wd*p with
  /// the inner group's lr (galore_torch/adamw.py order; default 0.0 as there).
  /// The inner optimizer's own weight decay acts on the zeroed proxy, i.e. not
  /// at all, for projected params.
  TORCH_ARG(double, weight_decay) = 0.0;
  /// Inner state on a basis refresh: keep (official GaLore), reset, or
  /// reproject (moments rotated into the new basis; squares by C o C).
  TORCH_ARG(std::string, state_on_refresh) = "keep";
  /// Update each param from its gradient hook during backward and free its
  /// gradient (official "per-layer weight update", §3.5); step() is a no-op.
  TORCH_ARG(bool, layerwise) = false;
  /// Micro-batches per update. > 1 (or layerwise) installs gradient hooks that
  /// project each micro-batch gradient and free the full one; the basis of a
  /// refresh step comes from the first micro-batch of that step.
  TORCH_ARG(int64_t, accumulation_steps) = 1;

 public:
  template <class V>
  void for_each_field(V&& v) {
    v("weight_decay", weight_decay_);
    v("state_on_refresh", state_on_refresh_);
    v("layerwise", layerwise_);
    v("accumulation_steps", accumulation_steps_);
  }
};

/// Throws "[galore] ..." naming the bad value (validates projector too).
void validate(const GaLoreOptions& options);

/// Applies `policy` (keep | reset | reproject) to the inner state of the
/// low-rank tensor `slot` after its projector moved from bases (old_p, old_q)
/// to `now`'s. Shared by GaLore and the adapter form. reproject supports the
/// states of torch SGD/Adam/AdamW, GaLoreAdamW and lowmem CAME.
void on_basis_change(torch::optim::Optimizer& inner, const at::Tensor& slot,
                     const std::string& policy, const at::Tensor& old_p,
                     const at::Tensor& old_q,
                     const projection::Projector& now);

/// Lr of the inner group's options that back the wrapper's group.
struct GaLoreGroupOptions
    : torch::optim::OptimizerCloneableOptions<GaLoreGroupOptions> {
  explicit GaLoreGroupOptions(double lr = 0.0) : lr_(lr) {}
  TORCH_ARG(double, lr);

 public:
  double get_lr() const override { return lr_; }
  void set_lr(const double lr) override { lr_ = lr; }
};

class GaLore : public torch::optim::Optimizer, public OptimizerExtras {
 public:
  /// `projected`: params of 2+ dims updated in the projected space (any
  /// tensors: chosen by name or regex with train::route_parameters, no slot
  /// needed); `plain`: params
  /// the inner optimizer updates directly. The wrapper's groups are
  /// {plain, projected} (non-empty ones) and their lr is copied into the
  /// matching inner group before every update (LR schedulers work on either).
  GaLore(std::vector<at::Tensor> projected, std::vector<at::Tensor> plain,
         const InnerFactory& make_inner, GaLoreOptions options = {});
  ~GaLore() override;

  /// Non-layerwise: projects the gradients (or takes the accumulated
  /// projected ones), steps the inner optimizer, projects back and applies.
  at::Tensor step(LossClosure closure = nullptr) override;
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;
  /// Inner state, bases, low-rank accumulators and proxies.
  std::vector<at::Tensor> state_tensors() const override;
  /// A projected param: its basis, step count and the inner state of its
  /// proxy (hook modes: the inner state only; every worker keeps every
  /// basis); a plain one: its inner state (ZeRO, train/data_parallel.h).
  bool forget_state(const at::Tensor& param) override;
  /// Hook modes: every param (their gradients never reach the trainer's
  /// sync; under ZeRO each worker steps only the params it owns).
  std::vector<at::Tensor> updated_outside_sync() const override;
  /// Whether the layer-wise or accumulation hooks update the params (then
  /// every worker keeps every basis under ZeRO).
  bool hook_modes() const { return hooks_; }

  const GaLoreOptions& options() const { return options_; }
  torch::optim::Optimizer& inner() { return *inner_; }
  size_t num_projected() const { return slots_.size(); }
  const projection::Projector& projector(size_t i) const;
  /// Updates applied to projected param i.
  int64_t step_count(size_t i) const;
  /// The inner optimizer's tensor for projected param i (its state key).
  const at::Tensor& proxy(size_t i) const;
  /// Largest number of full weight gradients alive at once inside a hook
  /// (hook modes); 0 if no hook ran.
  int64_t max_live_full_grads() const { return max_live_full_grads_; }

  /// Splits a module's trainable params: weights of SlotModule linear slots
  /// (2-D) -> projected, everything else -> plain.
  static std::pair<std::vector<at::Tensor>, std::vector<at::Tensor>> route(
      torch::nn::Module& module);

 private:
  struct Slot;
  struct Plain;
  friend struct GaLoreHook;
  friend void transfer_state(GaLore& from, ProjectedAdapterOptimizer& to);
  friend void transfer_state(ProjectedAdapterOptimizer& from, GaLore& to);
  /// Data-parallel hook modes (set_statistics_sync): the gradients are
  /// consumed here, inside backward, where the trainer's gradient sync never
  /// sees them, so they are averaged here: a full gradient that refreshes an
  /// svd/rsvd basis, then the projected (r x n) gradients and the plain
  /// params' gradients before each update (accumulation: in step()).
  void on_grad(bool projected, size_t i);
  void prepare(size_t i, const at::Tensor& full_grad);
  void load_proxy(size_t i, const at::Tensor& low);
  void apply(size_t i);
  /// The end of an update of projected param i (its step count, the freed
  /// accumulator and proxy), also when another worker stepped it (ZeRO).
  void advance(size_t i);
  void sync_lr();
  void update_one(bool projected, size_t i);

  GaLoreOptions options_;
  std::unique_ptr<torch::optim::Optimizer> inner_;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::vector<std::unique_ptr<Plain>> plains_;
  std::vector<std::pair<size_t, size_t>> group_map_;  // wrapper g -> inner g
  bool hooks_ = false;
  int64_t max_live_full_grads_ = 0;
};

}  // namespace lowmem::optim
