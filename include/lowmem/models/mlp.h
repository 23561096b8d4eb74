// MLP: a plain multi-layer perceptron whose linear layers are slots named as
// the indices of PyTorch's nn.Sequential(Linear, act, Linear, act, ..., Linear)
// so parameter names match it ("0.weight", "0.bias", "2.weight", ...).
#pragma once

#include "lowmem/models/layers.h"

#include <torch/arg.h>

namespace lowmem::models {

struct MLPConfig {
  /// Layer widths {in, hidden..., out}; at least two entries.
  TORCH_ARG(std::vector<int64_t>, sizes) = std::vector<int64_t>{784, 256, 10};
  /// "relu", "gelu" (exact erf), "tanh" or "sigmoid".
  TORCH_ARG(std::string, activation) = "relu";
  TORCH_ARG(bool, bias) = true;
  /// "ce" (classification; target [B] int64) or "mse" (target like output).
  TORCH_ARG(std::string, loss) = "ce";
};

void validate(const MLPConfig& c);

class MLP : public Model {
 public:
  explicit MLP(MLPConfig config = {});
  /// x [B, ...] -> [B, out]; inputs with more than 2 dims are flattened from
  /// dim 1 (so [B, 1, 28, 28] images work directly).
  at::Tensor forward(const at::Tensor& x) override;
  at::Tensor loss(const at::Tensor& x, const at::Tensor& target) override;
  EvalStats evaluate(const at::Tensor& x, const at::Tensor& target) override;
  std::string kind() const override {
    return "mlp";
  }
  const MLPConfig& config() const {
    return config_;
  }
  /// Slot names in order ("0", "2", ...).
  const std::vector<std::string>& layer_names() const {
    return names_;
  }

 private:
  MLPConfig config_;
  std::vector<std::string> names_;
};

int64_t mlp_parameter_count(const MLPConfig& c);

}  // namespace lowmem::models
