// Adafactor (Shazeer & Stern 2018, arXiv 1804.04235) as implemented in Hugging
// Face transformers (`transformers.optimization.Adafactor`): relative step,
// parameter scaling, time-dependent beta2 = 1 - t^decay_rate, factored second
// moment over the last two dims, RMS update clipping, optional momentum on the
// lr-scaled update, decoupled weight decay scaled by the step size.
// Deviations: state is always fp32 (HF: grad dtype after the fp32 upcast, the
// same); relative_step=false without lr is rejected (HF fails later); the
// per-param `RMS` state entry is recomputed each step and not stored.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <torch/arg.h>

#include <tuple>
#include <vector>

#include "lowmem/optim/per_param.h"

namespace lowmem::optim {

struct AdafactorOptions : FieldOptions<AdafactorOptions> {
  // HF: lr=None (relative step). An explicit lr requires relative_step(false).
  AdafactorOptions(c10::optional<double> lr = c10::nullopt)  // NOLINT
      : lr_(lr) {}
  TORCH_ARG(c10::optional<double>, lr) = c10::nullopt;
  using eps_t = std::tuple<double, double>;
  // (eps1 added to g^2, eps2 floor of the parameter RMS); HF default.
  TORCH_ARG(eps_t, eps) = std::make_tuple(1e-30, 1e-3);
  // RMS threshold of the update; HF default.
  TORCH_ARG(double, clip_threshold) = 1.0;
  // beta2_t = 1 - t^decay_rate; HF default.
  TORCH_ARG(double, decay_rate) = -0.8;
  // Momentum on the scaled update; HF default None (no first moment).
  TORCH_ARG(c10::optional<double>, beta1) = c10::nullopt;
  // Decoupled, scaled by the step size alpha_t; HF default 0.
  TORCH_ARG(double, weight_decay) = 0.0;
  // alpha_t = max(eps2, RMS(p)) * rho_t; HF default true.
  TORCH_ARG(bool, scale_parameter) = true;
  // rho_t = min(1e-2, 1/sqrt(t)) instead of lr; HF default true.
  TORCH_ARG(bool, relative_step) = true;
  // rho_t = min(1e-6 * t, 1/sqrt(t)); HF default false.
  TORCH_ARG(bool, warmup_init) = false;

 public:
  /// Visits every scalar field: v("lr", lr_), v("eps1", ...), ...
  template <class V>
  void for_each_field(V&& v) {
    v("lr", lr_);
    v("eps1", std::get<0>(eps_));
    v("eps2", std::get<1>(eps_));
    v("clip_threshold", clip_threshold_);
    v("decay_rate", decay_rate_);
    v("beta1", beta1_);
    v("weight_decay", weight_decay_);
    v("scale_parameter", scale_parameter_);
    v("relative_step", relative_step_);
    v("warmup_init", warmup_init_);
  }
  /// The external lr (0 when unset, i.e. with relative_step).
  double get_lr() const override {
    return lr_.value_or(0.0);
  }
  /// Sets the external lr. With relative_step and no lr, setting 0 (what
  /// get_lr() reports) is a no-op, so LR schedulers, which rewrite every
  /// group's lr each step, leave a relative-step group alone.
  void set_lr(const double lr) override {
    if (relative_step_ && !lr_ && lr == 0.0) return;
    lr_ = lr;
  }
};

/// Throws c10::Error ("[adafactor] ...") naming the first bad value.
void validate(const AdafactorOptions& o);

/// The step size alpha_t of HF `Adafactor._get_lr` for step t and param RMS.
double adafactor_step_size(
    const AdafactorOptions& o, int64_t step, double param_rms);

struct AdafactorState : FieldState<AdafactorState> {
  int64_t step = 0;
  at::Tensor exp_avg;         // M, like p (beta1 set)
  at::Tensor exp_avg_sq_row;  // R, shape[:-1] (ndim >= 2)
  at::Tensor exp_avg_sq_col;  // C, shape[:-2] + shape[-1:] (ndim >= 2)
  at::Tensor exp_avg_sq;      // V, like p (ndim < 2)

  template <class V>
  void for_each_field(V&& v) {
    v("step", step);
    v("exp_avg", exp_avg, StateRole::kLinear);
    v("exp_avg_sq_row", exp_avg_sq_row, StateRole::kRowSquares);
    v("exp_avg_sq_col", exp_avg_sq_col, StateRole::kColSquares);
    v("exp_avg_sq", exp_avg_sq, StateRole::kSquare);
  }
};

class Adafactor final
    : public PerParamOptimizer<AdafactorOptions, AdafactorState> {
 public:
  using PerParamOptimizer::PerParamOptimizer;

 private:
  void init_state(
      const at::Tensor& p,
      AdafactorState& s,
      const AdafactorOptions& o) const override;
  void update(
      at::Tensor& p,
      const at::Tensor& grad,
      AdafactorState& s,
      const AdafactorOptions& o) override;
  const char* tag() const override {
    return "adafactor";
  }
};

}  // namespace lowmem::optim
