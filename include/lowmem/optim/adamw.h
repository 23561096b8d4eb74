// AdamW (Loshchilov & Hutter, arXiv 1711.05101) with the semantics and option
// names of torch::optim::AdamW (LibTorch 1.13): decoupled weight decay
// p <- p*(1 - lr*wd) before the moment update, bias correction. Fused: one
// pass over p, g, m, v for float32 CPU tensors (28 B/param); other dtypes and
// devices take an ATen path with fp32 state. Deviation: amsgrad is rejected.
// optim_bits 8 keeps both moments block-wise 8-bit (optim/quant8.h) as
// bitsandbytes' AdamW8bit does: the update dequantizes them, runs the same
// fp32 update, and requantizes (2 bytes + 8/256 per element instead of 8).
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <tuple>
#include <vector>

#include "lowmem/optim/per_param.h"

namespace lowmem::optim {

struct AdamWOptions : FieldOptions<AdamWOptions> {
  AdamWOptions(double lr = 1e-3) : lr_(lr) {}  // NOLINT: torch loader needs it
  // Defaults are torch::optim::AdamWOptions' (1.13).
  TORCH_ARG(double, lr) = 1e-3;
  using betas_t = std::tuple<double, double>;
  TORCH_ARG(betas_t, betas) = std::make_tuple(0.9, 0.999);
  TORCH_ARG(double, eps) = 1e-8;
  TORCH_ARG(double, weight_decay) = 1e-2;
  // Only false is supported (validate() rejects true).
  TORCH_ARG(bool, amsgrad) = false;
  // bitsandbytes' names and defaults (Optimizer2State): 32 (fp32 state) or
  // 8 (block-wise 8-bit moments); parameters with fewer than min_8bit_size
  // elements keep fp32 state.
  TORCH_ARG(int64_t, optim_bits) = 32;
  TORCH_ARG(int64_t, min_8bit_size) = kMin8bitSize;

 public:
  template <class V>
  void for_each_field(V&& v) {
    v("lr", lr_);
    v("beta1", std::get<0>(betas_));
    v("beta2", std::get<1>(betas_));
    v("eps", eps_);
    v("weight_decay", weight_decay_);
    v("amsgrad", amsgrad_);
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

/// Throws c10::Error ("[adamw] ...") naming the first bad value.
void validate(const AdamWOptions& o);

struct AdamWState : FieldState<AdamWState> {
  int64_t step = 0;
  at::Tensor exp_avg;         // like p, fp32 (undefined with 8-bit state)
  at::Tensor exp_avg_sq;      // like p, fp32 (undefined with 8-bit state)
  BlockwiseQ8 exp_avg_q8;     // optim_bits 8: m, signed map
  BlockwiseQ8 exp_avg_sq_q8;  // optim_bits 8: v, unsigned map

  template <class V>
  void for_each_field(V&& v) {
    v("step", step);
    v("exp_avg", exp_avg, StateRole::kLinear);
    v("exp_avg_sq", exp_avg_sq, StateRole::kSquare);
    v("exp_avg_q8", exp_avg_q8, StateRole::kLinear);
    v("exp_avg_sq_q8", exp_avg_sq_q8, StateRole::kSquare);
  }
};

class AdamW final : public PerParamOptimizer<AdamWOptions, AdamWState> {
 public:
  using PerParamOptimizer::PerParamOptimizer;

 private:
  void init_state(const at::Tensor& p, AdamWState& s, const AdamWOptions& o)
      const override;
  void update(
      at::Tensor& p,
      const at::Tensor& grad,
      AdamWState& s,
      const AdamWOptions& o) override;
  const char* tag() const override {
    return "adamw";
  }
};

}  // namespace lowmem::optim
