#include "lowmem/optim/adafactor.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "fused_kernels.h"
#include "lowmem/core/check.h"
#include "lowmem/optim/factored.h"
#include "lowmem/optim/per_param_impl.h"

namespace lowmem::optim {

template class PerParamOptimizer<AdafactorOptions, AdafactorState>;

void validate(const AdafactorOptions& o) {
  if (o.relative_step()) {
    LOWMEM_CHECK(!o.lr().has_value(),
                 "[adafactor] lr=", o.lr().value_or(0.0),
                 " cannot be combined with relative_step=true (set "
                 "relative_step(false) to use an external lr or scheduler)");
  } else {
    LOWMEM_CHECK(o.lr().has_value(),
                 "[adafactor] relative_step=false requires an lr");
    LOWMEM_CHECK(std::isfinite(*o.lr()) && *o.lr() >= 0,
                 "[adafactor] lr must be >= 0, got ", *o.lr());
    LOWMEM_CHECK(!o.warmup_init(),
                 "[adafactor] warmup_init=true requires relative_step=true");
  }
  const auto [eps1, eps2] = o.eps();
  LOWMEM_CHECK(eps1 >= 0, "[adafactor] eps1 (eps[0]) must be >= 0, got ",
               eps1);
  LOWMEM_CHECK(eps2 >= 0, "[adafactor] eps2 (eps[1]) must be >= 0, got ",
               eps2);
  LOWMEM_CHECK(o.clip_threshold() > 0,
               "[adafactor] clip_threshold must be > 0, got ",
               o.clip_threshold());
  LOWMEM_CHECK(o.decay_rate() <= 0,
               "[adafactor] decay_rate must be <= 0 (beta2_t = 1 - "
               "t^decay_rate), got ", o.decay_rate());
  if (o.beta1()) {
    LOWMEM_CHECK(*o.beta1() >= 0 && *o.beta1() <= 1,
                 "[adafactor] beta1 must be in [0, 1], got ", *o.beta1());
  }
  LOWMEM_CHECK(o.weight_decay() >= 0,
               "[adafactor] weight_decay must be >= 0, got ",
               o.weight_decay());
}

namespace {
// rho_t of HF `_get_lr` (the relative or external step size).
double relative_step_size(const AdafactorOptions& o, int64_t step) {
  if (!o.relative_step()) return *o.lr();
  const double t = static_cast<double>(step);
  const double min_step = o.warmup_init() ? 1e-6 * t : 1e-2;
  return std::min(min_step, 1.0 / std::sqrt(t));
}
}  // namespace

double adafactor_step_size(
    const AdafactorOptions& o, int64_t step, double param_rms) {
  const double rho = relative_step_size(o, step);
  return o.scale_parameter() ? std::max(std::get<1>(o.eps()), param_rms) * rho
                             : rho;
}

void Adafactor::init_state(
    const at::Tensor& p, AdafactorState& s, const AdafactorOptions& o) const {
  const auto f32 = p.options().dtype(at::kFloat);
  if (o.beta1()) s.exp_avg = at::zeros(p.sizes(), f32);
  if (factored::is_factored(p.sizes())) {
    s.exp_avg_sq_row = at::zeros(factored::row_shape(p.sizes()), f32);
    s.exp_avg_sq_col = at::zeros(factored::col_shape(p.sizes()), f32);
  } else {
    s.exp_avg_sq = at::zeros(p.sizes(), f32);
  }
}

void Adafactor::update(
    at::Tensor& p,
    const at::Tensor& grad,
    AdafactorState& s,
    const AdafactorOptions& o) {
  const auto [eps1, eps2] = o.eps();
  const double wd = o.weight_decay();
  const bool is_fact = s.exp_avg_sq_row.defined();
  const bool use_beta1 = o.beta1().has_value();
  LOWMEM_CHECK(!use_beta1 || s.exp_avg.defined(),
               "[adafactor] beta1 was set after this parameter's state was "
               "created without momentum");
  const double beta2t =
      1.0 - std::pow(static_cast<double>(s.step), o.decay_rate());
  const double rho = relative_step_size(o, s.step);

  if (!detail::reference_path() && kernels::fusable(p, grad)) {
    kernels::AdafactorHyper h{beta2t, rho, o.scale_parameter(), eps1, eps2,
                              o.clip_threshold(), wd, use_beta1,
                              o.beta1().value_or(0.0)};
    if (is_fact) {
      kernels::adafactor_factored(p, grad, s.exp_avg, s.exp_avg_sq_row,
                                  s.exp_avg_sq_col, h);
    } else {
      kernels::adafactor_vector(p, grad, s.exp_avg, s.exp_avg_sq, h);
    }
    return;
  }

  // Device-generic path, op for op as HF (step size kept on the device).
  const at::Tensor g = grad.to(at::kFloat);
  at::Tensor p32 = p.scalar_type() == at::kFloat ? p : p.to(at::kFloat);
  at::Tensor alpha_t;  // defined with parameter scaling
  if (o.scale_parameter()) {
    alpha_t = factored::rms(p32).clamp_min_(eps2).mul_(rho);
  }
  at::Tensor q = g.square().add_(eps1);
  at::Tensor u;
  if (is_fact) {
    factored::ema_row_col(s.exp_avg_sq_row, s.exp_avg_sq_col, q, beta2t);
    u = factored::approx_rsqrt(s.exp_avg_sq_row, s.exp_avg_sq_col).mul_(g);
  } else {
    s.exp_avg_sq.mul_(beta2t).add_(q, 1.0 - beta2t);
    u = s.exp_avg_sq.rsqrt().mul_(g);
  }
  q.reset();
  u.div_(factored::clip_divisor(u, o.clip_threshold()));
  if (alpha_t.defined()) {
    u.mul_(alpha_t);
  } else {
    u.mul_(rho);
  }
  if (use_beta1) {
    s.exp_avg.mul_(*o.beta1()).add_(u, 1.0 - *o.beta1());
    u = s.exp_avg;
  }
  if (wd != 0) {
    if (alpha_t.defined()) {
      p32.add_(p32 * alpha_t, -wd);
    } else {
      p32.add_(p32, -wd * rho);
    }
  }
  p32.sub_(u);
  if (!p32.is_same(p)) p.copy_(p32);
}

}  // namespace lowmem::optim
