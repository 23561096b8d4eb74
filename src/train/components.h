// Internal: what lowmem train can build by name, as tables of rows. Models
// and data sources are rows here (model_kinds(), data_kinds() in
// components.cpp); optimizers come from the optimizer registry
// (optim/registry.h) and adapter methods from the adapter registry
// (adapters/registry.h); the methods galore and projected-adapter wrap an
// optimizer. Every option section, every `known_*` list and the CLI's help
// are generated from these rows: adding a model or data source is one row
// (name, section, builder) in components.cpp.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "lowmem/train/fields.h"

namespace lowmem::train::detail {

struct Component {
  std::string kind;     // "model", "data", "method", "optimizer"
  std::string name;     // value of the top-level key ("galore")
  std::string section;  // its option section ("" if none)
};

/// Every component, generated from the rows and registries.
std::vector<Component> components();
/// Fresh sections with defaults, one per distinct Component::section.
std::vector<Section> make_sections();
/// The section of component `name` of `kind` ("" if none or unknown).
std::string section_of(const std::string& kind, const std::string& name);
std::vector<std::string> names_of(const std::string& kind);

}  // namespace lowmem::train::detail

#include <memory>

#include "lowmem/adapters/inject.h"
#include "lowmem/data/batch.h"
#include "lowmem/optim/torch_sgd.h"
#include "lowmem/train/config.h"
#include "lowmem/train/plan.h"
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

// Option sections of the methods that wrap an optimizer. Here, not in
// components.cpp, because `lowmem compare` applies the same keys to its own
// defaults (compare_model_methods.cpp).

// torch SGD's section (optim/torch_sgd.h).
using SgdSection = optim::TorchSgdOptions;

// GaLore (method "galore"): projector options + the wrapper's options, and
// which parameters it projects: `targets`, an ECMAScript regex searched in
// the parameter names (any parameter of 2+ dims that matches, slot or not;
// like HF's optim_target_modules), or "" for every 2-D weight but the
// embeddings (route=matrices). accumulation_steps is not a key: it always
// equals the run's accum_steps.
struct GaloreSection {
  optim::GaLoreOptions g;
  std::string targets;
  template <class V>
  void for_each_field(V&& v) {
    v("targets", targets);
    g.projector().for_each_field(v);
    g.for_each_field([&v](const char* name, auto& ref) {
      if (std::string(name) != "accumulation_steps") {
        v(name, ref);
      }
    });
  }
};

// The projected adapter (method "projected-adapter", GaLore's dual): the
// projector options, the inner state policy on a rebase, and whether the rest
// of the model is frozen. The driver's weight_decay must be 0 and layerwise
// false (optim/galore_adapter.h), so they are not keys.
struct ProjectedAdapterSection {
  projection::ProjectorOptions p;
  std::string state_on_refresh = "keep";  // GaLoreOptions default (official)
  // lowmem: false = GaLore's dual (everything else trains with the aux
  // optimizer); true = fine-tuning (only the adapters and, for the ViT, the
  // head train).
  bool freeze_rest = false;
  template <class V>
  void for_each_field(V&& v) {
    p.for_each_field(v);
    v("state_on_refresh", state_on_refresh);
    v("freeze_rest", freeze_rest);
  }
};

// Data-parallel options (section "dist", docs/distributed.md).
struct DistSection {
  // 0: every worker keeps all optimizer state (replicated); 1: ZeRO-1, each
  // worker keeps the state of its own parameters; 2: ZeRO-2, and receives
  // only its own parameters' gradients (dist/zero.h).
  int64_t zero_stage = 0;
  // ZeRO-2: reduce each gradient bucket to its owners during backward and
  // free the other ranks' gradients at once (DeepSpeed's overlap_comm);
  // false: after backward.
  bool zero_overlap = true;
  template <class V>
  void for_each_field(V&& v) {
    v("zero_stage", zero_stage);
    v("zero_overlap", zero_overlap);
  }
};
/// The dist section's zero_stage.
int64_t zero_stage(const Config& c);
/// The dist section's zero_overlap.
bool zero_overlap(const Config& c);

struct BuiltData {
  std::shared_ptr<data::BatchSource> train, eval;
  std::string unit;     // "tokens" | "samples"
  std::string summary;
  double baseline = 0.0;
  int64_t n_classes = 0;  // images
  /// Token ids the data uses (a real tokenizer's vocab_size; 0: bytes or
  /// images). Language models grow their vocabulary to it.
  int64_t vocab_size = 0;
};

/// A data source lowmem train knows: `data: <name>`, options in section
/// `section`, built by `build` (which checks that the model fits it).
struct DataKind {
  std::string name;
  std::string section;
  std::function<Section()> options;
  std::function<BuiltData(const Config&)> build;
  /// Classes the data has, without loading it (0: not a classification
  /// source); models sized by the data (vit, mlp) read it.
  std::function<int64_t(const Config&)> classes;
  /// Token ids the data uses, without loading it (0 or unset: not a
  /// tokenized source).
  std::function<int64_t(const Config&)> vocab;
};
/// A model as lowmem plan sees it (ModelKind::plan).
struct PlannedModel {
  std::shared_ptr<models::Model> model;  // on the meta device
  int64_t seq = 0;
  ActivationModel activations;
};
/// A model: `model: <name>`, options in section `section`.
struct ModelKind {
  std::string name;
  std::string section;
  std::function<Section()> options;
  std::function<std::shared_ptr<models::Model>(const Config&, const BuiltData&)>
      build;
  /// lowmem plan (train/plan.h): the model with `dtype` weights (nullopt:
  /// the configuration's, e.g. llama.dtype) on the meta device (nothing
  /// allocated), the sequence length it trains on (`seq`, or its own when 0)
  /// and its activation bytes for `batch` rows; null for models without an
  /// activation model yet.
  std::function<PlannedModel(const Config&,
                             c10::optional<c10::ScalarType> dtype,
                             int64_t batch, int64_t seq)>
      plan;
};
const std::vector<DataKind>& data_kinds();
const std::vector<ModelKind>& model_kinds();

BuiltData build_data(const Config& c);
/// What a model needs to know about the data without loading it (classes).
BuiltData data_shape(const Config& c);
std::shared_ptr<models::Model> build_model(const Config& c,
                                           const BuiltData& data);
/// The adapter targets of the method (TargetOptions: --targets, else the
/// model's default projections; modules_to_save for a classifier head);
/// `model` is read only for the mlp's default targets.
adapters::TargetOptions method_targets(
    const Config& c, const std::shared_ptr<torch::nn::Module>& model);
/// base_dtype nf4 on a model built from scratch (no `init`): which slots
/// (full module paths) to quantize while the model is built, layer by layer;
/// empty when the choice needs the built model or nothing is quantized at
/// build (apply_method then quantizes what is left).
std::function<bool(const std::string&)> nf4_pick_at_build(const Config& c);
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
                           const std::shared_ptr<torch::nn::Module>& model);
/// Slot names: the main optimizer's ("galore" for method galore,
/// "projected_adapter" for the projected adapter, else the optimizer's name) and the aux optimizer's (suffixed "_aux" on a clash).
std::string main_target(const Config& c);
std::string aux_target(const Config& c);
/// The routing rules for this configuration (route=auto picks by method and
/// optimizer).
std::vector<RouteRule> routing_rules(const Config& c, torch::nn::Module& model,
                                     const AppliedMethod& applied);
/// singd or kfac: optimizers that precondition whole layers (main only).
bool is_curvature_optimizer(const std::string& name);
/// Builds optimizer `name` for `route`'s parameters (wrapping it in the
/// method's gradient transform where the method is one, e.g. galore).
std::shared_ptr<torch::optim::Optimizer> build_optimizer(
    const Config& c, const std::string& name, bool main, const Route& route,
    torch::nn::Module& model, const AppliedMethod& applied);

}  // namespace lowmem::train::detail
