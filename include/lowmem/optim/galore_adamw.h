// The AdamW that official GaLore ships (galore_torch/adamw.py, arXiv
// 2403.03507): HuggingFace-style, eps added to sqrt(v) before the bias
// correction, which is folded into the step size, and decoupled weight decay
// applied after the update. Used as GaLore's inner optimizer for parity with
// the official runs, and for plain (unprojected) params. Deviation: state in
// fp32 (fp64 for fp64 params) whatever the param dtype.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/optim/optimizer.h>

#include <vector>

#include "lowmem/optim/extras.h"

namespace lowmem::optim {

struct GaLoreAdamWOptions
    : torch::optim::OptimizerCloneableOptions<GaLoreAdamWOptions> {
  GaLoreAdamWOptions() = default;
  explicit GaLoreAdamWOptions(double lr) : lr_(lr) {}
  TORCH_ARG(double, lr) = 1e-3;           // galore_torch/adamw.py default
  TORCH_ARG(double, beta1) = 0.9;         // betas[0], adamw.py default
  TORCH_ARG(double, beta2) = 0.999;       // betas[1], adamw.py default
  TORCH_ARG(double, eps) = 1e-6;          // adamw.py default (not 1e-8)
  TORCH_ARG(double, weight_decay) = 0.0;  // adamw.py default; decoupled
  TORCH_ARG(bool, correct_bias) = true;   // adamw.py default

 public:
  template <class V>
  void for_each_field(V&& v) {
    v("lr", lr_);
    v("beta1", beta1_);
    v("beta2", beta2_);
    v("eps", eps_);
    v("weight_decay", weight_decay_);
    v("correct_bias", correct_bias_);
  }
  double get_lr() const override { return lr_; }
  void set_lr(const double lr) override { lr_ = lr; }
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
};

/// Throws "[galore_adamw] ..." naming the bad value.
void validate(const GaLoreAdamWOptions& options);

struct GaLoreAdamWParamState
    : torch::optim::OptimizerCloneableParamState<GaLoreAdamWParamState> {
  TORCH_ARG(int64_t, step) = 0;
  TORCH_ARG(at::Tensor, exp_avg);     // m, like the param, fp32
  TORCH_ARG(at::Tensor, exp_avg_sq);  // v, like the param, fp32

 public:
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
};

class GaLoreAdamW : public torch::optim::Optimizer, public OptimizerExtras {
 public:
  explicit GaLoreAdamW(std::vector<torch::optim::OptimizerParamGroup> groups,
                       GaLoreAdamWOptions defaults = {});
  explicit GaLoreAdamW(std::vector<at::Tensor> params,
                       GaLoreAdamWOptions defaults = {});
  at::Tensor step(LossClosure closure = nullptr) override;
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;
  std::vector<at::Tensor> state_tensors() const override;
};

}  // namespace lowmem::optim
