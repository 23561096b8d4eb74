#include "lowmem/optim/kronecker.h"

#include "kronecker_detail.h"
#include "lowmem/core/check.h"

namespace lowmem::optim {

KroneckerOptimizer::KroneckerOptimizer(
    std::vector<nn::CurvatureLayer> layers,
    std::unique_ptr<torch::optim::OptimizerOptions> defaults,
    const std::string& name)
    : torch::optim::Optimizer(detail::layer_param_groups(layers),
                              std::move(defaults)),
      layers_(std::move(layers)) {
  LOWMEM_CHECK(!layers_.empty(), name, " no Linear/Conv2d layer to train");
}

KroneckerOptimizer::~KroneckerOptimizer() {
  detail::detach_taps(layers_, taps_);
}

void KroneckerOptimizer::before_forward() { arm_taps(); }

void KroneckerOptimizer::arm_taps() {
  detail::arm_taps(taps_, steps_, refresh_period());
}

}  // namespace lowmem::optim
