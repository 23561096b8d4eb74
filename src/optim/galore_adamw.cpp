#include "lowmem/optim/galore_adamw.h"

#include <ATen/ATen.h>

#include <cmath>

#include "lowmem/core/check.h"
#include "lowmem/optim/per_param_impl.h"

namespace lowmem::optim {

template class PerParamOptimizer<GaLoreAdamWOptions, GaLoreAdamWState>;

void validate(const GaLoreAdamWOptions& o) {
  LOWMEM_CHECK(o.lr() >= 0, "[galore_adamw] lr must be >= 0, got ", o.lr());
  LOWMEM_CHECK(o.beta1() >= 0 && o.beta1() < 1,
               "[galore_adamw] beta1 must be in [0, 1), got ", o.beta1());
  LOWMEM_CHECK(o.beta2() >= 0 && o.beta2() < 1,
               "[galore_adamw] beta2 must be in [0, 1), got ", o.beta2());
  LOWMEM_CHECK(o.eps() >= 0, "[galore_adamw] eps must be >= 0, got ", o.eps());
  LOWMEM_CHECK(o.weight_decay() >= 0,
               "[galore_adamw] weight_decay must be >= 0, got ",
               o.weight_decay());
  LOWMEM_CHECK(o.optim_bits() == 8 || o.optim_bits() == 32,
               "[galore_adamw] optim_bits must be 8 or 32, got ",
               o.optim_bits());
  LOWMEM_CHECK(o.min_8bit_size() >= 0,
               "[galore_adamw] min_8bit_size must be >= 0, got ",
               o.min_8bit_size());
}

namespace {
at::ScalarType state_dtype(const at::Tensor& p) {
  return p.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}
}  // namespace

void GaLoreAdamW::init_state(const at::Tensor& p, GaLoreAdamWState& s,
                             const GaLoreAdamWOptions& o) const {
  if (o.optim_bits() == 8 && p.numel() >= o.min_8bit_size()) {
    s.exp_avg_q8 = BlockwiseQ8::zeros(p.sizes(), p.device(), true);
    s.exp_avg_sq_q8 = BlockwiseQ8::zeros(p.sizes(), p.device(), false);
    return;
  }
  s.exp_avg = at::zeros(p.sizes(), p.options().dtype(state_dtype(p)));
  s.exp_avg_sq = at::zeros_like(s.exp_avg);
}

namespace {

// adamw.py's update with moments m, v (their dtype is the compute dtype).
void galore_adamw_step(at::Tensor& p, const at::Tensor& grad, at::Tensor& m,
                       at::Tensor& v, const GaLoreAdamWOptions& o,
                       int64_t step) {
  const auto dt = m.scalar_type();
  const auto g = grad.to(dt);
  // adamw.py: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2.
  m.mul_(o.beta1()).add_(g, 1.0 - o.beta1());
  v.mul_(o.beta2()).addcmul_(g, g, 1.0 - o.beta2());
  auto denom = v.sqrt().add_(o.eps());
  double step_size = o.lr();
  if (o.correct_bias()) {
    const double t = static_cast<double>(step);
    step_size *= std::sqrt(1.0 - std::pow(o.beta2(), t)) /
                 (1.0 - std::pow(o.beta1(), t));
  }
  if (p.scalar_type() == dt) {
    p.addcdiv_(m, denom, -step_size);
    if (o.weight_decay() > 0) p.add_(p, -o.lr() * o.weight_decay());
  } else {
    auto p32 = p.to(dt);
    p32.addcdiv_(m, denom, -step_size);
    if (o.weight_decay() > 0) p32.add_(p32, -o.lr() * o.weight_decay());
    p.copy_(p32);
  }
}

}  // namespace

void GaLoreAdamW::update(at::Tensor& p, const at::Tensor& grad,
                         GaLoreAdamWState& s, const GaLoreAdamWOptions& o) {
  if (s.exp_avg_q8.defined()) {
    const int64_t step = s.step;
    q8_update(p, grad, s.exp_avg_q8, &s.exp_avg_sq_q8,
              [&o, step](at::Tensor& pc, const at::Tensor& gc, at::Tensor& m,
                         at::Tensor& v) {
                galore_adamw_step(pc, gc, m, v, o, step);
              });
    return;
  }
  galore_adamw_step(p, grad, s.exp_avg, s.exp_avg_sq, o, s.step);
}

}  // namespace lowmem::optim
