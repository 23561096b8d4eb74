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
}

GaLoreAdamW::GaLoreAdamW(std::vector<torch::optim::OptimizerParamGroup> groups,
                         GaLoreAdamWOptions defaults)
    : PerParamOptimizer(std::move(groups), defaults) {}

GaLoreAdamW::GaLoreAdamW(std::vector<at::Tensor> params,
                         GaLoreAdamWOptions defaults)
    : GaLoreAdamW({torch::optim::OptimizerParamGroup(std::move(params))},
                  defaults) {}

namespace {
at::ScalarType state_dtype(const at::Tensor& p) {
  return p.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}
}  // namespace

void GaLoreAdamW::init_state(const at::Tensor& p, GaLoreAdamWState& s,
                             const GaLoreAdamWOptions&) const {
  s.exp_avg = at::zeros(p.sizes(), p.options().dtype(state_dtype(p)));
  s.exp_avg_sq = at::zeros_like(s.exp_avg);
}

void GaLoreAdamW::update(at::Tensor& p, const at::Tensor& grad,
                         GaLoreAdamWState& s, const GaLoreAdamWOptions& o) {
  const auto dt = state_dtype(p);
  const auto g = grad.to(dt);
  // adamw.py: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2.
  s.exp_avg.mul_(o.beta1()).add_(g, 1.0 - o.beta1());
  s.exp_avg_sq.mul_(o.beta2()).addcmul_(g, g, 1.0 - o.beta2());
  auto denom = s.exp_avg_sq.sqrt().add_(o.eps());
  double step_size = o.lr();
  if (o.correct_bias()) {
    const double t = static_cast<double>(s.step);
    step_size *= std::sqrt(1.0 - std::pow(o.beta2(), t)) /
                 (1.0 - std::pow(o.beta1(), t));
  }
  if (p.scalar_type() == dt) {
    p.addcdiv_(s.exp_avg, denom, -step_size);
    if (o.weight_decay() > 0) p.add_(p, -o.lr() * o.weight_decay());
  } else {
    auto p32 = p.to(dt);
    p32.addcdiv_(s.exp_avg, denom, -step_size);
    if (o.weight_decay() > 0) p32.add_(p32, -o.lr() * o.weight_decay());
    p.copy_(p32);
  }
}

}  // namespace lowmem::optim
