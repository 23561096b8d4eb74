// The adapter dual of GaLore (arXiv 2502.13811, §4.3 of the lowmem spec):
// W = W0 + P.A (left), W0 + A.Q^T (right) or W0 + P.A.Q^T (two-sided), with
// W0 and the projection frozen and only A trainable. The projection is a
// Projector, the same object GaLore uses (SVD of a gradient,
// randomized SVD or a seeded random sketch). The forward multiplies the thin
// factors in an order that keeps every intermediate r-wide, so backward never
// forms the m x n weight gradient. GaLore's scale is not in the forward: it
// multiplies A's update (optim/galore_adapter.h), as in GaLore.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <vector>

#include "lowmem/nn/linear.h"
#include "lowmem/projection/projector.h"

namespace lowmem::projection {

class ProjectedLinear final : public nn::WrappedLinear {
 public:
  /// Wraps `base` (its weight is frozen; its bias keeps requires_grad). A
  /// quantized base (nn::Nf4Linear) needs a basis that reads no gradient.
  /// `stream` seeds the random sketches per layer (GaLore uses the param's
  /// index in its projected list, so equal streams give equal sketches).
  ProjectedLinear(std::shared_ptr<nn::LinearLike> base,
                  ProjectorOptions options, int64_t stream = 0);

  /// base(x) + the adapter path (skipped while no basis exists; A is 0 then).
  at::Tensor forward_impl(const at::Tensor& x) override;
  /// W0 + expand(A) [out, in].
  at::Tensor effective_weight() const override;

  /// Trainable A, projector.low_rank_shape(), fp32 (fp64 for fp64 bases).
  at::Tensor& a() { return a_; }
  const at::Tensor& a() const { return a_; }
  Projector& projector() { return projector_; }
  const Projector& projector() const { return projector_; }

  /// W0 += expand(A), A = 0 (in place; A keeps its identity). On a
  /// quantized (NF4) base W0 is dequantized, added to and quantized again
  /// (nn::Nf4Linear::add_to_weight: lossy).
  void merge();
  /// merge() if a basis exists, then the next basis: svd/rsvd from
  /// `full_grad` [out, in], sketches from (seed, stream, refresh index).
  void rebase(const at::Tensor& full_grad);
  /// While on, W0 requires grad so the next backward leaves dL/dW in
  /// base_weight().grad() (only needed for svd/rsvd refreshes). Both on and
  /// off free any gradient W0 already holds (nobody else zeroes it).
  void capture_full_grad(bool on);
  bool capturing() const { return capturing_; }

 private:
  Projector projector_;
  at::Tensor a_;
  bool capturing_ = false;
};

/// Puts a ProjectedLinear into every slot under `root` (find_slots order;
/// stream = position), returning them in that order.
std::vector<std::shared_ptr<ProjectedLinear>> inject_projected(
    torch::nn::Module& root, const ProjectorOptions& options);

}  // namespace lowmem::projection
