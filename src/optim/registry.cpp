// The built-in rows of the optimizer registry (optim/registry.h) and the
// state-role / weight-decay lookups that read it (optim/state_roles.h).
#include "lowmem/optim/registry.h"

#include <torch/optim/adagrad.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/rmsprop.h>
#include <torch/optim/sgd.h>

#include <mutex>

#include "lowmem/core/check.h"
#include "lowmem/optim/adafactor.h"
#include "lowmem/optim/adamw.h"
#include "lowmem/optim/came.h"
#include "lowmem/optim/galore_adamw.h"
#include "lowmem/optim/kfac.h"
#include "lowmem/optim/singd.h"
#include "lowmem/optim/torch_sgd.h"

namespace lowmem::optim {

torch::optim::SGDOptions TorchSgdOptions::options() const {
  LOWMEM_CHECK(lr >= 0.0, "[sgd] lr must be >= 0, got ", lr);
  LOWMEM_CHECK(momentum >= 0.0, "[sgd] momentum must be >= 0, got ", momentum);
  LOWMEM_CHECK(weight_decay >= 0.0, "[sgd] weight_decay must be >= 0, got ",
               weight_decay);
  LOWMEM_CHECK(!nesterov || (momentum > 0.0 && dampening == 0.0),
               "[sgd] nesterov needs momentum > 0 and dampening 0");
  return torch::optim::SGDOptions(lr)
      .momentum(momentum)
      .dampening(dampening)
      .weight_decay(weight_decay)
      .nesterov(nesterov);
}

namespace {

// torch's Adam and AdamW states (exp_avg, exp_avg_sq, max_exp_avg_sq).
template <class S>
bool visit_adam_like(torch::optim::OptimizerParamState& state,
                     const StateTensorFn& fn) {
  auto* s = dynamic_cast<S*>(&state);
  if (s == nullptr) return false;
  at::Tensor m = s->exp_avg(), v = s->exp_avg_sq(), vmax = s->max_exp_avg_sq();
  fn("exp_avg", m, StateRole::kLinear);
  fn("exp_avg_sq", v, StateRole::kSquare);
  fn("max_exp_avg_sq", vmax, StateRole::kSquare);
  s->exp_avg(m);
  s->exp_avg_sq(v);
  s->max_exp_avg_sq(vmax);
  return true;
}

template <class O>
c10::optional<double> decay_of(const torch::optim::OptimizerOptions& o) {
  if (auto* x = dynamic_cast<const O*>(&o)) return x->weight_decay();
  return c10::nullopt;
}

OptimizerKind torch_sgd_row() {
  OptimizerKind k;
  k.name = "sgd";
  k.help = "SGD (torch::optim::SGD)";
  k.options = [] {
    return Section::of<TorchSgdOptions>("sgd", "SGD (torch::optim::SGD)");
  };
  k.make = [](ParamGroups groups, const Section& s) -> OptimizerPtr {
    return std::make_unique<torch::optim::SGD>(
        std::move(groups), s.get<TorchSgdOptions>().options());
  };
  k.visit_state = [](torch::optim::OptimizerParamState& state,
                     const StateTensorFn& fn) {
    auto* s = dynamic_cast<torch::optim::SGDParamState*>(&state);
    if (s == nullptr) return false;
    at::Tensor b = s->momentum_buffer();
    fn("momentum_buffer", b, StateRole::kLinear);
    s->momentum_buffer(b);
    return true;
  };
  k.weight_decay = decay_of<torch::optim::SGDOptions>;
  // torch's SGD keeps a momentum buffer (a clone of the first gradient, in
  // the parameter's dtype) when momentum != 0, nothing otherwise.
  k.state_bytes = [](const at::Tensor& param, const Section& s) -> int64_t {
    if (s.get<TorchSgdOptions>().momentum == 0.0) return 0;
    return param.numel() * static_cast<int64_t>(param.element_size());
  };
  return k;
}

template <class Opt, class Options>
OptimizerKind layer_optimizer(std::string name, std::string help) {
  OptimizerKind k;
  k.name = name;
  k.help = help;
  k.options = [name, help] { return Section::of<Options>(name, help); };
  k.make_for_layers = [](std::vector<nn::CurvatureLayer> layers,
                         const Section& s) -> OptimizerPtr {
    return std::make_unique<Opt>(std::move(layers), s.get<Options>());
  };
  return k;
}

// torch's Adam and AdamW are no config choices (lowmem's AdamW is), but
// GaLore accepts them as inner optimizers: their state roles and decay are
// known here.
const std::vector<std::pair<StateVisitor, DecayReader>>& torch_builtins() {
  static const std::vector<std::pair<StateVisitor, DecayReader>> b = {
      {visit_adam_like<torch::optim::AdamWParamState>,
       decay_of<torch::optim::AdamWOptions>},
      {visit_adam_like<torch::optim::AdamParamState>,
       decay_of<torch::optim::AdamOptions>},
      // Decay readable; state roles unknown (reproject refuses them).
      {nullptr, decay_of<torch::optim::RMSpropOptions>},
      {nullptr, decay_of<torch::optim::AdagradOptions>},
  };
  return b;
}

std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}

std::vector<OptimizerKind>& table() {
  // One row per optimizer: name, help, options and factory.
  static std::vector<OptimizerKind> rows = {
      param_group_optimizer<AdamW, AdamWOptions>("adamw",
                                                 "AdamW (optim/adamw.h)"),
      torch_sgd_row(),
      param_group_optimizer<CAME, CameOptions>("came", "CAME (optim/came.h)"),
      param_group_optimizer<Adafactor, AdafactorOptions>(
          "adafactor", "Adafactor (optim/adafactor.h)"),
      param_group_optimizer<GaLoreAdamW, GaLoreAdamWOptions>(
          "galore_adamw", "GaLore's official AdamW (optim/galore_adamw.h)"),
      layer_optimizer<SINGD, SingdOptions>("singd", "SINGD (optim/singd.h)"),
      layer_optimizer<KFAC, KfacOptions>("kfac", "KFAC (optim/kfac.h)"),
  };
  return rows;
}

std::string names(const std::vector<OptimizerKind>& rows) {
  std::string s;
  for (const auto& r : rows) s += (s.empty() ? "" : ", ") + r.name;
  return s;
}

}  // namespace

const std::vector<OptimizerKind>& optimizers() { return table(); }

const OptimizerKind* find_optimizer(const std::string& name) {
  for (const auto& k : table())
    if (k.name == name) return &k;
  return nullptr;
}

const OptimizerKind& optimizer_kind(const std::string& name) {
  const OptimizerKind* k = find_optimizer(name);
  if (k == nullptr) {
    throw ConfigError("unknown optimizer '" + name +
                      "' (expected one of: " + names(table()) + ")");
  }
  return *k;
}

void register_optimizer(OptimizerKind kind) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  if (kind.name.empty() || find_optimizer(kind.name) != nullptr) {
    throw ConfigError("register_optimizer: the name '" + kind.name +
                      "' is empty or taken (" + names(table()) + ")");
  }
  if (!kind.options || (!kind.make && !kind.make_for_layers)) {
    throw ConfigError("register_optimizer: '" + kind.name +
                      "' needs options and a factory");
  }
  table().push_back(std::move(kind));
}

bool visit_state(torch::optim::OptimizerParamState& state,
                 const StateTensorFn& fn) {
  if (auto* r = dynamic_cast<detail::RoledState*>(&state)) {
    r->visit_roles(fn);
    return true;
  }
  for (const auto& k : table())
    if (k.visit_state && k.visit_state(state, fn)) return true;
  for (const auto& b : torch_builtins())
    if (b.first && b.first(state, fn)) return true;
  return false;
}

c10::optional<double> weight_decay_of(
    const torch::optim::OptimizerOptions& options) {
  if (auto* d = dynamic_cast<const detail::DecayOptions*>(&options))
    return d->weight_decay_field();
  for (const auto& k : table()) {
    if (!k.weight_decay) continue;
    if (auto wd = k.weight_decay(options)) return wd;
  }
  for (const auto& b : torch_builtins())
    if (auto wd = b.second(options)) return wd;
  return c10::nullopt;
}

}  // namespace lowmem::optim
