#include "lowmem/optim/galore.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/nn/module.h>
#include <torch/serialize/archive.h>

#include <unordered_set>

#include "lowmem/core/check.h"
#include "lowmem/core/profile.h"
#include "lowmem/nn/slot_module.h"
#include "lowmem/optim/galore_adapter.h"
#include "lowmem/optim/galore_state.h"
#include "lowmem/optim/per_param.h"
#include "lowmem/optim/state_roles.h"

namespace lowmem::optim {

struct GaLore::Slot {
  Slot(at::Tensor p, projection::ProjectorOptions o, int64_t index)
      : param(std::move(p)),
        projector(std::move(o), param.size(0), param.numel() / param.size(0),
                  index) {}
  /// A gradient as the m x n matrix the projector sees ([m, rest...] ->
  /// [m, prod(rest)]; a view for 2-D parameters).
  at::Tensor matrix(const at::Tensor& g) const {
    return g.dim() == 2 ? g : g.reshape({param.size(0), -1});
  }
  at::Tensor param;                 // [m, n] or [m, d1, d2, ...]
  projection::Projector projector;  // shared with the adapter form
  at::Tensor proxy;  // inner optimizer's tensor, low-rank shape while stepping
  at::Tensor acc;    // accumulated projected gradients (hook modes)
  int64_t micro = 0;
  int64_t step = 0;
  size_t group = 0;  // wrapper group
  std::shared_ptr<torch::autograd::Node> node;
  uintptr_t hook_key = 0;
};

struct GaLore::Plain {
  at::Tensor param;
  at::Tensor stash;  // accumulated gradient (hook modes)
  int64_t micro = 0;
  size_t group = 0;
  std::shared_ptr<torch::autograd::Node> node;
  uintptr_t hook_key = 0;
};

// Runs after AccumulateGrad of a param has written .grad (the LibTorch 1.13
// equivalent of register_post_accumulate_grad_hook).
struct GaLoreHook : torch::autograd::FunctionPostHook {
  GaLoreHook(GaLore* o, bool p, size_t i) : owner(o), projected(p), index(i) {}
  torch::autograd::variable_list operator()(
      const torch::autograd::variable_list& outputs,
      const torch::autograd::variable_list& /*inputs*/) override {
    owner->on_grad(projected, index);
    return outputs;
  }
  GaLore* owner;
  bool projected;
  size_t index;
};

namespace {

using detail::state_key;

at::ScalarType low_dtype(const at::Tensor& p) {
  return p.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void transfer_copy_state(torch::optim::Optimizer& from, const at::Tensor& from_key,
torch::optim::Optimizer& to, const at::Tensor& to_key) {
  auto it = from.state().find(state_key(from_key));
  if (it == from.state().end()) {
    to.state().erase(state_key(to_key));
    return;
  }
  to.state()[state_key(to_key)] = it->second->clone();
}

}  // namespace

void validate(const GaLoreOptions& o) {
  projection::validate(o.projector());
  LOWMEM_CHECK(o.weight_decay() >= 0,
               "[galore] weight_decay must be >= 0, got ", o.weight_decay());
  const auto& p = o.state_on_refresh();
  LOWMEM_CHECK(p == "keep" || p == "reset" || p == "reproject",
               "[galore] state_on_refresh must be keep, reset or reproject, "
               "got '", p, "'");
  LOWMEM_CHECK(o.accumulation_steps() >= 1,
               "[galore] accumulation_steps must be >= 1, got ",
               o.accumulation_steps());
}

void on_basis_change(torch::optim::Optimizer& inner, const at::Tensor& slot,
                     const std::string& policy, const at::Tensor& old_p,
                     const at::Tensor& old_q,
                     const projection::Projector& now) {
  if (policy == "keep") return;
  auto it = inner.state().find(state_key(slot));
  if (it == inner.state().end()) return;
  if (policy == "reset") {
    inner.state().erase(it);
    return;
  }
  LOWMEM_CHECK(policy == "reproject", "[galore] unknown state_on_refresh '",
               policy, "'");
  // Old coordinates X map to the new ones as C X D with C = P_new^T P_old and
  // D = Q_old^T Q_new; elementwise second moments use C o C and D o D
  // (exact when the coordinates are independent).
  at::Tensor c, d;
  if (old_p.defined()) c = at::matmul(now.left().t(), old_p.to(now.dtype()));
  if (old_q.defined()) d = at::matmul(old_q.to(now.dtype()).t(), now.right());
  BasisChange change{c, d};
  reproject_state(*it->second, change);
}

at::Tensor BasisChange::linear(const at::Tensor& x) const {
  if (!x.defined() || x.numel() == 0) return x;
  auto y = x;
  if (c.defined()) y = at::matmul(c.to(y.scalar_type()), y);
  if (d.defined()) y = at::matmul(y, d.to(y.scalar_type()));
  return y;
}

at::Tensor BasisChange::square(const at::Tensor& x) const {
  if (!x.defined() || x.numel() == 0) return x;
  auto y = x;
  if (c.defined()) y = at::matmul((c * c).to(y.scalar_type()), y);
  if (d.defined()) y = at::matmul(y, (d * d).to(y.scalar_type()));
  return y;
}

at::Tensor BasisChange::rows(const at::Tensor& x) const {
  if (!x.defined() || x.numel() == 0 || !c.defined()) return x;
  return at::matmul((c * c).to(x.scalar_type()), x);
}

at::Tensor BasisChange::cols(const at::Tensor& x) const {
  if (!x.defined() || x.numel() == 0 || !d.defined()) return x;
  return at::matmul(x, (d * d).to(x.scalar_type()));
}

void reproject_state(torch::optim::OptimizerParamState& s,
                     const BasisChange& b) {
  const bool known =
      visit_state(s, [&b](const char*, at::Tensor& t, StateRole role) {
        switch (role) {
          case StateRole::kScalar:
            break;
          case StateRole::kLinear:
            t = b.linear(t);
            break;
          case StateRole::kSquare:
            t = b.square(t);
            break;
          case StateRole::kRowSquares:
            t = b.rows(t);
            break;
          case StateRole::kColSquares:
            t = b.cols(t);
            break;
        }
      });
  LOWMEM_CHECK(known,
               "[galore] state_on_refresh 'reproject' does not know this "
               "inner optimizer's state (no FieldState and no registered "
               "optimizer describes it, optim/registry.h); use keep or reset");
}

GaLore::GaLore(std::vector<at::Tensor> projected, std::vector<at::Tensor> plain,
               const InnerFactory& make_inner, GaLoreOptions options)
    : torch::optim::Optimizer(std::vector<torch::optim::OptimizerParamGroup>{},
                              std::make_unique<GaLoreGroupOptions>()),
      options_(std::move(options)) {
  validate(options_);
  LOWMEM_CHECK(make_inner, "[galore] no inner optimizer factory given");
  LOWMEM_CHECK(!projected.empty() || !plain.empty(), "[galore] no params");
  for (size_t i = 0; i < projected.size(); ++i) {
    const auto& p = projected[i];
    LOWMEM_CHECK(p.defined() && p.dim() >= 2 && p.numel() > 0,
                 "[galore] projected param ", i,
                 " must have 2 or more dims (a matrix, or a tensor seen as "
                 "[size(0), rest]), got ",
                 p.defined() ? p.dim() : -1, " dims");
    auto s = std::make_unique<Slot>(p, options_.projector(),
                                    static_cast<int64_t>(i));
    s->proxy = at::empty({0}, p.options().dtype(low_dtype(p)))
                   .set_requires_grad(false);
    slots_.push_back(std::move(s));
  }
  for (auto& p : plain) {
    auto q = std::make_unique<Plain>();
    q->param = p;
    plains_.push_back(std::move(q));
  }
  std::vector<torch::optim::OptimizerParamGroup> inner_groups;
  if (!plains_.empty()) {
    inner_groups.emplace_back(plain);
    group_map_.emplace_back(0, inner_groups.size() - 1);
  }
  if (!slots_.empty()) {
    std::vector<at::Tensor> proxies;
    for (auto& s : slots_) proxies.push_back(s->proxy);
    inner_groups.emplace_back(proxies);
    group_map_.emplace_back(0, inner_groups.size() - 1);
  }
  inner_ = make_inner(inner_groups);
  LOWMEM_CHECK(inner_ && inner_->param_groups().size() == inner_groups.size(),
               "[galore] the inner factory must build one group per given "
               "group (", inner_groups.size(), ")");
  if (!slots_.empty()) {
    // The proxy is 0 when the inner step runs: a decay there would act on
    // nothing, silently. Every registered optimizer's decay is readable.
    const auto wd = weight_decay_of(inner_->param_groups().back().options());
    LOWMEM_CHECK(wd.has_value(),
                 "[galore] cannot read the inner optimizer's weight_decay "
                 "(its options are no FieldOptions and no registered "
                 "optimizer knows them, optim/registry.h)");
    LOWMEM_CHECK(*wd == 0.0,
                 "[galore] the inner optimizer's weight_decay on projected "
                 "params must be 0 (got ",
                 *wd,
                 "); set GaLoreOptions::weight_decay, which decays the full "
                 "weight");
  }
  // The wrapper's own groups mirror the inner ones (same order).
  size_t g = 0;
  if (!plains_.empty()) {
    add_param_group(torch::optim::OptimizerParamGroup(
        plain, std::make_unique<GaLoreGroupOptions>(
                   inner_->param_groups()[g].options().get_lr())));
    for (auto& q : plains_) q->group = g;
    group_map_[g].first = g;
    ++g;
  }
  if (!slots_.empty()) {
    add_param_group(torch::optim::OptimizerParamGroup(
        projected, std::make_unique<GaLoreGroupOptions>(
                       inner_->param_groups()[g].options().get_lr())));
    for (auto& s : slots_) s->group = g;
    group_map_[g].first = g;
  }
  hooks_ = options_.layerwise() || options_.accumulation_steps() > 1;
  if (hooks_) {
    auto install = [this](const at::Tensor& p, bool proj, size_t i,
                          std::shared_ptr<torch::autograd::Node>* node,
                          uintptr_t* key) {
      LOWMEM_CHECK(p.requires_grad() && p.is_leaf(),
                   "[galore] hook modes need leaf params with requires_grad");
      *node = torch::autograd::impl::grad_accumulator(p);
      *key = (*node)->add_post_hook(std::make_unique<GaLoreHook>(this, proj, i));
    };
    for (size_t i = 0; i < slots_.size(); ++i)
      install(slots_[i]->param, true, i, &slots_[i]->node, &slots_[i]->hook_key);
    for (size_t i = 0; i < plains_.size(); ++i)
      install(plains_[i]->param, false, i, &plains_[i]->node,
              &plains_[i]->hook_key);
  }
}

GaLore::~GaLore() {
  for (auto& s : slots_)
    if (s->node) s->node->del_post_hook(s->hook_key);
  for (auto& q : plains_)
    if (q->node) q->node->del_post_hook(q->hook_key);
}

const projection::Projector& GaLore::projector(size_t i) const {
  LOWMEM_CHECK(i < slots_.size(), "[galore] no projected param ", i);
  return slots_[i]->projector;
}

int64_t GaLore::step_count(size_t i) const {
  LOWMEM_CHECK(i < slots_.size(), "[galore] no projected param ", i);
  return slots_[i]->step;
}

const at::Tensor& GaLore::proxy(size_t i) const {
  LOWMEM_CHECK(i < slots_.size(), "[galore] no projected param ", i);
  return slots_[i]->proxy;
}

void GaLore::sync_lr() {
  for (const auto& gm : group_map_)
    inner_->param_groups()[gm.second].options().set_lr(
        param_groups_[gm.first].options().get_lr());
}

void GaLore::prepare(size_t i, const at::Tensor& full_grad) {
  auto& s = *slots_[i];
  if (!s.projector.needs_refresh(s.step)) return;
  const bool had = s.projector.has_basis();
  at::Tensor old_p, old_q;
  if (had) {
    old_p = s.projector.left();
    old_q = s.projector.right();
  }
  s.projector.refresh(s.matrix(full_grad));
  if (had)
    on_basis_change(*inner_, s.proxy, options_.state_on_refresh(), old_p,
                    old_q, s.projector);
}

void GaLore::load_proxy(size_t i, const at::Tensor& low) {
  auto& s = *slots_[i];
  // The proxy starts each update at 0, so after the inner step it holds the
  // inner optimizer's update and its own decay (on 0) is a no-op.
  s.proxy.set_(at::zeros(low.sizes(), s.proxy.options()));
  s.proxy.mutable_grad() = low.to(s.proxy.scalar_type());
}

void GaLore::apply(size_t i) {
  auto& s = *slots_[i];
  if (s.param.dim() == 2) {
    s.projector.add_back_to(s.param, s.proxy);
  } else {
    auto update = s.projector.project_back(s.proxy);
    s.param.add_(update.reshape(s.param.sizes()).to(s.param.scalar_type()));
  }
  if (options_.weight_decay() > 0) {
    const double lr = param_groups_[s.group].options().get_lr();
    s.param.mul_(1.0 - lr * options_.weight_decay());
  }
  advance(i);
}

void GaLore::advance(size_t i) {
  auto& s = *slots_[i];
  s.proxy.mutable_grad() = at::Tensor();
  s.proxy.set_(at::empty({0}, s.proxy.options()));
  s.acc = at::Tensor();
  s.micro = 0;
  ++s.step;
}

at::Tensor GaLore::step(LossClosure closure) {
  at::Tensor loss;
  if (closure) {
    at::AutoGradMode enable(true);
    loss = closure();
  }
  at::NoGradGuard no_grad;
  if (options_.layerwise()) return loss;  // updated inside backward
  sync_lr();
  if (hooks_) {  // accumulation, data-parallel: what the hooks gathered
    std::vector<at::Tensor> gathered;
    for (auto& s : slots_) {
      if (s->micro > 0) gathered.push_back(s->acc);
    }
    for (auto& q : plains_) {
      if (q->micro > 0) gathered.push_back(q->stash);
    }
    average_statistics(std::move(gathered));
  }
  std::vector<size_t> stepped;
  for (size_t i = 0; i < slots_.size(); ++i) {
    auto& s = *slots_[i];
    at::Tensor low;
    if (hooks_) {
      if (s.micro == 0) continue;
      if (!owns(s.param)) {  // ZeRO: its owner steps it
        advance(i);
        continue;
      }
      low = s.acc;
    } else {
      const auto& g = s.param.grad();
      if (!g.defined()) continue;
      prepare(i, g);
      low = s.projector.project(s.matrix(g));
    }
    load_proxy(i, low);
    stepped.push_back(i);
  }
  if (hooks_)
    for (auto& q : plains_)
      if (q->micro > 0 && owns(q->param)) q->param.mutable_grad() = q->stash;
  inner_->step();
  for (size_t i : stepped) apply(i);
  if (hooks_) {
    for (auto& q : plains_) {
      if (q->micro == 0) continue;
      q->param.mutable_grad() = at::Tensor();
      q->stash = at::Tensor();
      q->micro = 0;
    }
  }
  return loss;
}

void GaLore::update_one(bool projected, size_t i) {
  // Layer-wise updates run inside backward; they count as the optimizer's.
  profile::Scope scope(profile::Phase::kOptimizer);
  sync_lr();
  if (projected) {
    load_proxy(i, slots_[i]->acc);
    inner_->step();
    apply(i);
  } else {
    auto& q = *plains_[i];
    q.param.mutable_grad() = q.stash;
    inner_->step();
    q.param.mutable_grad() = at::Tensor();
    q.stash = at::Tensor();
    q.micro = 0;
  }
}

void GaLore::on_grad(bool projected, size_t i) {
  at::NoGradGuard no_grad;
  int64_t live = 0;
  for (auto& s : slots_) live += s->param.grad().defined() ? 1 : 0;
  max_live_full_grads_ = std::max(max_live_full_grads_, live);
  if (projected) {
    auto& s = *slots_[i];
    auto g = s.param.grad();
    if (!g.defined()) return;
    if (s.micro == 0) {
      // A gradient-based basis comes from the whole batch's gradient.
      if (s.projector.needs_gradient() && s.projector.needs_refresh(s.step)) {
        average_statistics({g});
      }
      prepare(i, g);
    }
    auto low = s.projector.project(s.matrix(g));
    s.acc = s.micro == 0 ? low : s.acc.add_(low);
    g = at::Tensor();
    s.param.mutable_grad() = at::Tensor();  // the full gradient dies here
    ++s.micro;
    if (options_.layerwise() && s.micro >= options_.accumulation_steps()) {
      average_statistics({s.acc});
      if (owns(s.param)) {
        update_one(true, i);
      } else {  // ZeRO: its owner steps it
        advance(i);
      }
    }
  } else {
    auto& q = *plains_[i];
    auto g = q.param.grad();
    if (!g.defined()) return;
    q.stash = q.micro == 0 ? g : q.stash.add_(g);
    q.param.mutable_grad() = at::Tensor();
    ++q.micro;
    if (options_.layerwise() && q.micro >= options_.accumulation_steps()) {
      average_statistics({q.stash});
      if (owns(q.param)) {
        update_one(false, i);
      } else {  // ZeRO: its owner steps it
        q.stash = at::Tensor();
        q.micro = 0;
      }
    }
  }
}

std::vector<at::Tensor> GaLore::state_tensors() const {
  std::vector<at::Tensor> out = lowmem::optim::state_tensors(*inner_);
  for (const auto& s : slots_) {
    for (auto& t : s->projector.state_tensors()) out.push_back(t);
    if (s->acc.defined()) out.push_back(s->acc);
    out.push_back(s->proxy);
  }
  for (const auto& q : plains_)
    if (q->stash.defined()) out.push_back(q->stash);
  return out;
}

void GaLore::save(torch::serialize::OutputArchive& archive) const {
  archive.write("galore/format_version", c10::IValue(int64_t{1}));
  archive.write("galore/num_projected",
                c10::IValue(static_cast<int64_t>(slots_.size())));
  for (size_t i = 0; i < slots_.size(); ++i) {
    const auto& s = *slots_[i];
    LOWMEM_CHECK(s.micro == 0,
                 "[galore] save() in the middle of gradient accumulation "
                 "(param ", i, " has ", s.micro, " micro-batches pending)");
    const std::string prefix = "galore/slot/" + std::to_string(i) + "/";
    archive.write(prefix + "step", c10::IValue(s.step));
    s.projector.save(archive, prefix + "proj/");
  }
  std::vector<double> lrs;
  for (const auto& g : param_groups_) lrs.push_back(g.options().get_lr());
  archive.write("galore/lr", c10::IValue(lrs));
  torch::serialize::OutputArchive inner;
  inner_->save(inner);
  archive.write("galore/inner", inner);
}

void GaLore::load(torch::serialize::InputArchive& archive) {
  c10::IValue v;
  archive.read("galore/format_version", v);
  LOWMEM_CHECK(v.toInt() == 1, "[galore] unknown checkpoint format_version ",
               v.toInt());
  archive.read("galore/num_projected", v);
  LOWMEM_CHECK(v.toInt() == static_cast<int64_t>(slots_.size()),
               "[galore] checkpoint has ", v.toInt(),
               " projected params, this optimizer ", slots_.size());
  for (size_t i = 0; i < slots_.size(); ++i) {
    auto& s = *slots_[i];
    const std::string prefix = "galore/slot/" + std::to_string(i) + "/";
    archive.read(prefix + "step", v);
    s.acc = at::Tensor();
    s.micro = 0;
    // A param the archive never updated has no state there: it is left as
    // it is, as torch::optim's load leaves params absent from the archive
    // (ZeRO's shards, each with the state of its own params, add up).
    if (v.toInt() == 0) continue;
    s.step = v.toInt();
    s.projector.load(archive, prefix + "proj/");
  }
  archive.read("galore/lr", v);
  const auto lrs = v.toDoubleVector();
  LOWMEM_CHECK(lrs.size() == param_groups_.size(), "[galore] checkpoint has ",
               lrs.size(), " groups, this optimizer ", param_groups_.size());
  for (size_t g = 0; g < lrs.size(); ++g)
    param_groups_[g].options().set_lr(lrs[g]);
  torch::serialize::InputArchive inner;
  archive.read("galore/inner", inner);
  inner_->load(inner);
}

bool GaLore::forget_state(const at::Tensor& param) {
  const auto* impl = param.unsafeGetTensorImpl();
  for (size_t i = 0; i < slots_.size(); ++i) {
    auto& s = *slots_[i];
    if (s.param.unsafeGetTensorImpl() != impl) continue;
    LOWMEM_CHECK(s.micro == 0, "[galore] forget_state of projected param ", i,
                 " during gradient accumulation");
    inner_->state().erase(state_key(s.proxy));
    // Hook modes: every worker projects every gradient, so the basis and
    // its schedule stay (ZeRO shards only the inner state there).
    if (hooks_) return true;
    s.projector = projection::Projector(options_.projector(), s.param.size(0),
                                        s.param.numel() / s.param.size(0),
                                        static_cast<int64_t>(i));
    s.step = 0;
    s.acc = at::Tensor();
    return true;
  }
  for (auto& q : plains_) {
    if (q->param.unsafeGetTensorImpl() != impl) continue;
    LOWMEM_CHECK(q->micro == 0,
                 "[galore] forget_state of a plain param during gradient "
                 "accumulation");
    inner_->state().erase(state_key(q->param));
    return true;
  }
  return true;  // not one of this optimizer's params: nothing to forget
}

std::vector<at::Tensor> GaLore::updated_outside_sync() const {
  if (!hooks_) return {};
  std::vector<at::Tensor> out;
  for (const auto& s : slots_) out.push_back(s->param);
  for (const auto& q : plains_) out.push_back(q->param);
  return out;
}

std::pair<std::vector<at::Tensor>, std::vector<at::Tensor>> GaLore::route(
    torch::nn::Module& module) {
  std::vector<at::Tensor> projected, plain;
  std::unordered_set<const void*> seen;
  for (const auto& ref : nn::find_slots(module)) {
    auto layer = ref.layer();
    auto& w = layer->base_weight();
    if (w.defined() && w.requires_grad() && w.dim() == 2 &&
        seen.insert(w.unsafeGetTensorImpl()).second)
      projected.push_back(w);
  }
  for (const auto& p : module.parameters())
    if (p.requires_grad() && !seen.count(p.unsafeGetTensorImpl())) {
      seen.insert(p.unsafeGetTensorImpl());
      plain.push_back(p);
    }
  return {projected, plain};
}

void transfer_state(GaLore& from, ProjectedAdapterOptimizer& to) {
  at::NoGradGuard no_grad;
  LOWMEM_CHECK(from.slots_.size() == to.layers_.size(),
               "[galore] transfer_state: ", from.slots_.size(),
               " projected params but ", to.layers_.size(), " adapters");
  for (size_t i = 0; i < from.slots_.size(); ++i) {
    auto& s = *from.slots_[i];
    auto& l = *to.layers_[i];
    LOWMEM_CHECK(s.micro == 0, "[galore] transfer_state during gradient "
                               "accumulation (param ", i, ")");
    LOWMEM_CHECK(s.param.unsafeGetTensorImpl() ==
                     l.base_weight().unsafeGetTensorImpl(),
                 "[galore] transfer_state: adapter ", i,
                 " does not wrap GaLore's projected param ", i);
    LOWMEM_CHECK(s.projector.low_rank_shape() == l.projector().low_rank_shape(),
                 "[galore] transfer_state: adapter ", i,
                 " has another low-rank shape");
    l.projector() = s.projector;
    l.a().zero_();
    l.a().mutable_grad() = at::Tensor();
    // The full gradient GaLore left on W is dead in the adapter form (W0 is
    // frozen and owned by no optimizer); keeping it would cost m x n bytes and
    // be summed into the gradient captured on the next SVD refresh.
    s.param.mutable_grad() = at::Tensor();
    to.steps_[i] = s.step;
    to.rebased_[i] = false;
    transfer_copy_state(*from.inner_, s.proxy, *to.inner_, l.a());
  }
  for (auto& q : from.plains_)
    transfer_copy_state(*from.inner_, q->param, *to.inner_, q->param);
}

void transfer_state(ProjectedAdapterOptimizer& from, GaLore& to) {
  at::NoGradGuard no_grad;
  LOWMEM_CHECK(to.slots_.size() == from.layers_.size(),
               "[galore] transfer_state: ", from.layers_.size(),
               " adapters but ", to.slots_.size(), " projected params");
  for (size_t i = 0; i < from.layers_.size(); ++i) {
    auto& l = *from.layers_[i];
    auto& s = *to.slots_[i];
    LOWMEM_CHECK(!l.capturing(), "[galore] transfer_state in the middle of a "
                                 "refresh step (adapter ", i, ")");
    LOWMEM_CHECK(s.param.unsafeGetTensorImpl() ==
                     l.base_weight().unsafeGetTensorImpl(),
                 "[galore] transfer_state: GaLore's projected param ", i,
                 " is not adapter ", i, "'s base weight");
    l.merge();
    l.a().mutable_grad() = at::Tensor();
    s.param.mutable_grad() = at::Tensor();
    s.projector = l.projector();
    s.step = from.steps_[i];
    s.acc = at::Tensor();
    s.micro = 0;
    transfer_copy_state(*from.inner_, l.a(), *to.inner_, s.proxy);
  }
  for (auto& q : to.plains_)
    transfer_copy_state(*from.inner_, q->param, *to.inner_, q->param);
}

}  // namespace lowmem::optim
