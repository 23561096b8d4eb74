// Helpers shared by SINGD and KFAC (private to src/optim).
#pragma once

#include <ATen/ATen.h>

#include <torch/optim/optimizer.h>

#include "lowmem/adapters/curvature_tap.h"

namespace lowmem::optim::detail {

/// One param group with every layer's weight, then its bias if any (the
/// official SINGD order; KFAC uses the same).
inline std::vector<torch::optim::OptimizerParamGroup> layer_param_groups(
    const std::vector<adapters::CurvatureLayer>& layers) {
  std::vector<at::Tensor> params;
  for (const auto& l : layers) {
    params.push_back(l.weight);
    if (l.bias.defined()) params.push_back(l.bias);
  }
  return {torch::optim::OptimizerParamGroup(params)};
}

/// V = [grad W (flattened from dim 1) | grad b] : [d_C, d_K], or undefined
/// when the weight has no gradient.
inline at::Tensor grad_matrix(const adapters::CurvatureLayer& l) {
  const at::Tensor& gw = l.weight.grad();
  if (!gw.defined()) return {};
  at::Tensor v = gw.flatten(1);
  if (l.bias.defined()) {
    at::Tensor gb = l.bias.grad();
    if (!gb.defined()) gb = at::zeros_like(l.bias);
    v = at::cat({v, gb.unsqueeze(1).to(v.scalar_type())}, 1);
  }
  return v;
}

/// Official SINGD/KFAC parameter update from the natural gradient `nat`:
/// step = nat + wd p; buf = momentum buf + step; p -= lr buf. The buffer is
/// fp32 (allocated on first use); the update is computed in fp32.
inline void apply_update(
    at::Tensor& p,
    const at::Tensor& nat,
    at::Tensor& buf,
    double lr,
    double momentum,
    double weight_decay) {
  // fp32 state (fp64 for fp64 params).
  const auto sdt = p.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor step = nat.reshape(p.sizes()).to(sdt);
  if (step.is_same(nat)) step = step.clone();
  if (weight_decay != 0.0) step.add_(p.to(sdt), weight_decay);
  if (momentum != 0.0) {
    if (!buf.defined()) buf = at::zeros(p.sizes(), p.options().dtype(sdt));
    buf.mul_(momentum).add_(step);
    step = buf;
  }
  if (p.scalar_type() == sdt)
    p.add_(step, -lr);
  else
    p.copy_(p.to(sdt).add_(step, -lr));
}

}  // namespace lowmem::optim::detail
