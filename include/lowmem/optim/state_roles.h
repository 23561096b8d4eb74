// Roles of optimizer state tensors and one way to read an optimizer's weight
// decay, so that code which moves state between coordinate systems (GaLore's
// state_on_refresh = reproject; the official galore_torch keeps the state
// instead, arXiv 2403.03507) or checks decay on a projected proxy needs no
// list of optimizer types. lowmem's FieldState types declare each tensor's
// role in their field list (v("exp_avg", exp_avg, StateRole::kLinear)) and
// FieldOptions expose a "weight_decay" field; other optimizers (torch's SGD,
// Adam, AdamW) are described by their registry row (optim/registry.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <functional>

namespace torch::optim {
class OptimizerParamState;
class OptimizerOptions;
}  // namespace torch::optim

namespace lowmem::optim {

/// What one state tensor of a parameter is, and so how a change of the
/// parameter's coordinates X -> C X D acts on it (optim/galore_state.h).
enum class StateRole {
  kScalar,      // not shaped like the parameter (counters, norms): unchanged
  kLinear,      // like the parameter, linear in the gradient (first moments,
                // momentum buffers): C X D
  kSquare,      // like the parameter, elementwise squares (second moments):
                // (C o C) X (D o D)
  kRowSquares,  // [rows], row statistics of squares (factored second
                // moments, Adafactor/CAME): (C o C) x
  kColSquares,  // [cols], column statistics of squares: x (D o D)
};

/// Called once per state tensor (undefined ones included).
using StateTensorFn =
    std::function<void(const char* name, at::Tensor& tensor, StateRole role)>;
/// Visits the tensors of one parameter's state with their roles; returns
/// false when it does not know the state's type.
using StateVisitor = std::function<bool(
    torch::optim::OptimizerParamState& state, const StateTensorFn& fn)>;
/// The weight decay held by a param group's options, or nullopt when it does
/// not know the options' type.
using DecayReader = std::function<c10::optional<double>(
    const torch::optim::OptimizerOptions& options)>;

namespace detail {
/// Implemented by FieldState (optim/per_param.h).
class RoledState {
 public:
  virtual ~RoledState() = default;
  virtual void visit_roles(const StateTensorFn& fn) = 0;
};
/// Implemented by FieldOptions (optim/per_param.h): its "weight_decay"
/// field, or 0 when it has none.
class DecayOptions {
 public:
  virtual ~DecayOptions() = default;
  virtual double weight_decay_field() const = 0;
};
}  // namespace detail

/// Visits `state`'s tensors with their roles: a FieldState's own field list,
/// else the visitor of the registered optimizer that knows the type. Returns
/// false when nobody does.
bool visit_state(torch::optim::OptimizerParamState& state,
                 const StateTensorFn& fn);

/// Weight decay of a param group's options: a FieldOptions' weight_decay
/// field (0 without one), else the decay reader of the registered optimizer
/// that knows the type; nullopt when nobody does.
c10::optional<double> weight_decay_of(
    const torch::optim::OptimizerOptions& options);

}  // namespace lowmem::optim
