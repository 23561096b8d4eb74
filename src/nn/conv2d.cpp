#include "lowmem/nn/conv2d.h"

#include <ATen/ATen.h>
#include <torch/nn/init.h>

#include <cmath>

#include "lowmem/core/check.h"

namespace lowmem::nn {

Conv2d::Conv2d(const Conv2dOptions& o) : options_(o) {
  LOWMEM_CHECK(
      o.in_channels > 0 && o.out_channels > 0 && o.groups > 0 &&
          o.in_channels % o.groups == 0 && o.out_channels % o.groups == 0,
      "[conv2d] channels must be positive multiples of groups, got in=",
      o.in_channels, " out=", o.out_channels, " groups=", o.groups);
  for (int i = 0; i < 2; ++i)
    LOWMEM_CHECK(
        o.kernel_size[i] > 0 && o.stride[i] > 0 && o.dilation[i] > 0 &&
            o.padding[i] >= 0,
        "[conv2d] bad kernel/stride/dilation/padding in dim ", i);
  weight_ = register_parameter(
      "weight", at::empty({o.out_channels, o.in_channels / o.groups,
                           o.kernel_size[0], o.kernel_size[1]}));
  if (o.bias) bias_ = register_parameter("bias", at::empty({o.out_channels}));
  reset_parameters();
}

void Conv2d::reset_parameters() {
  at::NoGradGuard g;
  torch::nn::init::kaiming_uniform_(weight_, std::sqrt(5.0));
  if (bias_.defined()) {
    double fan_in = static_cast<double>(weight_[0].numel());
    double bound = 1.0 / std::sqrt(fan_in);
    bias_.uniform_(-bound, bound);
  }
}

at::Tensor Conv2d::forward(const at::Tensor& x) {
  LOWMEM_CHECK(
      x.dim() == 4 && x.size(1) == options_.in_channels,
      "[conv2d] expected input [B, ", options_.in_channels, ", H, W], got ",
      x.sizes());
  const auto& o = options_;
  auto run = [&] {
    return at::conv2d(x, weight_, bias_, o.stride, o.padding, o.dilation,
                      o.groups);
  };
  if (!tap_ || !tap_->armed()) return run();
  tap_->record_input(x.detach());
  at::Tensor out = run();
  if (out.requires_grad()) {
    std::weak_ptr<CurvatureTap> weak = tap_;
    out.register_hook([weak](const at::Tensor& g) {
      if (auto t = weak.lock()) t->record_grad_output(g.detach());
    });
  }
  return out;
}

}  // namespace lowmem::nn
