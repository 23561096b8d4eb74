#include "lowmem/optim/galore_adamw.h"

#include <ATen/ATen.h>
#include <torch/optim/serialize.h>
#include <torch/serialize/archive.h>

#include <cmath>

#include "lowmem/core/check.h"
#include "lowmem/optim/per_param.h"

namespace lowmem::optim {

void GaLoreAdamWOptions::serialize(torch::serialize::OutputArchive& a) const {
  const_cast<GaLoreAdamWOptions*>(this)->for_each_field(
      [&a](const char* name, const auto& f) { a.write(name, c10::IValue(f)); });
}

void GaLoreAdamWOptions::serialize(torch::serialize::InputArchive& a) {
  for_each_field([&a](const char* name, auto& f) {
    c10::IValue v;
    a.read(name, v);
    f = v.to<std::decay_t<decltype(f)>>();
  });
}

void GaLoreAdamWParamState::serialize(
    torch::serialize::OutputArchive& archive) const {
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(step);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(exp_avg);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(exp_avg_sq);
}

void GaLoreAdamWParamState::serialize(torch::serialize::InputArchive& archive) {
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(int64_t, step);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(at::Tensor, exp_avg);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(at::Tensor, exp_avg_sq);
}

void validate(const GaLoreAdamWOptions& o) {
  LOWMEM_CHECK(o.lr() >= 0, "[galore_adamw] lr must be >= 0, got ", o.lr());
  LOWMEM_CHECK(o.beta1() >= 0 && o.beta1() < 1,
               "[galore_adamw] beta1 must be in [0, 1), got ", o.beta1());
  LOWMEM_CHECK(o.beta2() >= 0 && o.beta2() < 1,
               "[galore_adamw] beta2 must be in [0, 1), got ", o.beta2());
  LOWMEM_CHECK(o.eps() >= 0, "[galore_adamw] eps must be >= 0, got ", o.eps());
  LOWMEM_CHECK(o.weight_decay() >= 0,
               "[galore_adamw] weight_decay must be >= 0, got ",
               o.weight_decay());
}

GaLoreAdamW::GaLoreAdamW(std::vector<torch::optim::OptimizerParamGroup> groups,
                         GaLoreAdamWOptions defaults)
    : torch::optim::Optimizer(
          std::move(groups),
          std::make_unique<GaLoreAdamWOptions>(defaults)) {
  validate(defaults);
  for (auto& g : param_groups_)
    validate(static_cast<const GaLoreAdamWOptions&>(g.options()));
}

GaLoreAdamW::GaLoreAdamW(std::vector<at::Tensor> params,
                         GaLoreAdamWOptions defaults)
    : GaLoreAdamW({torch::optim::OptimizerParamGroup(std::move(params))},
                  defaults) {}

at::Tensor GaLoreAdamW::step(LossClosure closure) {
  at::NoGradGuard no_grad;
  at::Tensor loss;
  if (closure) {
    at::AutoGradMode enable(true);
    loss = closure();
  }
  for (auto& group : param_groups_) {
    const auto& o = static_cast<const GaLoreAdamWOptions&>(group.options());
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      const auto state_dtype =
          p.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
      auto g = p.grad().to(state_dtype);
      const auto key = detail::state_key(p);
      auto it = state_.find(key);
      if (it == state_.end()) {
        auto s = std::make_unique<GaLoreAdamWParamState>();
        s->exp_avg(at::zeros_like(g));
        s->exp_avg_sq(at::zeros_like(g));
        it = state_.emplace(key, std::move(s)).first;
      }
      auto& s = static_cast<GaLoreAdamWParamState&>(*it->second);
      s.step(s.step() + 1);
      // adamw.py: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2.
      s.exp_avg().mul_(o.beta1()).add_(g, 1.0 - o.beta1());
      s.exp_avg_sq().mul_(o.beta2()).addcmul_(g, g, 1.0 - o.beta2());
      auto denom = s.exp_avg_sq().sqrt().add_(o.eps());
      double step_size = o.lr();
      if (o.correct_bias()) {
        const double t = static_cast<double>(s.step());
        step_size *= std::sqrt(1.0 - std::pow(o.beta2(), t)) /
                     (1.0 - std::pow(o.beta1(), t));
      }
      if (p.scalar_type() == state_dtype) {
        p.addcdiv_(s.exp_avg(), denom, -step_size);
        if (o.weight_decay() > 0) p.add_(p, -o.lr() * o.weight_decay());
      } else {
        auto p32 = p.to(state_dtype);
        p32.addcdiv_(s.exp_avg(), denom, -step_size);
        if (o.weight_decay() > 0) p32.add_(p32, -o.lr() * o.weight_decay());
        p.copy_(p32);
      }
    }
  }
  return loss;
}

void GaLoreAdamW::save(torch::serialize::OutputArchive& archive) const {
  torch::optim::serialize<GaLoreAdamWParamState, GaLoreAdamWOptions>(archive,
                                                                     *this);
}

void GaLoreAdamW::load(torch::serialize::InputArchive& archive) {
  torch::optim::serialize<GaLoreAdamWParamState, GaLoreAdamWOptions>(archive,
                                                                     *this);
}

std::vector<at::Tensor> GaLoreAdamW::state_tensors() const {
  std::vector<at::Tensor> out;
  for (const auto& kv : state_) {
    const auto& s = static_cast<const GaLoreAdamWParamState&>(*kv.second);
    out.push_back(s.exp_avg());
    out.push_back(s.exp_avg_sq());
  }
  return out;
}

}  // namespace lowmem::optim
