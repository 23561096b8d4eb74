// CAME: Confidence-guided Adaptive Memory Efficient optimizer (Luo et al.,
// ACL 2023, arXiv 2307.02047), faithful to the official yangluo7/CAME
// came_pytorch/CAME.py (current version, b368dc0): factored second moment
// over the last two dims, RMS update clipping, no bias correction, 1-D params
// without confidence scaling (Delta = clone of m, not the older aliasing bug).
// Deviations: state is always fp32; lr == 0 is accepted (schedulers warm up
// from 0; official asserts lr > 0); the never-read `RMS` state is not kept.
// optim_bits 8 (lowmem's addition, bitsandbytes' option names) keeps the
// first moment m block-wise 8-bit with the signed dynamic map
// (optim/quant8.h): dequantized for the update, requantized after it; the
// factored statistics are small and stay fp32.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <tuple>
#include <vector>

#include "lowmem/optim/per_param.h"

namespace lowmem::optim {

struct CameOptions : FieldOptions<CameOptions> {
  // lr: required in the official code (lr=None asserts > 0); 2e-4 is the
  // value of the official README example.
  CameOptions(double lr = 2e-4) : lr_(lr) {}  // NOLINT: torch loader needs it
  TORCH_ARG(double, lr) = 2e-4;
  using eps_t = std::tuple<double, double>;
  // (eps1 added to g^2, eps2 added to the instability); official default.
  TORCH_ARG(eps_t, eps) = std::make_tuple(1e-30, 1e-16);
  // RMS threshold of the update; official default.
  TORCH_ARG(double, clip_threshold) = 1.0;
  using betas_t = std::tuple<double, double, double>;
  // (beta1 momentum, beta2 second moment, beta3 instability); official.
  TORCH_ARG(betas_t, betas) = std::make_tuple(0.9, 0.999, 0.9999);
  // Decoupled: p <- p - lr*wd*p before the update; official default 0.
  TORCH_ARG(double, weight_decay) = 0.0;
  // 32 or 8 (8-bit m); params with fewer than min_8bit_size elements keep
  // fp32 state (bitsandbytes' names and defaults).
  TORCH_ARG(int64_t, optim_bits) = 32;
  TORCH_ARG(int64_t, min_8bit_size) = kMin8bitSize;

 public:
  /// Visits every scalar field: v("lr", lr_), v("eps1", ...), ...
  template <class V>
  void for_each_field(V&& v) {
    v("lr", lr_);
    v("eps1", std::get<0>(eps_));
    v("eps2", std::get<1>(eps_));
    v("clip_threshold", clip_threshold_);
    v("beta1", std::get<0>(betas_));
    v("beta2", std::get<1>(betas_));
    v("beta3", std::get<2>(betas_));
    v("weight_decay", weight_decay_);
    v("optim_bits", optim_bits_);
    v("min_8bit_size", min_8bit_size_);
  }
  double get_lr() const override {
    return lr_;
  }
  void set_lr(const double lr) override {
    lr_ = lr;
  }
};

/// Throws c10::Error ("[came] ...") naming the first bad value.
void validate(const CameOptions& o);

struct CameState : FieldState<CameState> {
  int64_t step = 0;
  at::Tensor exp_avg;          // m, like p, fp32
  at::Tensor exp_avg_sq_row;   // r, shape[:-1] (ndim >= 2)
  at::Tensor exp_avg_sq_col;   // c, shape[:-2] + shape[-1:] (ndim >= 2)
  at::Tensor exp_avg_res_row;  // R, instability rows (ndim >= 2)
  at::Tensor exp_avg_res_col;  // C, instability columns (ndim >= 2)
  at::Tensor exp_avg_sq;       // v, like p (ndim < 2)
  BlockwiseQ8 exp_avg_q8;      // optim_bits 8: m (exp_avg undefined)

  template <class V>
  void for_each_field(V&& v) {
    v("step", step);
    v("exp_avg", exp_avg, StateRole::kLinear);
    v("exp_avg_sq_row", exp_avg_sq_row, StateRole::kRowSquares);
    v("exp_avg_sq_col", exp_avg_sq_col, StateRole::kColSquares);
    v("exp_avg_res_row", exp_avg_res_row, StateRole::kRowSquares);
    v("exp_avg_res_col", exp_avg_res_col, StateRole::kColSquares);
    v("exp_avg_sq", exp_avg_sq, StateRole::kSquare);
    v("exp_avg_q8", exp_avg_q8, StateRole::kLinear);
  }
};

class CAME final : public PerParamOptimizer<CameOptions, CameState> {
 public:
  using PerParamOptimizer::PerParamOptimizer;

 private:
  void init_state(const at::Tensor& p, CameState& s, const CameOptions& o)
      const override;
  void update(
      at::Tensor& p,
      const at::Tensor& grad,
      CameState& s,
      const CameOptions& o) override;
  // The update with first moment `m` (s.exp_avg, or the dequantized 8-bit m).
  void step_with(at::Tensor& p, const at::Tensor& grad, at::Tensor& m,
                 CameState& s, const CameOptions& o);
  const char* tag() const override {
    return "came";
  }
};

}  // namespace lowmem::optim
