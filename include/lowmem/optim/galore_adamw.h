// The AdamW that official GaLore ships (galore_torch/adamw.py, arXiv
// 2403.03507): HuggingFace-style, eps added to sqrt(v) before the bias
// correction, which is folded into the step size, and decoupled weight decay
// applied after the update. Used as GaLore's inner optimizer for parity with
// the official runs, and for plain (unprojected) params. Deviation: state in
// fp32 (fp64 for fp64 params) whatever the param dtype. Built on
// PerParamOptimizer like CAME, Adafactor and AdamW (save/load, state roles).
// optim_bits 8 keeps m and v block-wise 8-bit (optim/quant8.h): the paper's
// 8-bit GaLore. Official GaLoreAdamW8bit subclasses bitsandbytes'
// Optimizer2State, so its update is bitsandbytes' 8-bit Adam (eps added to
// sqrt(v) / sqrt(1 - beta2^t), decay inside the kernel); here the 8-bit
// state keeps this optimizer's own update (galore inner `adamw` with
// optim_bits 8 gives bitsandbytes' rule).
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <vector>

#include "lowmem/optim/per_param.h"

namespace lowmem::optim {

struct GaLoreAdamWOptions : FieldOptions<GaLoreAdamWOptions> {
  GaLoreAdamWOptions(double lr = 1e-3) : lr_(lr) {}  // NOLINT: torch loader
  TORCH_ARG(double, lr) = 1e-3;           // galore_torch/adamw.py default
  TORCH_ARG(double, beta1) = 0.9;         // betas[0], adamw.py default
  TORCH_ARG(double, beta2) = 0.999;       // betas[1], adamw.py default
  TORCH_ARG(double, eps) = 1e-6;          // adamw.py default (not 1e-8)
  TORCH_ARG(double, weight_decay) = 0.0;  // adamw.py default; decoupled
  TORCH_ARG(bool, correct_bias) = true;   // adamw.py default
  // bitsandbytes' names and defaults: 32 or 8 (8-bit m and v); params with
  // fewer than min_8bit_size elements keep fp32 state.
  TORCH_ARG(int64_t, optim_bits) = 32;
  TORCH_ARG(int64_t, min_8bit_size) = kMin8bitSize;

 public:
  template <class V>
  void for_each_field(V&& v) {
    v("lr", lr_);
    v("beta1", beta1_);
    v("beta2", beta2_);
    v("eps", eps_);
    v("weight_decay", weight_decay_);
    v("correct_bias", correct_bias_);
    v("optim_bits", optim_bits_);
    v("min_8bit_size", min_8bit_size_);
  }
  double get_lr() const override { return lr_; }
  void set_lr(const double lr) override { lr_ = lr; }
};

/// Throws "[galore_adamw] ..." naming the bad value.
void validate(const GaLoreAdamWOptions& options);

struct GaLoreAdamWState : FieldState<GaLoreAdamWState> {
  int64_t step = 0;
  at::Tensor exp_avg;         // m, like the param, fp32 (fp64 for fp64 params)
  at::Tensor exp_avg_sq;      // v, like the param
  BlockwiseQ8 exp_avg_q8;     // optim_bits 8: m (exp_avg undefined)
  BlockwiseQ8 exp_avg_sq_q8;  // optim_bits 8: v (exp_avg_sq undefined)
  template <class V>
  void for_each_field(V&& v) {
    v("step", step);
    v("exp_avg", exp_avg, StateRole::kLinear);
    v("exp_avg_sq", exp_avg_sq, StateRole::kSquare);
    v("exp_avg_q8", exp_avg_q8, StateRole::kLinear);
    v("exp_avg_sq_q8", exp_avg_sq_q8, StateRole::kSquare);
  }
};

class GaLoreAdamW final
    : public PerParamOptimizer<GaLoreAdamWOptions, GaLoreAdamWState> {
 public:
  using PerParamOptimizer::PerParamOptimizer;

 private:
  void init_state(const at::Tensor& p, GaLoreAdamWState& s,
                  const GaLoreAdamWOptions& o) const override;
  void update(at::Tensor& p, const at::Tensor& grad, GaLoreAdamWState& s,
              const GaLoreAdamWOptions& o) override;
  const char* tag() const override { return "galore_adamw"; }
};

}  // namespace lowmem::optim
