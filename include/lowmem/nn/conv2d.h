// A Conv2d layer with torch::nn::Conv2d's parameter names ("weight"
// [out, in/groups, k1, k2], "bias" [out]) and initialisation that records its
// input and hooks its output gradient when a CurvatureTap is armed (what
// LinearLike does for linear layers), so SINGD/KFAC can precondition it.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <array>
#include <memory>

#include "lowmem/nn/linear.h"

namespace lowmem::nn {

struct Conv2dOptions {
  int64_t in_channels = 1;
  int64_t out_channels = 1;
  std::array<int64_t, 2> kernel_size{1, 1};
  std::array<int64_t, 2> stride{1, 1};
  std::array<int64_t, 2> padding{0, 0};
  std::array<int64_t, 2> dilation{1, 1};
  int64_t groups = 1;
  bool bias = true;
};

class Conv2d final : public torch::nn::Module {
 public:
  explicit Conv2d(const Conv2dOptions& options);
  /// [B, in, H, W] -> [B, out, O1, O2]; taps as LinearLike::forward.
  at::Tensor forward(const at::Tensor& x);
  at::Tensor& weight() { return weight_; }
  at::Tensor bias() const { return bias_; }
  const Conv2dOptions& options() const { return options_; }
  void set_tap(std::shared_ptr<CurvatureTap> tap) { tap_ = std::move(tap); }
  const std::shared_ptr<CurvatureTap>& tap() const { return tap_; }
  /// Re-draws weight and bias as torch::nn::Conv2d does (global RNG).
  void reset_parameters();

 private:
  Conv2dOptions options_;
  at::Tensor weight_;  // [out, in/groups, k1, k2]
  at::Tensor bias_;    // [out] or undefined
  std::shared_ptr<CurvatureTap> tap_;
};

}  // namespace lowmem::nn
