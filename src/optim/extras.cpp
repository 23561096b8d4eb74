#include "lowmem/optim/extras.h"

#include <torch/optim/adagrad.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/rmsprop.h>
#include <torch/optim/sgd.h>

#include <utility>

#include "lowmem/core/memory.h"
#include "lowmem/optim/per_param.h"

namespace lowmem::optim {

std::vector<at::Tensor> state_tensors(const torch::optim::Optimizer& opt) {
  if (auto* ex = dynamic_cast<const OptimizerExtras*>(&opt))
    return ex->state_tensors();
  std::vector<at::Tensor> out;
  for (const auto& kv : opt.state()) {
    const auto* s = kv.second.get();
    if (auto* a = dynamic_cast<const torch::optim::AdamWParamState*>(s)) {
      out.insert(out.end(), {a->exp_avg(), a->exp_avg_sq(), a->max_exp_avg_sq()});
    } else if (auto* b = dynamic_cast<const torch::optim::AdamParamState*>(s)) {
      out.insert(out.end(), {b->exp_avg(), b->exp_avg_sq(), b->max_exp_avg_sq()});
    } else if (auto* c = dynamic_cast<const torch::optim::SGDParamState*>(s)) {
      out.push_back(c->momentum_buffer());
    } else if (auto* d = dynamic_cast<const torch::optim::AdagradParamState*>(s)) {
      out.push_back(d->sum());
    } else if (auto* e = dynamic_cast<const torch::optim::RMSpropParamState*>(s)) {
      out.insert(out.end(), {e->square_avg(), e->momentum_buffer(), e->grad_avg()});
    }
  }
  return out;
}

int64_t state_bytes(const torch::optim::Optimizer& opt) {
  return storage_bytes(state_tensors(opt));
}

void before_forward(torch::optim::Optimizer& opt) {
  if (auto* ex = dynamic_cast<OptimizerExtras*>(&opt)) ex->before_forward();
}

void drop_state(torch::optim::Optimizer& opt, const at::Tensor& param) {
  if (auto* ex = dynamic_cast<OptimizerExtras*>(&opt)) {
    if (ex->forget_state(param)) return;
  }
  opt.state().erase(detail::state_key(param));
}

void stepped_elsewhere(torch::optim::Optimizer& opt, const at::Tensor& param) {
  if (auto* ex = dynamic_cast<OptimizerExtras*>(&opt)) {
    ex->stepped_elsewhere(param);
  }
}

void set_statistics_sync(torch::optim::Optimizer& opt, StatisticsSync sync) {
  if (auto* ex = dynamic_cast<OptimizerExtras*>(&opt)) {
    ex->set_statistics_sync(std::move(sync));
  }
}

void set_ownership(torch::optim::Optimizer& opt, Ownership owns) {
  if (auto* ex = dynamic_cast<OptimizerExtras*>(&opt)) {
    ex->set_ownership(std::move(owns));
  }
}

std::vector<at::Tensor> updated_outside_sync(
    const torch::optim::Optimizer& opt) {
  if (const auto* ex = dynamic_cast<const OptimizerExtras*>(&opt)) {
    return ex->updated_outside_sync();
  }
  return {};
}

void clear_grads(torch::optim::Optimizer& opt) {
  for (auto& group : opt.param_groups())
    for (auto& p : group.params())
      if (p.grad().defined()) p.mutable_grad() = at::Tensor();
}

}  // namespace lowmem::optim
