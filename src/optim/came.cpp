#include "lowmem/optim/came.h"

#include <ATen/ATen.h>

#include <cmath>

#include "fused_kernels.h"
#include "lowmem/core/check.h"
#include "lowmem/optim/factored.h"
#include "lowmem/optim/per_param_impl.h"

namespace lowmem::optim {

template class PerParamOptimizer<CameOptions, CameState>;

void validate(const CameOptions& o) {
  LOWMEM_CHECK(std::isfinite(o.lr()) && o.lr() >= 0,
               "[came] lr must be >= 0, got ", o.lr());
  const auto [eps1, eps2] = o.eps();
  LOWMEM_CHECK(eps1 >= 0, "[came] eps1 (eps[0]) must be >= 0, got ", eps1);
  LOWMEM_CHECK(eps2 >= 0, "[came] eps2 (eps[1]) must be >= 0, got ", eps2);
  LOWMEM_CHECK(o.clip_threshold() > 0,
               "[came] clip_threshold must be > 0, got ", o.clip_threshold());
  const auto [b1, b2, b3] = o.betas();
  LOWMEM_CHECK(b1 >= 0 && b1 <= 1, "[came] beta1 must be in [0, 1], got ", b1);
  LOWMEM_CHECK(b2 >= 0 && b2 <= 1, "[came] beta2 must be in [0, 1], got ", b2);
  LOWMEM_CHECK(b3 >= 0 && b3 <= 1, "[came] beta3 must be in [0, 1], got ", b3);
  LOWMEM_CHECK(o.weight_decay() >= 0,
               "[came] weight_decay must be >= 0, got ", o.weight_decay());
  LOWMEM_CHECK(o.optim_bits() == 8 || o.optim_bits() == 32,
               "[came] optim_bits must be 8 or 32, got ", o.optim_bits());
  LOWMEM_CHECK(o.min_8bit_size() >= 0,
               "[came] min_8bit_size must be >= 0, got ", o.min_8bit_size());
}

void CAME::init_state(
    const at::Tensor& p, CameState& s, const CameOptions& o) const {
  const auto f32 = p.options().dtype(at::kFloat);
  if (o.optim_bits() == 8 && p.numel() >= o.min_8bit_size()) {
    s.exp_avg_q8 = BlockwiseQ8::zeros(p.sizes(), p.device(), true);
  } else {
    s.exp_avg = at::zeros(p.sizes(), f32);
  }
  if (factored::is_factored(p.sizes())) {
    s.exp_avg_sq_row = at::zeros(factored::row_shape(p.sizes()), f32);
    s.exp_avg_sq_col = at::zeros(factored::col_shape(p.sizes()), f32);
    s.exp_avg_res_row = at::zeros(factored::row_shape(p.sizes()), f32);
    s.exp_avg_res_col = at::zeros(factored::col_shape(p.sizes()), f32);
  } else {
    s.exp_avg_sq = at::zeros(p.sizes(), f32);
  }
}

void CAME::update(
    at::Tensor& p,
    const at::Tensor& grad,
    CameState& s,
    const CameOptions& o) {
  if (s.exp_avg_q8.defined()) {
    // Dequantize, update in fp32, requantize (optim/quant8.h); the factored
    // statistics need the whole tensor, so no chunks here.
    at::Tensor m = s.exp_avg_q8.dequantize();
    step_with(p, grad, m, s, o);
    s.exp_avg_q8.store(m);
    return;
  }
  step_with(p, grad, s.exp_avg, s, o);
}

void CAME::step_with(at::Tensor& p, const at::Tensor& grad, at::Tensor& m,
                     CameState& s, const CameOptions& o) {
  const auto [b1, b2, b3] = o.betas();
  const auto [eps1, eps2] = o.eps();
  const double lr = o.lr(), wd = o.weight_decay();
  const bool is_fact = s.exp_avg_sq_row.defined();

  if (!detail::reference_path() && kernels::fusable(p, grad)) {
    if (is_fact) {
      kernels::came_factored(
          p, grad, m, s.exp_avg_sq_row, s.exp_avg_sq_col, s.exp_avg_res_row,
          s.exp_avg_res_col,
          {lr, b1, b2, b3, eps1, eps2, o.clip_threshold(), wd});
    } else {
      kernels::came_vector(
          p, grad, m, s.exp_avg_sq,
          {lr, b1, b2, b3, eps1, eps2, o.clip_threshold(), wd});
    }
    return;
  }

  // Device-generic path, op for op as the official code.
  const at::Tensor g = grad.to(at::kFloat);
  at::Tensor q = g.square().add_(eps1);
  at::Tensor u;
  if (is_fact) {
    factored::ema_row_col(s.exp_avg_sq_row, s.exp_avg_sq_col, q, b2);
    u = factored::approx_rsqrt(s.exp_avg_sq_row, s.exp_avg_sq_col).mul_(g);
  } else {
    s.exp_avg_sq.mul_(b2).add_(q, 1.0 - b2);
    u = s.exp_avg_sq.rsqrt().mul_(g);
  }
  q.reset();
  u.div_(factored::clip_divisor(u, o.clip_threshold()));
  m.mul_(b1).add_(u, 1.0 - b1);
  at::Tensor delta;
  if (is_fact) {
    at::Tensor res = u.sub_(m).square_().add_(eps2);
    factored::ema_row_col(s.exp_avg_res_row, s.exp_avg_res_col, res, b3);
    res.reset();
    delta =
        factored::approx_rsqrt(s.exp_avg_res_row, s.exp_avg_res_col).mul_(m);
  } else {
    delta = m.clone();  // not an alias (the old official bug)
  }
  if (wd != 0) p.add_(p, -wd * lr);
  delta.mul_(lr);
  p.sub_(delta);
}

}  // namespace lowmem::optim
