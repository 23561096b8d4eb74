// SINGD: structured inverse-free natural gradient descent (Lin, Dangel,
// Eschenhagen, Neklyudov, Kristiadi, Turner, Makhzani, ICML 2024, arXiv
// 2312.05705), ported from the official f-dangel/singd optimizer.py @1ac69a3.
// Deviations (docs/singd.md): one param group; layers with no gradient in a
// step are not updated (their factors still take recorded curvature);
// momentum buffers fp32; no GradScaler inf-skip; data-parallel averaging of
// the curvature (set_statistics_sync), which the official code lacks.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/optim/optimizer.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "lowmem/optim/kronecker.h"
#include "lowmem/optim/lr_options.h"
#include "lowmem/optim/structures/structured_matrix.h"

namespace lowmem::optim {

/// Options with the official names and defaults (singd/optim/optimizer.py,
/// SINGD.__init__). Paper symbols: lr = beta2, momentum = alpha2,
/// damping = lambda, alpha1 = alpha1, weight_decay = gamma, lr_cov = beta1.
struct SingdOptions : LrOptions<SingdOptions> {
  SingdOptions() = default;
  explicit SingdOptions(double lr) : lr_(lr) {}
  TORCH_ARG(double, lr) = 1e-3;          // official default
  TORCH_ARG(double, momentum) = 0.9;     // official default
  TORCH_ARG(double, damping) = 1e-3;     // official default
  TORCH_ARG(double, alpha1) = 0.5;       // official default (Riemannian)
  // Official default 0. Added to the preconditioned gradient (so it is not
  // preconditioned) before momentum, as the official code.
  TORCH_ARG(double, weight_decay) = 0.0;
  TORCH_ARG(int64_t, T) = 10;            // official default: refresh period
  TORCH_ARG(double, lr_cov) = 1e-2;      // official default
  /// Optional schedule beta1(steps) replacing lr_cov (official: a callable).
  TORCH_ARG(std::function<double(int64_t)>, lr_cov_schedule) = nullptr;
  /// "K,C" structures, or one key for both (official default dense,dense).
  TORCH_ARG(std::string, structures) = "dense,dense";
  TORCH_ARG(std::string, kfac_approx) = "expand";   // official default
  TORCH_ARG(std::string, loss_average) = "batch";   // official; "none" = None
  TORCH_ARG(bool, kfac_like) = false;               // official default
  /// "K,C" dtypes (float32, bfloat16, float16, float64) or one for both;
  /// "" = the weight's dtype (official None), fp32 for half weights.
  TORCH_ARG(std::string, preconditioner_dtype) = "";
  TORCH_ARG(double, init_grad_scale) = 1.0;         // official default
  TORCH_ARG(bool, normalize_lr_cov) = false;        // official default
  /// Block-diagonal only: use K_i^T where the official code uses K_i.
  TORCH_ARG(bool, correct_block_transpose) = false;  // official behaviour

 public:
  /// Visits every scalar field as v("name", field_).
  template <class V>
  void for_each_field(V&& v) {
    v("lr", lr_);
    v("momentum", momentum_);
    v("damping", damping_);
    v("alpha1", alpha1_);
    v("weight_decay", weight_decay_);
    v("T", T_);
    v("lr_cov", lr_cov_);
    v("structures", structures_);
    v("kfac_approx", kfac_approx_);
    v("loss_average", loss_average_);
    v("kfac_like", kfac_like_);
    v("preconditioner_dtype", preconditioner_dtype_);
    v("init_grad_scale", init_grad_scale_);
    v("normalize_lr_cov", normalize_lr_cov_);
    v("correct_block_transpose", correct_block_transpose_);
  }
};

/// Throws "[singd] <field> ..." naming the bad value.
void validate(const SingdOptions& options);

/// "K,C" or "X" -> {K, C}.
std::pair<std::string, std::string> split_pair(const std::string& s);
/// "" -> nullopt; float32/bfloat16/float16/float64 -> the type; else throws.
c10::optional<at::ScalarType> parse_dtype(const std::string& s);

/// SINGD over the Linear/Conv2d layers of a model (nn::Linear and
/// nn::Conv2d; see nn::split_curvature_parameters for routing
/// the other parameters to a second optimizer).
class SINGD : public KroneckerOptimizer {
 public:
  /// All trainable layers from nn::find_curvature_layers(model).
  explicit SINGD(torch::nn::Module& model, SingdOptions defaults = {});
  explicit SINGD(std::vector<nn::CurvatureLayer> layers,
                 SingdOptions defaults = {});

  at::Tensor step(LossClosure closure = nullptr) override;
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;

  std::vector<at::Tensor> state_tensors() const override;
  /// ZeRO: drops the momentum of `param` (a layer's weight or bias) when
  /// another worker owns it; K, C, m_K, m_C stay (every worker's taps).
  bool forget_state(const at::Tensor& param) override;

  /// AMP loss scale of the coming step (official set_current_grad_scale).
  void set_grad_scale(double scale);
  /// Bytes of K, C, m_K, m_C over all layers.
  int64_t preconditioner_bytes() const override;
  /// Factors of layer i (tests, inspection).
  const structures::StructuredMatrix& K(size_t i) const;
  const structures::StructuredMatrix& C(size_t i) const;

 private:
  struct LayerState {
    structures::StructuredPtr K, C, m_K, m_C;  // m_* only with alpha1 != 0
    structures::StructuredPtr H_K, H_C;        // pending curvature
    at::Tensor momentum_weight, momentum_bias; // fp32, like the params
    at::ScalarType dtype_k, dtype_c;
  };
  const SingdOptions& opts() const;
  void init_layers();
  void accumulate(size_t i, const at::Tensor& a, const at::Tensor& g);
  void update_preconditioner(size_t i, double grad_scale);
  int64_t refresh_period() const override;
  /// Data-parallel (set_statistics_sync): on refresh steps the pending
  /// curvature (H_K, H_C of every layer that recorded some) is averaged
  /// over the workers before the preconditioners are updated.
  void sync_curvature();

  std::vector<LayerState> state_;
  double prev_grad_scale_ = 1.0;
  c10::optional<double> grad_scale_;
};

}  // namespace lowmem::optim
