// LoTR (Bershatsky et al., arXiv 2402.01376; official code daskol/lotr
// @ b8776bd1): a group of same-shaped linears shares U (lhs) and V (rhs), each
// member has its own r x r core: W_l' = W_l + (scale/r)·(rhs·mid_l·lhs)^T.
// Deviations: "svd" init uses an exact SVD of the unfoldings instead of
// torch.svd_lowrank; grouping per projection type (paper) or across types
// (repo experiments) is an option; the repo's to_linear() merge is provided.
#pragma once

#include <torch/arg.h>

#include <memory>
#include <string>

#include "lowmem/adapters/inject.h"

namespace lowmem::adapters {

struct LotrOptions {
  LotrOptions() = default;
  explicit LotrOptions(int64_t rank) : rank_(rank) {}
  TORCH_ARG(int64_t, rank) = 1;     // LoTR(rank=1) default in lotr/lotr.py
  TORCH_ARG(double, scale) = 1.0;   // alpha = scale / rank (commit 1d17755)
  /// Factor inits (make_lotr_init default ('normal','trivial','normal')):
  /// "normal" N(0,1), "trivial" zeros, "svd" Tucker-2 of the group's weights.
  TORCH_ARG(std::string, init_left) = "normal";    // lhs = U^T [r, d_out]
  /// Core init: "trivial" zeros, "neutral" identity, "svd" U0^T W_l U2.
  TORCH_ARG(std::string, init_middle) = "trivial";
  TORCH_ARG(std::string, init_right) = "normal";   // rhs = V [d_in, r]
  /// "per_type": one group per projection type, i.e. per slot path with its
  /// integer (layer index) components removed: h.0.attn.q and h.5.attn.q
  /// share, h.0.mlp.proj and h.0.attn.proj do not (the paper's framing);
  /// "shared": one group for every target (the repo's experiments, which
  /// need equal shapes).
  TORCH_ARG(std::string, grouping) = "per_type";

 public:
  double alpha() const { return scale_ / static_cast<double>(rank_); }
  template <class V>
  void for_each_field(V&& v) {
    v("rank", rank_);
    v("scale", scale_);
    v("init_left", init_left_);
    v("init_middle", init_middle_);
    v("init_right", init_right_);
    v("grouping", grouping_);
  }
};

void validate(const LotrOptions& o);

/// The shared factors of one group: lhs [r, d_out] and rhs [d_in, r]. It is
/// registered once under the model as "lotr_<group>" (group "blocks_q" for the
/// per_type group of blocks.<i>.q, "all" when shared) so that every member's
/// gradient accumulates into the same two parameters.
class LotrGroup final : public torch::nn::Module {
 public:
  LotrGroup(std::string name, int64_t d_in, int64_t d_out, int64_t rank,
            const at::TensorOptions& opts);
  const std::string& name() const { return name_; }
  at::Tensor lhs;  // [r, d_out] = U^T
  at::Tensor rhs;  // [d_in, r] = V
  std::vector<std::string> members;  // module paths, in order

 private:
  std::string name_;
};

/// One member layer: y = base(x) + alpha·((x·rhs)·mid)·lhs.
class LotrLinear final : public AdapterLinear {
 public:
  LotrLinear(std::shared_ptr<nn::LinearLike> base,
             std::shared_ptr<LotrGroup> group, const LotrOptions& options);
  at::Tensor delta_output(const at::Tensor& x) override;
  at::Tensor delta_weight() const override;
  std::vector<at::Tensor> adapter_parameters() const override {
    return {group_->lhs, group_->rhs, mid_};
  }
  at::Tensor& core() { return mid_; }  // [r, r] (code's mid_l = G_l^T)
  const std::shared_ptr<LotrGroup>& group() const { return group_; }

 private:
  std::shared_ptr<LotrGroup> group_;
  double alpha_;
  at::Tensor mid_;
};

class LotrModel final : public AdapterModel {
 public:
  std::string peft_type() const override { return "LOTR"; }
  std::map<std::string, at::Tensor> state_tensors() const override;
  std::string config_json() const override;
  void check_config(const std::string& config_json) const override;
  const LotrOptions& options() const { return options_; }
  const std::vector<std::shared_ptr<LotrGroup>>& groups() const { return groups_; }

 private:
  friend std::shared_ptr<LotrModel> inject_lotr(std::shared_ptr<torch::nn::Module>,
                                                const TargetOptions&,
                                                const LotrOptions&);
  LotrModel(std::shared_ptr<torch::nn::Module> root, TargetOptions t, LotrOptions o)
      : AdapterModel(std::move(root), std::move(t)), options_(std::move(o)) {}
  friend void build_lotr(LotrModel&, const LotrOptions&);
  void on_unload() override { groups_.clear(); }
  LotrOptions options_;
  std::vector<std::shared_ptr<LotrGroup>> groups_;
};

/// Groups the targeted slots, creates each group's shared factors (registered
/// as model children "lotr_<group>") and wraps every member.
std::shared_ptr<LotrModel> inject_lotr(std::shared_ptr<torch::nn::Module> model,
                                       const TargetOptions& targets,
                                       const LotrOptions& options = {});

/// Internal: the body of inject_lotr (groups, factors, wrapping).
void build_lotr(LotrModel& model, const LotrOptions& options);

std::pair<TargetOptions, LotrOptions> lotr_config_from_json(const std::string& json);

}  // namespace lowmem::adapters
