#include "lowmem/nn/linear.h"

#include <ATen/ATen.h>
#include <torch/nn/init.h>

#include <cmath>

#include "lowmem/core/check.h"

namespace lowmem::nn {

at::Tensor LinearLike::forward(const at::Tensor& x) {
  LOWMEM_CHECK(x.dim() >= 1 && x.size(-1) == in_, "[linear] input's last dim ",
               x.dim() >= 1 ? x.size(-1) : -1, " != in_features ", in_);
  if (!tap_ || !tap_->armed()) return forward_impl(x);
  tap_->record_input(x.detach());
  at::Tensor out = forward_impl(x);
  if (out.requires_grad()) {
    std::weak_ptr<CurvatureTap> weak = tap_;
    out.register_hook([weak](const at::Tensor& g) {
      if (auto t = weak.lock()) t->record_grad_output(g.detach());
    });
  }
  return out;
}

void LinearLike::add_to_weight(const at::Tensor& delta) {
  at::NoGradGuard g;
  at::Tensor& w = base_weight();
  w.add_(delta.to(w.device(), w.scalar_type()));
}

namespace {

const std::shared_ptr<LinearLike>& checked_base(
    const std::shared_ptr<LinearLike>& base, const std::string& owner) {
  LOWMEM_CHECK(base != nullptr, owner, " null base layer");
  return base;
}

}  // namespace

WrappedLinear::WrappedLinear(std::shared_ptr<LinearLike> base,
                             const std::string& child, const std::string& owner)
    : LinearLike(checked_base(base, owner)->in_features(),
                 base->out_features()),
      base_(std::move(base)) {
  register_module(child, base_);
}

Linear::Linear(int64_t in_features, int64_t out_features, bool bias)
    : LinearLike(in_features, out_features) {
  LOWMEM_CHECK(in_features > 0 && out_features > 0,
               "[linear] features must be positive, got in=", in_features,
               " out=", out_features);
  weight_ = register_parameter("weight", at::empty({out_features, in_features}));
  if (bias) bias_ = register_parameter("bias", at::empty({out_features}));
  reset_parameters();
}

Linear::Linear(at::Tensor weight, at::Tensor bias)
    : LinearLike(weight.defined() && weight.dim() == 2 ? weight.size(1) : 0,
                 weight.defined() && weight.dim() == 2 ? weight.size(0) : 0) {
  LOWMEM_CHECK(weight.defined() && weight.dim() == 2 && weight.numel() > 0,
               "[linear] weight must be a non-empty [out, in] matrix, got ",
               weight.defined() ? weight.sizes() : c10::IntArrayRef{});
  LOWMEM_CHECK(!bias.defined() ||
                   (bias.dim() == 1 && bias.size(0) == weight.size(0)),
               "[linear] bias must be [", weight.size(0), "], got ",
               bias.sizes());
  LOWMEM_CHECK(!bias.defined() || (bias.dtype() == weight.dtype() &&
                                   bias.device() == weight.device()),
               "[linear] bias must have the weight's dtype and device (",
               weight.dtype(), ", ", weight.device(), "), got ", bias.dtype(),
               ", ", bias.device());
  weight_ = register_parameter("weight", std::move(weight));
  if (bias.defined()) bias_ = register_parameter("bias", std::move(bias));
}

void Linear::reset_parameters() {
  at::NoGradGuard g;
  torch::nn::init::kaiming_uniform_(weight_, std::sqrt(5.0));
  if (bias_.defined()) {
    double bound = 1.0 / std::sqrt(static_cast<double>(in_features()));
    bias_.uniform_(-bound, bound);
  }
}

at::Tensor Linear::forward_impl(const at::Tensor& x) {
  return at::linear(x, weight_, bias_);
}

}  // namespace lowmem::nn
