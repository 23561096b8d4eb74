// Kronecker-factor curvature taps for SINGD/KFAC (Lin et al., arXiv
// 2312.05705; official singd/optim/utils.py): turn a layer's input x and
// output gradient g into the matrices a [N, d_K] and g [N', d_C] with
// a^T a = mean input outer product and g^T g = L * sum g g^T. Also finds the
// layers a module exposes to them. Deviation: inputs are paired with output
// gradients last-in-first-out (LibTorch has no per-call forward hooks).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <torch/nn/module.h>

#include <array>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "lowmem/nn/linear.h"

namespace lowmem::nn {

/// How many loss terms the loss averages over (official `loss_average`):
/// none (a sum loss), "batch" (L = B), "batch+sequence" (L = B * S).
enum class LossAverage { kNone, kBatch, kBatchSequence };
/// Official `kfac_approx`: "expand" flattens shared dims into the batch,
/// "reduce" averages inputs (sums gradients) over them.
enum class KfacApprox { kExpand, kReduce };

/// "none" | "batch" | "batch+sequence"; throws naming the bad value.
LossAverage parse_loss_average(const std::string& s);
/// "expand" | "reduce"; throws naming the bad value.
KfacApprox parse_kfac_approx(const std::string& s);

struct Conv2dGeometry {
  std::array<int64_t, 2> kernel_size{1, 1};
  std::array<int64_t, 2> stride{1, 1};
  std::array<int64_t, 2> padding{0, 0};
  std::array<int64_t, 2> dilation{1, 1};
  int64_t groups = 1;
};

struct KroneckerTapOptions {
  bool has_bias = true;
  c10::optional<Conv2dGeometry> conv;  // nullopt: a linear layer
  LossAverage loss_average = LossAverage::kBatch;
  KfacApprox kfac_approx = KfacApprox::kExpand;
  at::ScalarType dtype_k = at::kFloat;  // a is cast to this
  at::ScalarType dtype_c = at::kFloat;  // g is cast to this
};

/// a [N, d_K] from a layer input ([B, ..., d_in] or [B, C, H, W]): flattened
/// (expand) or averaged (reduce) over shared dims, a ones column appended
/// with a bias, divided by sqrt(N).
at::Tensor kfac_input_matrix(const at::Tensor& x, const KroneckerTapOptions& o);
/// g [N', d_C] from an output gradient: flattened (expand) or summed
/// (reduce) over shared dims, times sqrt(L) (loss_average).
at::Tensor kfac_grad_output_matrix(const at::Tensor& g,
                                   const KroneckerTapOptions& o);

/// A CurvatureTap that hands (a, g) of each forward/backward pair to a sink.
class KroneckerTap final : public CurvatureTap {
 public:
  using Sink = std::function<void(const at::Tensor& a, const at::Tensor& g)>;
  KroneckerTap(KroneckerTapOptions options, Sink sink);
  /// Keeps x (only while grad mode is on; as the official forward hook).
  void record_input(const at::Tensor& input) override;
  /// Pairs g with the most recent unpaired input and calls the sink.
  void record_grad_output(const at::Tensor& grad_output) override;
  /// Drops inputs whose backward never came.
  void clear() { pending_.clear(); }
  int64_t pending() const { return static_cast<int64_t>(pending_.size()); }
  const KroneckerTapOptions& options() const { return options_; }
  void set_options(const KroneckerTapOptions& o) { options_ = o; }

 private:
  KroneckerTapOptions options_;
  Sink sink_;
  std::vector<at::Tensor> pending_;
};

/// A layer SINGD/KFAC can precondition: a trainable nn::Linear or
/// nn::Conv2d found under a module.
struct CurvatureLayer {
  std::string path;  // module path, e.g. "h.0.mlp.fc"
  std::shared_ptr<torch::nn::Module> module;
  at::Tensor weight;                   // [out, in] or [out, in/g, k1, k2]
  at::Tensor bias;                     // [out] or undefined
  c10::optional<Conv2dGeometry> conv;  // nullopt for Linear
  /// Installs `tap` on the layer (nullptr removes it).
  void set_tap(std::shared_ptr<CurvatureTap> tap) const;
  /// The tap currently installed on the layer.
  std::shared_ptr<CurvatureTap> tap() const;
  /// d_K (input side incl. the bias column) and d_C (output side).
  int64_t dim_k() const;
  int64_t dim_c() const;
};

/// Every nn::Linear / nn::Conv2d under `root` (root included)
/// whose weight requires grad, in named_modules order, each once.
std::vector<CurvatureLayer> find_curvature_layers(torch::nn::Module& root);

/// Parameter routing: `covered` are the weights and biases of
/// find_curvature_layers(root) (for SINGD/KFAC); `uncovered` are every other
/// trainable parameter (embeddings, norms, LoRA factors, ...; for AdamW).
struct CurvatureParamSplit {
  std::vector<std::pair<std::string, at::Tensor>> covered;
  std::vector<std::pair<std::string, at::Tensor>> uncovered;
};
CurvatureParamSplit split_curvature_parameters(torch::nn::Module& root);

}  // namespace lowmem::nn
