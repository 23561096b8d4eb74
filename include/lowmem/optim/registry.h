// The optimizer registry: one row per optimizer lowmem builds by name. A row
// holds the name (the value of `optimizer` / `aux_optimizer` in lowmem train,
// and the name of its option section, whose fields are the CLI flags and YAML
// keys "<name>.<field>"), the options with their defaults, the factory, and,
// for optimizers whose state and options are not FieldState / FieldOptions
// (torch's own), the roles of their state tensors and their weight decay
// (optim/state_roles.h; GaLore re-projects state and checks decay through
// them). lowmem train's option sections and lists, lowmem compare's `--set`
// keys and GaLore's generic state handling all read this table.
//
// Adding an optimizer: its own files, one row in src/optim/registry.cpp (or
// register_optimizer() from outside the library, e.g. in a test), its tests
// and docs; nothing else.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/optim/optimizer.h>

#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "lowmem/core/fields.h"
#include "lowmem/nn/curvature_tap.h"
#include "lowmem/optim/state_roles.h"

namespace lowmem::optim {

using ParamGroups = std::vector<torch::optim::OptimizerParamGroup>;
using OptimizerPtr = std::unique_ptr<torch::optim::Optimizer>;

struct OptimizerKind {
  /// "came": the config value and the option section's name.
  std::string name;
  /// One line for --help: "CAME (optim/came.h)".
  std::string help;
  /// A section named `name` holding the default options.
  std::function<Section()> options;
  /// Builds the optimizer over param groups from a section made by
  /// `options` (values possibly changed); null for whole-layer optimizers.
  std::function<OptimizerPtr(ParamGroups, const Section&)> make;
  /// Whole-layer optimizers (SINGD, KFAC): built over the Linear/Conv2d
  /// layers whose weights they own; null for the others.
  std::function<OptimizerPtr(std::vector<nn::CurvatureLayer>, const Section&)>
      make_for_layers;
  /// State roles of a state type that is not a FieldState (else null).
  StateVisitor visit_state;
  /// Weight decay of options that are not FieldOptions (else null).
  DecayReader weight_decay;
  /// Bytes of the state the optimizer keeps for one parameter shaped, typed
  /// and placed like `param` (a meta tensor is enough), under the options of
  /// a section made by `options`. lowmem plan (train/plan.h) sizes optimizer
  /// state with it. param_group_optimizer fills it from the optimizer's own
  /// init_state (PerParamOptimizer::initial_state_bytes), so the size
  /// follows the code; null where unknown (SINGD, KFAC: their factors are per
  /// layer), and lowmem plan refuses such an optimizer.
  std::function<int64_t(const at::Tensor& param, const Section&)> state_bytes;
};

/// Every registered optimizer, built-in rows first, in registration order.
const std::vector<OptimizerKind>& optimizers();
/// The row called `name`, or nullptr.
const OptimizerKind* find_optimizer(const std::string& name);
/// The row called `name`; throws lowmem::ConfigError listing the known names.
const OptimizerKind& optimizer_kind(const std::string& name);
/// Adds a row (e.g. a test-only optimizer). Throws lowmem::ConfigError when
/// the name is taken or the row has neither factory. Register before
/// building configurations that should know it (at start-up).
void register_optimizer(OptimizerKind kind);

namespace detail {
template <class T, class = void>
struct HasInitialStateBytes : std::false_type {};
template <class T>
struct HasInitialStateBytes<
    T, std::void_t<decltype(std::declval<const T&>().initial_state_bytes(
           std::declval<const at::Tensor&>()))>> : std::true_type {};
}  // namespace detail

/// A row for an optimizer constructed as Opt(ParamGroups, Options), Options a
/// FieldOptions and its state a FieldState (roles and decay come from them;
/// state_bytes from PerParamOptimizer::initial_state_bytes when Opt has it).
template <class Opt, class Options>
OptimizerKind param_group_optimizer(std::string name, std::string help,
                                    Options defaults = Options()) {
  OptimizerKind k;
  k.name = name;
  k.help = help;
  k.options = [name, help, defaults] {
    return Section::of<Options>(name, help, defaults);
  };
  k.make = [](ParamGroups groups, const Section& s) -> OptimizerPtr {
    return std::make_unique<Opt>(std::move(groups), s.get<Options>());
  };
  if constexpr (detail::HasInitialStateBytes<Opt>::value) {
    k.state_bytes = [](const at::Tensor& param, const Section& s) -> int64_t {
      ParamGroups groups;
      groups.emplace_back(std::vector<at::Tensor>{param});
      const Opt opt(std::move(groups), s.get<Options>());
      return opt.initial_state_bytes(param);
    };
  }
  return k;
}

}  // namespace lowmem::optim
