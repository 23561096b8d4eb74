// Member definitions of PerParamOptimizer. Include this only from the .cpp
// that explicitly instantiates PerParamOptimizer<Options, State> (it pulls in
// the serialization headers), e.g. `template class PerParamOptimizer<...>;`.
#pragma once

#include <ATen/core/grad_mode.h>
#include <torch/optim/serialize.h>

#include "lowmem/core/check.h"
#include "lowmem/optim/per_param.h"

namespace lowmem::optim {

template <class Options, class State>
PerParamOptimizer<Options, State>::PerParamOptimizer(
    std::vector<torch::optim::OptimizerParamGroup> groups, Options defaults)
    : torch::optim::Optimizer(std::move(groups),
                              std::make_unique<Options>(defaults)) {
  validate(defaults);
  for (const auto& g : param_groups_) {
    validate(static_cast<const Options&>(g.options()));
  }
}

template <class Options, class State>
PerParamOptimizer<Options, State>::PerParamOptimizer(
    std::vector<at::Tensor> params, Options defaults)
    : PerParamOptimizer({torch::optim::OptimizerParamGroup(std::move(params))},
                        std::move(defaults)) {}

template <class Options, class State>
at::Tensor PerParamOptimizer<Options, State>::step(LossClosure closure) {
  at::NoGradGuard no_grad;
  at::Tensor loss;
  if (closure != nullptr) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  for (auto& group : param_groups_) {
    const auto& o = static_cast<const Options&>(group.options());
    validate(o);
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      const at::Tensor& g = p.grad();
      LOWMEM_CHECK(
          !g.is_sparse(), "[", tag(), "] sparse gradients are not supported");
      LOWMEM_CHECK(
          g.sizes() == p.sizes(),
          "[", tag(), "] gradient shape ", g.sizes(),
          " differs from parameter shape ", p.sizes());
      auto key = detail::state_key(p);
      auto it = state_.find(key);
      if (it == state_.end()) {
        auto s = std::make_unique<State>();
        init_state(p, *s, o);
        it = state_.emplace(std::move(key), std::move(s)).first;
      }
      auto& s = static_cast<State&>(*it->second);
      ++s.step;
      update(p, g, s, o);
    }
  }
  return loss;
}

template <class Options, class State>
void PerParamOptimizer<Options, State>::save(
    torch::serialize::OutputArchive& archive) const {
  torch::optim::serialize<State, Options>(archive, *this);
}

template <class Options, class State>
void PerParamOptimizer<Options, State>::load(
    torch::serialize::InputArchive& archive) {
  torch::optim::serialize<State, Options>(archive, *this);
  // Unlike torch::optim (1.13, C++), restore each group's options too (lr,
  // betas, ...), as Python's load_state_dict does: a resumed run continues
  // with the saved hyperparameters (and LR-scheduler-modified lrs).
  torch::serialize::InputArchive groups_archive;
  archive.read("param_groups", groups_archive);
  std::vector<std::pair<
      std::vector<std::string>,
      std::unique_ptr<torch::optim::OptimizerOptions>>>
      saved;
  torch::optim::detail::serialize<Options>(groups_archive, saved);
  for (size_t i = 0; i < saved.size() && i < param_groups_.size(); ++i) {
    param_groups_[i].set_options(std::move(saved[i].second));
  }
  // Loaded tensors come back on the CPU: move state next to its parameter.
  for (auto& group : param_groups_) {
    for (auto& p : group.params()) {
      auto it = state_.find(detail::state_key(p));
      if (it == state_.end()) continue;
      static_cast<State&>(*it->second)
          .for_each_field([&](const char*, auto& f, auto...) {
            using F = std::decay_t<decltype(f)>;
            if constexpr (std::is_same_v<F, at::Tensor>) {
              if (f.defined() && f.device() != p.device()) f = f.to(p.device());
            } else if constexpr (std::is_same_v<F, BlockwiseQ8>) {
              f.to(p.device());
            }
          });
    }
  }
}

template <class Options, class State>
std::vector<at::Tensor> PerParamOptimizer<Options, State>::state_tensors()
    const {
  std::vector<at::Tensor> out;
  for (const auto& kv : state_) {
    auto t = static_cast<const State&>(*kv.second).tensors();
    out.insert(out.end(), t.begin(), t.end());
  }
  return out;
}

template <class Options, class State>
const State* PerParamOptimizer<Options, State>::state_of(
    const at::Tensor& param) const {
  auto it = state_.find(detail::state_key(param));
  return it == state_.end() ? nullptr
                            : static_cast<const State*>(it->second.get());
}

template <class Options, class State>
int64_t PerParamOptimizer<Options, State>::initial_state_bytes(
    const at::Tensor& param) const {
  State s;
  init_state(param, s, static_cast<const Options&>(defaults()));
  int64_t bytes = 0;
  for (const auto& t : s.tensors())
    bytes += t.numel() * static_cast<int64_t>(t.element_size());
  return bytes;
}

}  // namespace lowmem::optim
