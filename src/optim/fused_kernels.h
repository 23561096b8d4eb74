// Fused single-/few-pass CPU kernels for float32 contiguous tensors (internal).
// Each function performs the same arithmetic as the ATen reference path of its
// optimizer, in the fewest passes over memory the data dependencies allow.
#pragma once

#include <ATen/core/Tensor.h>

namespace lowmem::optim::kernels {

/// True when p and g are CPU, float32, contiguous and of equal numel.
bool fusable(const at::Tensor& p, const at::Tensor& g);

struct CameHyper {
  double lr, beta1, beta2, beta3, eps1, eps2, clip_threshold, weight_decay;
};
/// CAME, ndim >= 2 (factored over the last two dims): 3 passes
/// (g | g, m -> m | p, m -> p): 28 bytes per element.
void came_factored(
    at::Tensor& p,
    const at::Tensor& g,
    at::Tensor& m,
    at::Tensor& row,
    at::Tensor& col,
    at::Tensor& res_row,
    at::Tensor& res_col,
    const CameHyper& h);
/// CAME, ndim < 2: 2 passes (g, v -> v | g, v, m, p -> m, p).
void came_vector(
    at::Tensor& p,
    const at::Tensor& g,
    at::Tensor& m,
    at::Tensor& v,
    const CameHyper& h);

struct AdafactorHyper {
  double beta2t;          // 1 - t^decay_rate
  double rho;             // relative or external step size
  bool scale_parameter;   // alpha = max(eps2, rms(p)) * rho
  double eps1, eps2, clip_threshold, weight_decay;
  bool use_beta1;
  double beta1;
};
/// Adafactor, ndim >= 2: 2 passes (g[, p] | g, p[, M] -> p[, M]).
void adafactor_factored(
    at::Tensor& p,
    const at::Tensor& g,
    at::Tensor& exp_avg,  // undefined without beta1
    at::Tensor& row,
    at::Tensor& col,
    const AdafactorHyper& h);
/// Adafactor, ndim < 2: 2 passes.
void adafactor_vector(
    at::Tensor& p,
    const at::Tensor& g,
    at::Tensor& exp_avg,
    at::Tensor& v,
    const AdafactorHyper& h);

struct AdamWHyper {
  double lr, beta1, beta2, eps, weight_decay;
  double bias_correction1, bias_correction2;
};
/// AdamW (torch::optim::AdamW semantics): one pass, 28 bytes per element.
void adamw(
    at::Tensor& p,
    const at::Tensor& g,
    at::Tensor& exp_avg,
    at::Tensor& exp_avg_sq,
    const AdamWHyper& h);

}  // namespace lowmem::optim::kernels
