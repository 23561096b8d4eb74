// Internal: the table of models, data sources, methods and optimizers the
// configuration knows, with their option sections. One row per component;
// adding one touches only components.cpp.
#pragma once

#include <string>
#include <vector>

#include "lowmem/train/fields.h"

namespace lowmem::train::detail {

struct Component {
  std::string kind;     // "model", "data", "method", "optimizer"
  std::string name;     // value of the top-level key ("galore")
  std::string section;  // its option section ("" if none)
};

const std::vector<Component>& components();
/// Fresh sections with defaults, one per distinct Component::section.
std::vector<Section> make_sections();
/// The section of component `name` of `kind` ("" if none or unknown).
std::string section_of(const std::string& kind, const std::string& name);
std::vector<std::string> names_of(const std::string& kind);

}  // namespace lowmem::train::detail

#include <memory>

#include "lowmem/data/batch.h"
#include "lowmem/train/config.h"
#include "lowmem/train/routing.h"
#include "method_wiring.h"

namespace torch::optim {
class Optimizer;
}
namespace lowmem::models {
class Model;
}
namespace lowmem::adapters {
class AdapterModel;
}

namespace lowmem::train::detail {

struct BuiltData {
  std::shared_ptr<data::BatchSource> train, eval;
  std::string unit;     // "tokens" | "samples"
  std::string summary;
  double baseline = 0.0;
  int64_t n_classes = 0;  // images
};

BuiltData build_data(const Config& c);
std::shared_ptr<models::Model> build_model(const Config& c,
                                           const BuiltData& data);
/// What apply_method put into the model.
struct AppliedMethod {
  /// lora, lotr, snell: the injected adapters (else nullptr).
  std::shared_ptr<adapters::AdapterModel> adapter;
  /// projected-adapter: the ProjectedLinear layers (else empty).
  wiring::ProjectedAdapters projected;
};
/// Applies the method (adapters, projected adapters) to the model; freezes
/// what the method freezes.
AppliedMethod apply_method(const Config& c,
                           const std::shared_ptr<models::Model>& model);
/// Slot names: the main optimizer's ("galore" for method galore,
/// "projected_adapter" for the projected adapter, else the optimizer's name) and the aux optimizer's (suffixed "_aux" on a clash).
std::string main_target(const Config& c);
std::string aux_target(const Config& c);
/// The routing rules for this configuration (route=auto picks by method and
/// optimizer).
std::vector<RouteRule> routing_rules(const Config& c, models::Model& model,
                                     const AppliedMethod& applied);
/// singd or kfac: optimizers that precondition whole layers (main only).
bool is_curvature_optimizer(const std::string& name);
/// Builds optimizer `name` for `route`'s parameters (wrapping it in the
/// method's gradient transform where the method is one, e.g. galore).
std::shared_ptr<torch::optim::Optimizer> build_optimizer(
    const Config& c, const std::string& name, bool main, const Route& route,
    models::Model& model, const AppliedMethod& applied);

}  // namespace lowmem::train::detail
