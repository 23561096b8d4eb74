// Shared fixtures of the GaLore / projected-adapter tests: a two-layer tanh
// MLP built from SlotModule linears, fixed data, and inner-optimizer factories.
#pragma once

#include "lowmem/nn/slot_module.h"
#include "lowmem/optim/adafactor.h"
#include "lowmem/optim/came.h"
#include "lowmem/optim/galore.h"
#include "lowmem/optim/galore_adamw.h"
#include "lowmem/optim/galore_adapter.h"
#include "lowmem/projection/projected_linear.h"
#include "testing/pch.h"

namespace galore_test {

namespace la = lowmem::nn;
namespace lpj = lowmem::projection;
namespace lo = lowmem::optim;

struct Mlp : la::SlotModule {
  explicit Mlp(std::vector<int64_t> sizes) {
    for (size_t i = 0; i + 1 < sizes.size(); ++i)
      register_slot("fc" + std::to_string(i),
                    std::make_shared<la::Linear>(sizes[i], sizes[i + 1]));
    n = sizes.size() - 1;
  }
  at::Tensor forward(at::Tensor x) {
    for (size_t i = 0; i < n; ++i) {
      x = linear("fc" + std::to_string(i)).forward(x);
      if (i + 1 < n) x = torch::tanh(x);
    }
    return x;
  }
  size_t n;
};

inline std::shared_ptr<Mlp> make_mlp(std::vector<int64_t> sizes,
                                     torch::Dtype dtype, uint64_t seed = 0) {
  torch::manual_seed(seed);
  auto m = std::make_shared<Mlp>(sizes);
  m->to(dtype);
  return m;
}

struct Batch {
  at::Tensor x, y;
};

inline std::vector<Batch> make_data(int steps, int64_t batch, int64_t in,
                                    int64_t out, torch::Dtype dtype) {
  torch::manual_seed(123);
  std::vector<Batch> d;
  for (int t = 0; t < steps; ++t)
    d.push_back({torch::randn({batch, in}, dtype),
                 torch::randn({batch, out}, dtype)});
  return d;
}

inline at::Tensor loss_of(Mlp& m, const Batch& b) {
  return (m.forward(b.x) - b.y).pow(2).mean();
}

using Groups = std::vector<torch::optim::OptimizerParamGroup>;

inline lo::InnerFactory sgd(double lr = 0.05, double momentum = 0.9) {
  return [=](Groups g) {
    return std::make_unique<torch::optim::SGD>(
        std::move(g), torch::optim::SGDOptions(lr).momentum(momentum));
  };
}
inline lo::InnerFactory adamw(double lr = 1e-2, double wd = 0.0) {
  return [=](Groups g) {
    return std::make_unique<torch::optim::AdamW>(
        std::move(g), torch::optim::AdamWOptions(lr).weight_decay(wd));
  };
}
inline lo::InnerFactory came(double lr = 1e-2) {
  return [=](Groups g) {
    return std::make_unique<lo::CAME>(std::move(g), lo::CameOptions(lr));
  };
}
inline lo::InnerFactory adafactor(bool scale_parameter, double lr = 1e-2) {
  return [=](Groups g) {
    return std::make_unique<lo::Adafactor>(
        std::move(g), lo::AdafactorOptions(lr)
                          .relative_step(false)
                          .scale_parameter(scale_parameter));
  };
}

/// Params of `m` with requires_grad that are not adapter A's.
inline std::vector<at::Tensor> plain_params(
    torch::nn::Module& m,
    const std::vector<std::shared_ptr<lowmem::projection::ProjectedLinear>>&
        layers) {
  std::vector<at::Tensor> out;
  for (auto& p : m.parameters()) {
    bool is_a = false;
    for (auto& l : layers)
      is_a |= p.unsafeGetTensorImpl() == l->a().unsafeGetTensorImpl();
    if (p.requires_grad() && !is_a) out.push_back(p);
  }
  return out;
}

/// Max |difference| between the effective weights and biases of two models
/// with the same slots.
inline double max_weight_diff(Mlp& a, Mlp& b) {
  double d = 0;
  for (auto& [name, slot] : a.slots()) {
    auto& other = b.linear(name);
    d = std::max(d, (slot->effective_weight() - other.effective_weight())
                        .abs().max().item<double>());
    d = std::max(d, (slot->bias() - other.bias()).abs().max().item<double>());
  }
  return d;
}

}  // namespace galore_test
