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
  LOWMEM_CHECK(o.optim_bits() == 8 || o.optim_bits() == 32,
               "[adamw] optim_bits must be 8 or 32, got ", o.optim_bits());
  LOWMEM_CHECK(o.min_8bit_size() >= 0,
               "[adamw] min_8bit_size must be >= 0, got ", o.min_8bit_size());
  LOWMEM_CHECK(!o.amsgrad(),
               "[adamw] amsgrad=true is not supported by lowmem::optim::AdamW "
               "(use torch::optim::AdamW)");
}

void AdamW::init_state(
    const at::Tensor& p, AdamWState& s, const AdamWOptions& o) const {
  if (o.optim_bits() == 8 && p.numel() >= o.min_8bit_size()) {
    s.exp_avg_q8 = BlockwiseQ8::zeros(p.sizes(), p.device(), true);
    s.exp_avg_sq_q8 = BlockwiseQ8::zeros(p.sizes(), p.device(), false);
    return;
  }
  const auto f32 = p.options().dtype(at::kFloat);
  s.exp_avg = at::zeros(p.sizes(), f32);
  s.exp_avg_sq = at::zeros(p.sizes(), f32);
}

namespace {

// One AdamW update with fp32 moments m, v (fused on CPU fp32, else the ops
// of torch::optim::AdamW in fp32).
void adamw_fp32(at::Tensor& p, const at::Tensor& grad, at::Tensor& m,
                at::Tensor& v, const kernels::AdamWHyper& h) {
  if (!detail::reference_path() && kernels::fusable(p, grad)) {
    kernels::adamw(p, grad, m, v, h);
    return;
  }
  const at::Tensor g = grad.to(at::kFloat);
  at::Tensor p32 = p.scalar_type() == at::kFloat ? p : p.to(at::kFloat);
  p32.mul_(1.0 - h.lr * h.weight_decay);
  m.mul_(h.beta1).add_(g, 1.0 - h.beta1);
  v.mul_(h.beta2).addcmul_(g, g, 1.0 - h.beta2);
  at::Tensor denom = (v.sqrt() / std::sqrt(h.bias_correction2)).add_(h.eps);
  p32.addcdiv_(m, denom, -h.lr / h.bias_correction1);
  if (!p32.is_same(p)) p.copy_(p32);
}

}  // namespace

void AdamW::update(
    at::Tensor& p,
    const at::Tensor& grad,
    AdamWState& s,
    const AdamWOptions& o) {
  const auto [b1, b2] = o.betas();
  const double t = static_cast<double>(s.step);
  const kernels::AdamWHyper h{o.lr(),
                              b1,
                              b2,
                              o.eps(),
                              o.weight_decay(),
                              1.0 - std::pow(b1, t),
                              1.0 - std::pow(b2, t)};
  if (s.exp_avg_q8.defined()) {
    q8_update(p, grad, s.exp_avg_q8, &s.exp_avg_sq_q8,
              [&h](at::Tensor& pc, const at::Tensor& gc, at::Tensor& m,
                   at::Tensor& v) { adamw_fp32(pc, gc, m, v, h); });
    return;
  }
  adamw_fp32(p, grad, s.exp_avg, s.exp_avg_sq, h);
}

}  // namespace lowmem::optim
