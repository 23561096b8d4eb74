// Training driver of the adapter form (projection/projected_linear.h), the dual
// of optim::GaLore (arXiv 2502.13811): the inner optimizer steps each layer's
// A (and the plain params) directly; every update_proj_gap steps each layer is
// merged and rebased (W0 += P.A, A = 0, new P) with the inner state of A kept,
// reset or re-projected exactly as GaLore treats its proxy. GaLore's scale
// multiplies A's update. With weight decay 0 and an inner optimizer that reads
// only its gradient, the weights equal GaLore's at every step (tested).
// Also: conversion between the two forms mid-run.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/optim/optimizer.h>

#include <memory>
#include <vector>

#include "lowmem/optim/extras.h"
#include "lowmem/optim/galore.h"
#include "lowmem/projection/projected_linear.h"

namespace lowmem::optim {

class ProjectedAdapterOptimizer : public torch::optim::Optimizer,
                                  public OptimizerExtras {
 public:
  /// `layers`: the adapters (their A go to the inner optimizer's projected
  /// group); `plain`: other trainable params. Groups as in GaLore: {plain,
  /// adapters}. Uses options.state_on_refresh; weight_decay must be 0 (the
  /// frozen W0 cannot decay; the inner optimizer's decay acts on A) and
  /// layerwise false (no full gradients exist to free).
  ProjectedAdapterOptimizer(
      std::vector<std::shared_ptr<projection::ProjectedLinear>> layers,
      std::vector<at::Tensor> plain, const InnerFactory& make_inner,
      GaLoreOptions options = {});

  /// On refresh steps: sketches rebase now; svd/rsvd arm full-gradient
  /// capture for this step's backward. Call before each forward pass.
  void before_forward() override;
  /// svd/rsvd refresh: rebase from the captured gradient and feed A the
  /// gradient in the new basis; then the inner step, with A's update scaled.
  /// Data-parallel (set_statistics_sync): the captured full gradients of W0
  /// (which the trainer's sync does not cover: W0 is frozen) are averaged
  /// before the rebase, so every worker draws the same basis. Under ZeRO
  /// every worker rebases and only A's owner steps it (set_ownership).
  at::Tensor step(LossClosure closure = nullptr) override;
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;
  /// Inner state plus the stored bases.
  std::vector<at::Tensor> state_tensors() const override;
  /// ZeRO: drops the inner state of `param`; its layer's step counter and
  /// basis stay (every worker rebases every layer).
  bool forget_state(const at::Tensor& param) override;
  /// ZeRO: counts the step another worker took on layer i's A, so this
  /// worker merges and rebases that layer on the same steps (sketch bases
  /// are drawn from (seed, layer, refresh index): the same on every worker).
  void stepped_elsewhere(const at::Tensor& param) override;
  /// A of each layer rebased from a captured gradient in the last step():
  /// stepped (by its owner) from the averaged full gradient, also on the
  /// layer's first refresh, when A was not yet in the graph.
  std::vector<at::Tensor> updated_outside_sync() const override;

  torch::optim::Optimizer& inner() { return *inner_; }
  size_t num_layers() const { return layers_.size(); }
  projection::ProjectedLinear& layer(size_t i) { return *layers_.at(i); }
  int64_t step_count(size_t i) const { return steps_.at(i); }
  const GaLoreOptions& options() const { return options_; }

 private:
  friend void transfer_state(GaLore& from, ProjectedAdapterOptimizer& to);
  friend void transfer_state(ProjectedAdapterOptimizer& from, GaLore& to);
  void rebase(size_t i, const at::Tensor& full_grad);
  void sync_lr();

  GaLoreOptions options_;
  std::vector<std::shared_ptr<projection::ProjectedLinear>> layers_;
  std::vector<int64_t> steps_;
  std::vector<bool> rebased_;  // rebased in this step's before_forward
  std::vector<at::Tensor> refreshed_;  // A rebased from a gradient, last step
  std::unique_ptr<torch::optim::Optimizer> inner_;
  std::vector<std::pair<size_t, size_t>> group_map_;
};

/// GaLore form -> adapter form, mid-run. `to` must be built over adapters
/// injected into the same model (adapter i wraps GaLore's projected param i,
/// e.g. GaLore::route + projection::inject_projected, both in slot order) with
/// the same plain params and the same inner optimizer type. Copies bases,
/// step counters and the inner state (proxy i -> A_i; plain -> plain); A = 0.
void transfer_state(GaLore& from, ProjectedAdapterOptimizer& to);
/// Adapter form -> GaLore form: merges every A into W0 (A = 0) and copies
/// bases, counters and inner state back. `to`'s projected param i must be
/// adapter i's base weight (give it requires_grad back before building `to`).
void transfer_state(ProjectedAdapterOptimizer& from, GaLore& to);

}  // namespace lowmem::optim
