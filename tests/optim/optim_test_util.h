// Helpers shared by the optim tests.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "lowmem/optim/per_param.h"

namespace lowmem::testing {

/// Leaf parameters (requires_grad) initialised from `init.<name>` entries.
inline std::map<std::string, torch::Tensor> golden_params(
    const std::map<std::string, torch::Tensor>& d) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& kv : d) {
    if (kv.first.rfind("init.", 0) == 0) {
      out[kv.first.substr(5)] = kv.second.clone().set_requires_grad(true);
    }
  }
  return out;
}

inline std::vector<torch::Tensor> values(
    const std::map<std::string, torch::Tensor>& m) {
  std::vector<torch::Tensor> v;
  for (const auto& kv : m) v.push_back(kv.second);
  return v;
}

/// Sets p.grad to a copy of g.
inline void set_grad(torch::Tensor& p, const torch::Tensor& g) {
  p.mutable_grad() = g.detach().clone().to(p.scalar_type());
}

/// RAII switch to the device-generic ATen path of lowmem's optimizers.
struct ReferencePath {
  explicit ReferencePath(bool on) : old(optim::detail::reference_path()) {
    optim::detail::set_reference_path(on);
  }
  ~ReferencePath() {
    optim::detail::set_reference_path(old);
  }
  bool old;
};

}  // namespace lowmem::testing
