#include "lowmem/models/mlp.h"

#include "lowmem/core/check.h"

#include <ATen/ATen.h>

namespace lowmem::models {

void validate(const MLPConfig& c) {
  LOWMEM_CHECK(
      c.sizes().size() >= 2,
      "[mlp] sizes needs at least {in, out}, got ",
      c.sizes().size(),
      " entries");
  for (int64_t s : c.sizes()) {
    LOWMEM_CHECK(s > 0, "[mlp] sizes must be positive, got ", s);
  }
  const auto& a = c.activation();
  LOWMEM_CHECK(
      a == "relu" || a == "gelu" || a == "tanh" || a == "sigmoid",
      "[mlp] unknown activation '",
      a,
      "' (expected relu, gelu, tanh or sigmoid)");
  LOWMEM_CHECK(
      c.loss() == "ce" || c.loss() == "mse",
      "[mlp] unknown loss '",
      c.loss(),
      "' (expected ce or mse)");
}

MLP::MLP(MLPConfig config) : config_(std::move(config)) {
  validate(config_);
  const auto& s = config_.sizes();
  // nn.Sequential indices: Linear at 0, 2, 4, ...; activations in between.
  for (size_t i = 0; i + 1 < s.size(); ++i) {
    names_.push_back(std::to_string(2 * i));
    register_slot(names_.back(),
                  std::make_shared<nn::Linear>(s[i], s[i + 1], config_.bias()));
  }
}

at::Tensor MLP::forward(const at::Tensor& x) {
  at::Tensor h = x.dim() > 2 ? x.flatten(1) : x;
  const auto& a = config_.activation();
  for (size_t i = 0; i < names_.size(); ++i) {
    h = linear(names_[i]).forward(h);
    if (i + 1 == names_.size())
      break;
    if (a == "relu") {
      h = at::relu(h);
    } else if (a == "gelu") {
      h = at::gelu(h);
    } else if (a == "tanh") {
      h = at::tanh(h);
    } else {
      h = at::sigmoid(h);
    }
  }
  return h;
}

at::Tensor MLP::loss(const at::Tensor& x, const at::Tensor& target) {
  at::Tensor out = loss_precision(forward(x));
  if (config_.loss() == "ce")
    return at::cross_entropy_loss(out, target);
  return at::mse_loss(out, target.to(out.scalar_type()));
}

EvalStats MLP::evaluate(const at::Tensor& x, const at::Tensor& target) {
  at::NoGradGuard no_grad;
  if (config_.loss() == "ce") return cross_entropy_stats(forward(x), target);
  at::Tensor out = loss_precision(forward(x));
  EvalStats s;
  s.count = out.size(0);
  // Per-example loss: squared error summed over outputs, mean per element.
  s.loss_sum =
      at::mse_loss(out, target.to(out.scalar_type()), at::Reduction::Sum)
          .item<double>() /
      static_cast<double>(out.numel() / std::max<int64_t>(1, s.count));
  return s;
}

int64_t mlp_parameter_count(const MLPConfig& c) {
  int64_t n = 0;
  const auto& s = c.sizes();
  for (size_t i = 0; i + 1 < s.size(); ++i) {
    n += s[i] * s[i + 1] + (c.bias() ? s[i + 1] : 0);
  }
  return n;
}

}  // namespace lowmem::models
