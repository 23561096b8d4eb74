// SNELL (Shen et al., arXiv 2411.01800; official code ssfgunner/SNELL
// @ e9d51857): ΔW^T = sparsify(K), K[i,j] = Σ_h c_h ‖A[h,i,:] − B[h,j,:]‖₂
// (piecewise-linear kernel), pruned by a per-forward quantile threshold.
// The merge runs in a custom autograd Function that saves only the input and
// recomputes K in backward (the code uses gradient checkpointing instead).
// Deviation: learnable c (the paper's α_p) is an option; the code fixes it.
#pragma once

#include <torch/arg.h>

#include <memory>
#include <string>

#include "lowmem/adapters/inject.h"

namespace lowmem::adapters {

struct SnellOptions {
  SnellOptions() = default;
  explicit SnellOptions(int64_t r) : r_(r) {}
  TORCH_ARG(int64_t, r) = 8;          // train.py --low_rank_dim default 8
  TORCH_ARG(int64_t, pieces) = 2;     // H: KLoRA splits the rank into 2 chunks
  TORCH_ARG(double, coeff) = 0.1;     // c_h = coeff·(−1)^h: shared_coeff_fc [0.1, −0.1]
  TORCH_ARG(bool, learnable_coeff) = false;  // code: requires_grad=False
  /// q: fraction of ΔW entries zeroed (code init_thres; 0 = dense KLoRA).
  TORCH_ARG(double, sparsity) = 0.0;
  /// "code": K ⊙ stop(|K|·1[|K|>τ]), τ = quantile(|K|, q) (released code);
  /// "paper": K ⊙ max(|K| − τ, 0), τ = ⌈q·n⌉-th smallest |K| (Eq. 5).
  TORCH_ARG(std::string, sparsify) = "code";
  TORCH_ARG(double, dropout) = 0.1;    // adapter input dropout (code default)
  TORCH_ARG(double, drop_path) = 0.1;  // DropPath on the adapter branch (code)
  /// true: custom Function recomputing K in backward; false: plain autograd
  /// (stores K and the distance matrices; the reference for tests).
  TORCH_ARG(bool, recompute) = true;

 public:
  template <class V>
  void for_each_field(V&& v) {
    v("r", r_);
    v("pieces", pieces_);
    v("coeff", coeff_);
    v("learnable_coeff", learnable_coeff_);
    v("sparsity", sparsity_);
    v("sparsify", sparsify_);
    v("dropout", dropout_);
    v("drop_path", drop_path_);
    v("recompute", recompute_);
  }
};

void validate(const SnellOptions& o);

/// K [d_in, d_out] = Σ_h c_h cdist(A_h, B_h) for A [H, d_in, r/H],
/// B [H, d_out, r/H], c [H] (differentiable when its inputs are).
at::Tensor snell_kernel(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c);
/// The sparsified kernel K_s (gradient semantics of the chosen variant).
at::Tensor snell_sparsify(const at::Tensor& k, double q, const std::string& variant);
/// The threshold τ (0-dim) used by snell_sparsify.
at::Tensor snell_threshold(const at::Tensor& abs_k, double q, const std::string& variant);
/// u [N, d_in] · K_s through the memory-saving custom Function.
at::Tensor snell_matmul(const at::Tensor& u, const at::Tensor& a, const at::Tensor& b,
                        const at::Tensor& c, double q, const std::string& variant);

/// A SNELL-wrapped linear. Parameters: snell_A [H, d_in, r/H] (In_Qs),
/// snell_B [H, d_out, r/H] (Out_Qs), snell_coeff [H] (trainable only with
/// learnable_coeff). Kaiming-uniform (a=√5) init of A and B as the code.
class SnellLinear final : public AdapterLinear {
 public:
  SnellLinear(std::shared_ptr<nn::LinearLike> base,
              const SnellOptions& options);
  at::Tensor delta_output(const at::Tensor& x) override;
  at::Tensor delta_weight() const override;  // K_s^T
  std::vector<at::Tensor> adapter_parameters() const override;
  at::Tensor& snell_A() { return a_; }
  at::Tensor& snell_B() { return b_; }
  at::Tensor& snell_coeff() { return c_; }
  const SnellOptions& options() const { return options_; }

 private:
  SnellOptions options_;
  at::Tensor a_, b_, c_;
};

class SnellModel final : public AdapterModel {
 public:
  std::string peft_type() const override { return "SNELL"; }
  std::map<std::string, at::Tensor> state_tensors() const override;
  std::string config_json() const override;
  void check_config(const std::string& config_json) const override;
  const SnellOptions& options() const { return options_; }

 private:
  friend std::shared_ptr<SnellModel> inject_snell(std::shared_ptr<torch::nn::Module>,
                                                  const TargetOptions&,
                                                  const SnellOptions&);
  SnellModel(std::shared_ptr<torch::nn::Module> root, TargetOptions t, SnellOptions o)
      : AdapterModel(std::move(root), std::move(t)), options_(std::move(o)) {}
  SnellOptions options_;
};

std::shared_ptr<SnellModel> inject_snell(std::shared_ptr<torch::nn::Module> model,
                                         const TargetOptions& targets,
                                         const SnellOptions& options = {});

std::pair<TargetOptions, SnellOptions> snell_config_from_json(const std::string& json);

}  // namespace lowmem::adapters
