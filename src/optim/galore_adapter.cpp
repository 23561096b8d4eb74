#include "lowmem/optim/galore_adapter.h"

#include <ATen/ATen.h>
#include <torch/serialize/archive.h>

#include "lowmem/core/check.h"

namespace lowmem::optim {

ProjectedAdapterOptimizer::ProjectedAdapterOptimizer(
    std::vector<std::shared_ptr<projection::ProjectedLinear>> layers,
    std::vector<at::Tensor> plain, const InnerFactory& make_inner,
    GaLoreOptions options)
    : torch::optim::Optimizer(std::vector<torch::optim::OptimizerParamGroup>{},
                              std::make_unique<GaLoreGroupOptions>()),
      options_(std::move(options)),
      layers_(std::move(layers)) {
  validate(options_);
  LOWMEM_CHECK(options_.weight_decay() == 0.0,
               "[projected_adapter] weight_decay on the full weight is not "
               "available in the adapter form (W0 is frozen), got ",
               options_.weight_decay(),
               "; the inner optimizer's own decay acts on A");
  LOWMEM_CHECK(!options_.layerwise(),
               "[projected_adapter] layerwise does not apply to the adapter "
               "form (it never forms full weight gradients)");
  LOWMEM_CHECK(make_inner, "[projected_adapter] no inner optimizer factory");
  LOWMEM_CHECK(!layers_.empty() || !plain.empty(), "[projected_adapter] no params");
  for (size_t i = 0; i < layers_.size(); ++i)
    LOWMEM_CHECK(layers_[i], "[projected_adapter] layer ", i, " is null");
  steps_.assign(layers_.size(), 0);
  rebased_.assign(layers_.size(), false);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  if (!plain.empty()) groups.emplace_back(plain);
  std::vector<at::Tensor> as;
  for (auto& l : layers_) as.push_back(l->a());
  if (!as.empty()) groups.emplace_back(as);
  inner_ = make_inner(groups);
  LOWMEM_CHECK(inner_ && inner_->param_groups().size() == groups.size(),
               "[projected_adapter] the inner factory must build one group "
               "per given group (", groups.size(), ")");
  for (size_t g = 0; g < groups.size(); ++g) {
    add_param_group(torch::optim::OptimizerParamGroup(
        groups[g].params(), std::make_unique<GaLoreGroupOptions>(
                                inner_->param_groups()[g].options().get_lr())));
    group_map_.emplace_back(g, g);
  }
}

void ProjectedAdapterOptimizer::sync_lr() {
  for (const auto& gm : group_map_)
    inner_->param_groups()[gm.second].options().set_lr(
        param_groups_[gm.first].options().get_lr());
}

void ProjectedAdapterOptimizer::rebase(size_t i, const at::Tensor& full_grad) {
  auto& l = *layers_[i];
  const bool had = l.projector().has_basis();
  at::Tensor old_p, old_q;
  if (had) {
    old_p = l.projector().left();
    old_q = l.projector().right();
  }
  l.rebase(full_grad);
  if (had)
    on_basis_change(*inner_, l.a(), options_.state_on_refresh(), old_p, old_q,
                    l.projector());
}

void ProjectedAdapterOptimizer::before_forward() {
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < layers_.size(); ++i) {
    auto& l = *layers_[i];
    // A capture armed by an earlier micro-batch of this update goes on
    // summing: the basis comes from the whole batch's gradient.
    if (rebased_[i] || l.capturing() ||
        !l.projector().needs_refresh(steps_[i])) {
      continue;
    }
    if (l.projector().needs_gradient()) {
      l.capture_full_grad(true);
    } else {
      rebase(i, at::Tensor());
      rebased_[i] = true;
    }
  }
}

at::Tensor ProjectedAdapterOptimizer::step(LossClosure closure) {
  at::Tensor loss;
  if (closure) {
    at::AutoGradMode enable(true);
    loss = closure();
  }
  at::NoGradGuard no_grad;
  sync_lr();
  {  // data-parallel: svd/rsvd bases from the whole batch's gradient
    std::vector<at::Tensor> full;
    for (const auto& l : layers_) {
      if (l->capturing() && l->base_weight().grad().defined()) {
        full.push_back(l->base_weight().grad());
      }
    }
    average_statistics(std::move(full));
  }
  std::vector<std::pair<size_t, at::Tensor>> scaled;  // (layer, A before)
  std::vector<size_t> stepped;
  refreshed_.clear();
  for (size_t i = 0; i < layers_.size(); ++i) {
    auto& l = *layers_[i];
    if (l.capturing()) {
      auto g = l.base_weight().grad();
      LOWMEM_CHECK(g.defined(), "[projected_adapter] layer ", i,
                   ": no full gradient was captured on its refresh step");
      rebase(i, g);
      // The gradient A would have had under the new basis: P_new^T G (...).
      // ZeRO: only A's owner steps it (its gradient here replaces the one
      // the trainer's sync gave the owner alone).
      l.a().mutable_grad() =
          owns(l.a()) ? l.projector().project(g).to(l.a().scalar_type())
                      : at::Tensor();
      l.capture_full_grad(false);
      refreshed_.push_back(l.a());
    } else {
      LOWMEM_CHECK(rebased_[i] || !l.projector().needs_refresh(steps_[i]),
                   "[projected_adapter] layer ", i, " is due a refresh at step ",
                   steps_[i], "; call before_forward() before each forward");
    }
    rebased_[i] = false;
    if (!l.a().grad().defined()) continue;
    stepped.push_back(i);
    if (l.projector().options().scale() != 1.0)
      scaled.emplace_back(i, l.a().clone());
  }
  inner_->step();
  for (auto& [i, before] : scaled) {
    // GaLore's alpha multiplies the inner update: A = A0 + alpha (A1 - A0).
    auto& a = layers_[i]->a();
    a.sub_(before).mul_(layers_[i]->projector().options().scale()).add_(before);
  }
  for (size_t i : stepped) ++steps_[i];
  return loss;
}

bool ProjectedAdapterOptimizer::forget_state(const at::Tensor& param) {
  drop_state(*inner_, param);
  return true;
}

void ProjectedAdapterOptimizer::stepped_elsewhere(const at::Tensor& param) {
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (layers_[i]->a().is_same(param)) ++steps_[i];
  }
}

std::vector<at::Tensor> ProjectedAdapterOptimizer::updated_outside_sync()
    const {
  return refreshed_;
}

std::vector<at::Tensor> ProjectedAdapterOptimizer::state_tensors() const {
  auto out = lowmem::optim::state_tensors(*inner_);
  for (const auto& l : layers_)
    for (auto& t : l->projector().state_tensors()) out.push_back(t);
  return out;
}

void ProjectedAdapterOptimizer::save(
    torch::serialize::OutputArchive& archive) const {
  archive.write("projected_adapter/format_version", c10::IValue(int64_t{1}));
  archive.write("projected_adapter/num_layers",
                c10::IValue(static_cast<int64_t>(layers_.size())));
  for (size_t i = 0; i < layers_.size(); ++i) {
    LOWMEM_CHECK(!layers_[i]->capturing(),
                 "[projected_adapter] save() between before_forward() and "
                 "step() of a refresh step");
    const std::string prefix = "projected_adapter/layer/" + std::to_string(i);
    archive.write(prefix + "/step", c10::IValue(steps_[i]));
    layers_[i]->projector().save(archive, prefix + "/proj/");
  }
  std::vector<double> lrs;
  for (const auto& g : param_groups_) lrs.push_back(g.options().get_lr());
  archive.write("projected_adapter/lr", c10::IValue(lrs));
  torch::serialize::OutputArchive inner;
  inner_->save(inner);
  archive.write("projected_adapter/inner", inner);
}

void ProjectedAdapterOptimizer::load(torch::serialize::InputArchive& archive) {
  c10::IValue v;
  archive.read("projected_adapter/format_version", v);
  LOWMEM_CHECK(v.toInt() == 1,
               "[projected_adapter] unknown checkpoint format_version ",
               v.toInt());
  archive.read("projected_adapter/num_layers", v);
  LOWMEM_CHECK(v.toInt() == static_cast<int64_t>(layers_.size()),
               "[projected_adapter] checkpoint has ", v.toInt(),
               " layers, this optimizer ", layers_.size());
  for (size_t i = 0; i < layers_.size(); ++i) {
    const std::string prefix = "projected_adapter/layer/" + std::to_string(i);
    archive.read(prefix + "/step", v);
    steps_[i] = v.toInt();
    layers_[i]->projector().load(archive, prefix + "/proj/");
    rebased_[i] = false;
  }
  archive.read("projected_adapter/lr", v);
  const auto lrs = v.toDoubleVector();
  LOWMEM_CHECK(lrs.size() == param_groups_.size(),
               "[projected_adapter] checkpoint has ", lrs.size(),
               " groups, this optimizer ", param_groups_.size());
  for (size_t g = 0; g < lrs.size(); ++g)
    param_groups_[g].options().set_lr(lrs[g]);
  torch::serialize::InputArchive inner;
  archive.read("projected_adapter/inner", inner);
  inner_->load(inner);
}

}  // namespace lowmem::optim
