#include "method_wiring.h"

#include <torch/nn/module.h>

#include <sstream>

#include "lowmem/nn/slot_module.h"
#include "lowmem/train/fields.h"

namespace lowmem::train::wiring {

std::shared_ptr<optim::GaLore> make_galore(
    std::vector<at::Tensor> projected, std::vector<at::Tensor> plain,
    const optim::InnerFactory& inner, const optim::GaLoreOptions& options) {
  for (const auto& p : projected) {
    if (p.dim() < 2) {
      std::ostringstream s;
      s << "method galore projects parameters of 2 or more dims, but one of "
           "shape "
        << p.sizes() << " is routed to it";
      throw ConfigError(s.str());
    }
  }
  return std::make_shared<optim::GaLore>(std::move(projected),
                                         std::move(plain), inner, options);
}

std::vector<at::Tensor> ProjectedAdapters::a() const {
  std::vector<at::Tensor> out;
  out.reserve(layers.size());
  for (const auto& l : layers) {
    out.push_back(l->a());
  }
  return out;
}

ProjectedAdapters inject_projected_adapters(
    torch::nn::Module& model, const adapters::TargetOptions& targets,
    const projection::ProjectorOptions& options, bool freeze_rest) {
  std::vector<nn::SlotRef> refs;
  if (targets.target_modules().empty() && targets.target_regex().empty()) {
    for (const auto& ref : nn::find_slots(model)) {
      if (!adapters::in_modules_to_save(ref.path, targets)) {
        refs.push_back(ref);
      }
    }
    if (refs.empty()) {
      throw ConfigError("method projected-adapter: the model has no linear "
                        "slot to put an adapter into");
    }
  } else {
    refs = adapters::find_targets(model, targets);
  }
  if (freeze_rest) {
    for (const auto& item : model.named_parameters(/*recurse=*/true)) {
      item.value().set_requires_grad(
          adapters::in_modules_to_save(item.key(), targets));
    }
  }
  ProjectedAdapters out;
  int64_t stream = 0;
  for (const auto& ref : refs) {
    auto layer = std::make_shared<projection::ProjectedLinear>(
        ref.layer(), options, stream++);
    ref.replace(layer);
    if (freeze_rest && layer->bias().defined()) {
      layer->bias().set_requires_grad(false);
    }
    out.layers.push_back(layer);
  }
  return out;
}

std::shared_ptr<optim::ProjectedAdapterOptimizer>
make_projected_adapter_optimizer(const ProjectedAdapters& adapters,
                                 std::vector<at::Tensor> plain,
                                 const optim::InnerFactory& inner,
                                 const optim::GaLoreOptions& options) {
  return std::make_shared<optim::ProjectedAdapterOptimizer>(
      adapters.layers, std::move(plain), inner, options);
}

}  // namespace lowmem::train::wiring
