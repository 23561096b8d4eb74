// What SINGD (optim/singd.h) and KFAC (optim/kfac.h) share: the Linear/Conv2d
// layers they precondition with Kronecker factors (a layer's weight and bias
// in one natural gradient), a curvature tap on each layer armed on refresh
// steps (every T updates), and the update count. No paper of its own.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/optim/optimizer.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "lowmem/nn/curvature_tap.h"
#include "lowmem/optim/extras.h"

namespace lowmem::optim {

class KroneckerOptimizer : public torch::optim::Optimizer,
                           public OptimizerExtras {
 public:
  /// Detaches the taps from the layers that still hold them.
  ~KroneckerOptimizer() override;
  KroneckerOptimizer(const KroneckerOptimizer&) = delete;
  KroneckerOptimizer& operator=(const KroneckerOptimizer&) = delete;

  /// Arms the taps iff this step refreshes the preconditioner.
  void before_forward() override;
  /// Updates done so far (official `steps`).
  int64_t steps() const { return steps_; }
  /// The preconditioned layers, in parameter order.
  const std::vector<nn::CurvatureLayer>& layers() const { return layers_; }
  /// Bytes of the preconditioner over all layers.
  virtual int64_t preconditioner_bytes() const = 0;

 protected:
  /// One param group: every layer's weight, then its bias if any (the
  /// official SINGD order). Throws "<name> no Linear/Conv2d layer to
  /// train" for no layers.
  KroneckerOptimizer(std::vector<nn::CurvatureLayer> layers,
                     std::unique_ptr<torch::optim::OptimizerOptions> defaults,
                     const std::string& name);
  /// The options' refresh period T.
  virtual int64_t refresh_period() const = 0;
  /// Arms the taps for the coming step (steps_ % T == 0).
  void arm_taps();

  std::vector<nn::CurvatureLayer> layers_;
  std::vector<std::shared_ptr<nn::KroneckerTap>> taps_;
  int64_t steps_ = 0;
};

}  // namespace lowmem::optim
