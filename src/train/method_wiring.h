// Internal: how the projection methods (GaLore, the one-sided projected
// adapter) turn a model into optimizers. Shared by `lowmem train`
// (components.cpp) and `lowmem compare` (compare_model_methods.cpp) so the
// wiring is written once.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/optim/optimizer.h>

#include <memory>
#include <string>
#include <vector>

#include "lowmem/adapters/inject.h"
#include "lowmem/optim/galore.h"
#include "lowmem/optim/galore_adapter.h"
#include "lowmem/projection/projected_linear.h"

namespace lowmem::train::wiring {

/// An InnerFactory that builds Opt(groups, options).
template <class Opt, class Options>
optim::InnerFactory inner_factory(Options options) {
  return [options](std::vector<torch::optim::OptimizerParamGroup> groups) {
    return std::unique_ptr<torch::optim::Optimizer>(
        new Opt(std::move(groups), options));
  };
}

/// GaLore over the 2-D `projected` params and the `plain` ones. A projected
/// param that is not 2-D is a ConfigError naming its shape.
std::shared_ptr<optim::GaLore> make_galore(
    std::vector<at::Tensor> projected, std::vector<at::Tensor> plain,
    const optim::InnerFactory& inner, const optim::GaLoreOptions& options);

/// Projected adapters injected into a model (in slot path order).
struct ProjectedAdapters {
  std::vector<std::shared_ptr<projection::ProjectedLinear>> layers;
  /// The trainable factors A, one per layer.
  std::vector<at::Tensor> a() const;
};

/// Puts an projection::ProjectedLinear into every slot `targets` selects (every
/// slot outside modules_to_save when it names no target), stream = position,
/// as projection::inject_projected. The wrapped weights are frozen. With
/// `freeze_rest` every other parameter is frozen too (adapter biases
/// included) except those of targets.modules_to_save: the fine-tuning form.
/// Without it the rest keeps training: GaLore's dual.
ProjectedAdapters inject_projected_adapters(
    torch::nn::Module& model, const adapters::TargetOptions& targets,
    const projection::ProjectorOptions& options, bool freeze_rest);

/// The adapter-form driver over `adapters` and the `plain` params.
std::shared_ptr<optim::ProjectedAdapterOptimizer>
make_projected_adapter_optimizer(const ProjectedAdapters& adapters,
                                 std::vector<at::Tensor> plain,
                                 const optim::InnerFactory& inner,
                                 const optim::GaLoreOptions& options);

}  // namespace lowmem::train::wiring
