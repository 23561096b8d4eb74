// A small model built from SlotModule + Linear for the adapter tests:
// blocks.{0,1}.{q,v} [d x d], blocks.{i}.up [2d x d], blocks.{i}.down [d x 2d],
// and a plain torch::nn::Linear head (not a slot).
#pragma once

#include <torch/torch.h>

#include "lowmem/nn/linear.h"
#include "lowmem/nn/slot_module.h"

namespace lowmem::testing {

struct TinyBlock : nn::SlotModule {
  explicit TinyBlock(int64_t d) {
    register_slot("q", std::make_shared<nn::Linear>(d, d));
    register_slot("v", std::make_shared<nn::Linear>(d, d));
    register_slot("up", std::make_shared<nn::Linear>(d, 2 * d));
    register_slot("down", std::make_shared<nn::Linear>(2 * d, d));
  }
  at::Tensor forward(at::Tensor x) {
    x = x + linear("v").forward(torch::tanh(linear("q").forward(x)));
    return x + linear("down").forward(torch::tanh(linear("up").forward(x)));
  }
};

struct TinyModel : torch::nn::Module {
  explicit TinyModel(int64_t d = 8, int64_t blocks = 2, int64_t classes = 3) {
    list = register_module("blocks", torch::nn::ModuleList());
    for (int64_t i = 0; i < blocks; ++i) list->push_back(std::make_shared<TinyBlock>(d));
    head = register_module("head", torch::nn::Linear(d, classes));
  }
  at::Tensor forward(at::Tensor x) {
    for (const auto& b : *list) x = b->as<TinyBlock>()->forward(x);
    return head->forward(x);
  }
  torch::nn::ModuleList list{nullptr};
  torch::nn::Linear head{nullptr};
};

/// Copies of every parameter, by name.
inline std::map<std::string, at::Tensor> snapshot(torch::nn::Module& m) {
  std::map<std::string, at::Tensor> out;
  for (const auto& p : m.named_parameters()) out[p.key()] = p.value().detach().clone();
  return out;
}

/// Message of the c10::Error thrown by f, or "" if none.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

}  // namespace lowmem::testing
