// Helpers shared by SINGD and KFAC (private to src/optim).
#pragma once

#include <ATen/ATen.h>
#include <torch/optim/optimizer.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "lowmem/nn/curvature_tap.h"

namespace lowmem::optim::detail {

/// One param group with every layer's weight, then its bias if any (the
/// official SINGD order; KFAC uses the same).
inline std::vector<torch::optim::OptimizerParamGroup> layer_param_groups(
    const std::vector<nn::CurvatureLayer>& layers) {
  std::vector<at::Tensor> params;
  for (const auto& l : layers) {
    params.push_back(l.weight);
    if (l.bias.defined()) params.push_back(l.bias);
  }
  return {torch::optim::OptimizerParamGroup(params)};
}

/// V = [grad W (flattened from dim 1) | grad b] : [d_C, d_K], or undefined
/// when the weight has no gradient.
inline at::Tensor grad_matrix(const nn::CurvatureLayer& l) {
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

/// Applies the natural gradient `nat` ([d_C, d_K], the bias as its last
/// column when the layer has one) to the layer's weight and bias with
/// apply_update, each with its own momentum buffer.
inline void apply_natural_gradient(nn::CurvatureLayer& l, const at::Tensor& nat,
                                   at::Tensor& momentum_weight,
                                   at::Tensor& momentum_bias, double lr,
                                   double momentum, double weight_decay) {
  const int64_t dk = l.weight[0].numel();
  apply_update(l.weight, nat.slice(1, 0, dk), momentum_weight, lr, momentum, weight_decay);
  if (l.bias.defined())
    apply_update(l.bias, nat.select(1, dk), momentum_bias, lr, momentum, weight_decay);
}

/// Drops the momentum buffer of `param` (a layer's weight or bias): ZeRO's
/// forget_state of SINGD and KFAC, whose layer states hold
/// momentum_weight and momentum_bias.
template <class LayerState>
void forget_momentum(const std::vector<nn::CurvatureLayer>& layers,
                     std::vector<LayerState>& states, const at::Tensor& param) {
  for (size_t i = 0; i < layers.size(); ++i) {
    if (layers[i].weight.is_same(param)) states[i].momentum_weight.reset();
    if (layers[i].bias.defined() && layers[i].bias.is_same(param)) {
      states[i].momentum_bias.reset();
    }
  }
}

/// The curvature taps of a Kronecker-factored optimizer, one per layer.
using Taps = std::vector<std::shared_ptr<nn::KroneckerTap>>;

/// Makes the layer's Kronecker tap (factor dtypes, and the loss averaging and
/// KFAC approximation named in the optimizer's options), attaches it to the
/// layer and keeps it in `taps`; `sink` receives (a, g) on armed steps.
inline void attach_tap(const nn::CurvatureLayer& l, Taps& taps,
                       const std::string& loss_average,
                       const std::string& kfac_approx, at::ScalarType dtype_k,
                       at::ScalarType dtype_c, nn::KroneckerTap::Sink sink) {
  nn::KroneckerTapOptions to;
  to.has_bias = l.bias.defined();
  to.conv = l.conv;
  to.loss_average = nn::parse_loss_average(loss_average);
  to.kfac_approx = nn::parse_kfac_approx(kfac_approx);
  to.dtype_k = dtype_k;
  to.dtype_c = dtype_c;
  auto tap = std::make_shared<nn::KroneckerTap>(to, std::move(sink));
  l.set_tap(tap);
  taps.push_back(std::move(tap));
}

/// Arms every tap on refresh steps (steps % T == 0), disarms it otherwise.
inline void arm_taps(const Taps& taps, int64_t steps, int64_t T) {
  const bool on = steps % T == 0;
  for (const auto& t : taps) t->arm(on);
}

/// End of a step: drops what the taps recorded and arms them for the next.
inline void finish_step_taps(const Taps& taps, int64_t steps, int64_t T) {
  for (const auto& t : taps) t->clear();
  arm_taps(taps, steps, T);
}

/// Detaches the taps from the layers that still hold them (the layers may
/// outlive the optimizer).
inline void detach_taps(const std::vector<nn::CurvatureLayer>& layers,
                        const Taps& taps) {
  for (size_t i = 0; i < std::min(layers.size(), taps.size()); ++i)
    if (layers[i].tap() == taps[i]) layers[i].set_tap(nullptr);
}

}  // namespace lowmem::optim::detail
