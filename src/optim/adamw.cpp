#include "lowmem/optim/adamw.h"

#include <ATen/ATen.h>

#include <cmath>

#include "fused_kernels.h"
#include "lowmem/core/check.h"
#include "lowmem/optim/per_param_impl.h"

namespace lowmem::optim {

template class PerParamOptimizer<AdamWOptions, AdamWState>;

void validate(const AdamWOptions& o) {
  LOWMEM_CHECK(std::isfinite(o.lr()) && o.lr() >= 0,
               "[adamw] lr must be >= 0, got ", o.lr());
  LOWMEM_CHECK(o.eps() >= 0, "[adamw] eps must be >= 0, got ", o.eps());
  const auto [b1, b2] = o.betas();
  LOWMEM_CHECK(b1 >= 0 && b1 < 1, "[adamw] beta1 must be in [0, 1), got ", b1);
  LOWMEM_CHECK(b2 >= 0 && b2 < 1, "[adamw] beta2 must be in [0, 1), got ", b2);
  LOWMEM_CHECK(o.weight_decay() >= 0,
               "[adamw] weight_decay must be >= 0, got ", o.weight_decay());
  LOWMEM_CHECK(!o.amsgrad(),
               "[adamw] amsgrad=true is not supported by lowmem::optim::AdamW "
               "(use torch::optim::AdamW)");
}

AdamW::AdamW(
    std::vector<torch::optim::OptimizerParamGroup> groups,
    AdamWOptions defaults)
    : PerParamOptimizer(std::move(groups), defaults) {}

AdamW::AdamW(std::vector<at::Tensor> params, AdamWOptions defaults)
    : AdamW({torch::optim::OptimizerParamGroup(std::move(params))}, defaults) {}

void AdamW::init_state(
    const at::Tensor& p, AdamWState& s, const AdamWOptions& o) const {
  const auto f32 = p.options().dtype(at::kFloat);
  s.exp_avg = at::zeros(p.sizes(), f32);
  s.exp_avg_sq = at::zeros(p.sizes(), f32);
}

void AdamW::update(
    at::Tensor& p,
    const at::Tensor& grad,
    AdamWState& s,
    const AdamWOptions& o) {
  const auto [b1, b2] = o.betas();
  const double lr = o.lr(), wd = o.weight_decay();
  const double t = static_cast<double>(s.step);
  const double bc1 = 1.0 - std::pow(b1, t);
  const double bc2 = 1.0 - std::pow(b2, t);
  if (!detail::reference_path() && kernels::fusable(p, grad)) {
    kernels::adamw(p, grad, s.exp_avg, s.exp_avg_sq,
                   {lr, b1, b2, o.eps(), wd, bc1, bc2});
    return;
  }
  // Generic path: the ops of torch::optim::AdamW, in fp32.
  const at::Tensor g = grad.to(at::kFloat);
  at::Tensor p32 = p.scalar_type() == at::kFloat ? p : p.to(at::kFloat);
  p32.mul_(1.0 - lr * wd);
  s.exp_avg.mul_(b1).add_(g, 1.0 - b1);
  s.exp_avg_sq.mul_(b2).addcmul_(g, g, 1.0 - b2);
  at::Tensor denom = (s.exp_avg_sq.sqrt() / std::sqrt(bc2)).add_(o.eps());
  p32.addcdiv_(s.exp_avg, denom, -lr / bc1);
  if (!p32.is_same(p)) p.copy_(p32);
}

}  // namespace lowmem::optim
