// KFAC baseline for SINGD (Martens & Grosse 2015, arXiv 1503.05671; as in the
// INGD authors' StructuredNGD-DL optimizers/kfac.py, see research/singd.md
// section 7) on the same curvature taps as SINGD: EMA of dense Kronecker
// factors from identity, damped inverses refreshed every T steps. Deviation:
// T_cov = T_inv = T; no KL clipping; inverses by linalg_inv in fp32;
// data-parallel averaging of a^T a and g^T g (set_statistics_sync).
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/optim/optimizer.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "lowmem/optim/kronecker.h"
#include "lowmem/optim/lr_options.h"

namespace lowmem::optim {

struct KfacOptions : LrOptions<KfacOptions> {
  KfacOptions() = default;
  explicit KfacOptions(double lr) : lr_(lr) {}
  TORCH_ARG(double, lr) = 1e-3;          // kfac.py default
  TORCH_ARG(double, momentum) = 0.9;     // kfac.py default
  TORCH_ARG(double, stat_decay) = 0.95;  // kfac.py default (rho of the EMA)
  TORCH_ARG(double, damping) = 1e-3;     // kfac.py default (lambda)
  // Default 0 as SINGD (the INGD scripts pass 1e-2); coupled into momentum,
  // not preconditioned (as SINGD).
  TORCH_ARG(double, weight_decay) = 0.0;
  TORCH_ARG(int64_t, T) = 10;            // kfac.py TCov = TInv = 10
  TORCH_ARG(std::string, kfac_approx) = "expand";  // as SINGD
  TORCH_ARG(std::string, loss_average) = "batch";  // as SINGD
  /// Dtype of the factors and their inverses ("" = the weight's dtype, fp32
  /// for half weights; float32, bfloat16, float16, float64). The inverse is
  /// always computed in fp32 (linalg_inv has no half kernels) and cast back.
  TORCH_ARG(std::string, factor_dtype) = "";

 public:
  template <class V>
  void for_each_field(V&& v) {
    v("lr", lr_);
    v("momentum", momentum_);
    v("stat_decay", stat_decay_);
    v("damping", damping_);
    v("weight_decay", weight_decay_);
    v("T", T_);
    v("kfac_approx", kfac_approx_);
    v("loss_average", loss_average_);
    v("factor_dtype", factor_dtype_);
  }
};

/// Throws "[kfac] <field> ..." naming the bad value.
void validate(const KfacOptions& options);

class KFAC : public KroneckerOptimizer {
 public:
  explicit KFAC(torch::nn::Module& model, KfacOptions defaults = {});
  explicit KFAC(std::vector<nn::CurvatureLayer> layers,
                KfacOptions defaults = {});

  at::Tensor step(LossClosure closure = nullptr) override;
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;
  std::vector<at::Tensor> state_tensors() const override;
  /// ZeRO: forgets the momentum of a layer's weight or bias that another
  /// worker updates; A, G and their inverses stay (every worker's taps).
  bool forget_state(const at::Tensor& param) override;
  /// Bytes of the factors and their inverses over all layers.
  int64_t preconditioner_bytes() const override;

 private:
  struct LayerState {
    at::Tensor A, G;          // [d_K, d_K], [d_C, d_C] EMA factors
    at::Tensor A_inv, G_inv;  // damped inverses
    at::Tensor U, Gn;         // pending a^T a, g^T g (summed over passes)
    at::Tensor momentum_weight, momentum_bias;
    // Every tensor with its checkpoint name (save and load walk this list).
    std::array<std::pair<const char*, at::Tensor*>, 8> fields() {
      return {{{"A", &A},
               {"G", &G},
               {"A_inv", &A_inv},
               {"G_inv", &G_inv},
               {"U", &U},
               {"Gn", &Gn},
               {"momentum_weight", &momentum_weight},
               {"momentum_bias", &momentum_bias}}};
    }
  };
  const KfacOptions& opts() const;
  int64_t refresh_period() const override;

  std::vector<LayerState> state_;
};

}  // namespace lowmem::optim
