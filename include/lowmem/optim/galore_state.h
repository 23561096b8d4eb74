// Moving an inner optimizer's per-param state from one projection basis to
// another (GaLore's state_on_refresh = reproject; arXiv 2403.03507 keeps the
// state unchanged instead). Shared by the gradient-transform form
// (optim/galore.h) and the adapter form (optim/projected_adapter_optimizer.h).
#pragma once

#include <ATen/core/Tensor.h>

namespace torch::optim {
class OptimizerParamState;
}

namespace lowmem::optim {

/// Old low-rank coordinates X -> new ones: linear(X) = C X D with
/// C = P_new^T P_old [r, r] (left side, else undefined) and
/// D = Q_old^T Q_new [r, r] (right side, else undefined); square(X) uses
/// C o C and D o D, for elementwise second moments.
struct BasisChange {
  at::Tensor c;
  at::Tensor d;
  at::Tensor linear(const at::Tensor& x) const;
  at::Tensor square(const at::Tensor& x) const;
  /// Factored row statistics [rows] (Adafactor/CAME): (C o C) x.
  at::Tensor rows(const at::Tensor& x) const;
  /// Factored column statistics [cols]: x (D o D).
  at::Tensor cols(const at::Tensor& x) const;
};

/// Re-expresses one param's state (torch SGD/Adam/AdamW, GaLoreAdamW, lowmem
/// CAME) in the new basis; throws "[galore] ..." for unknown state types.
void reproject_state(torch::optim::OptimizerParamState& state,
                     const BasisChange& change);

}  // namespace lowmem::optim
