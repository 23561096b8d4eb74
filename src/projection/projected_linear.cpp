#include "lowmem/projection/projected_linear.h"

#include <ATen/ATen.h>

#include "lowmem/core/check.h"
#include "lowmem/nn/slot_module.h"

namespace lowmem::projection {

ProjectedLinear::ProjectedLinear(std::shared_ptr<nn::LinearLike> base,
                                 ProjectorOptions options, int64_t stream)
    : nn::WrappedLinear(std::move(base), "base", "[projected_adapter]"),
      projector_(std::move(options), out_features(), in_features(), stream) {
  LOWMEM_CHECK(projector_.options().proj_dtype() == "float32",
               "[projected_adapter] proj_dtype '",
               projector_.options().proj_dtype(),
               "' is for GaLore (the optimizer form); the adapter keeps its "
               "basis in float32 (set proj_dtype float32)");
  if (base_->is_quantized()) {
    // An NF4 base has no dense weight whose gradient a refresh could read.
    LOWMEM_CHECK(!projector_.needs_gradient(), "[projected_adapter] basis '",
                 projector_.options().basis(), "' needs the full gradient of ",
                 "the base weight, which a quantized (NF4) base does not ",
                 "have; use a random sketch basis");
  } else {
    auto& w = base_->base_weight();
    w.set_requires_grad(false);
    w.mutable_grad() = at::Tensor();  // frozen: a leftover gradient is dead
  }
  const at::TensorOptions w = base_->weight_options();
  const auto dtype = w.dtype() == at::kDouble ? at::kDouble : at::kFloat;
  a_ = register_parameter(
      "a", at::zeros(projector_.low_rank_shape(), w.dtype(dtype)));
}

at::Tensor ProjectedLinear::forward_impl(const at::Tensor& x) {
  auto y = base_->forward_impl(x);
  if (!projector_.has_basis()) return y;
  auto xa = x.to(a_.scalar_type());
  at::Tensor z;
  // Thin products only: [.., in] -> [.., r] -> ... -> [.., out].
  switch (projector_.side()) {
    case Side::kLeft:  // x (P A)^T = (x A^T) P^T
      z = at::matmul(at::matmul(xa, a_.t()), projector_.left().t());
      break;
    case Side::kRight:  // x (A Q^T)^T = (x Q) A^T
      z = at::matmul(at::matmul(xa, projector_.right()), a_.t());
      break;
    case Side::kBoth:  // x (P A Q^T)^T = ((x Q) A^T) P^T
      z = at::matmul(at::matmul(at::matmul(xa, projector_.right()), a_.t()),
                     projector_.left().t());
      break;
  }
  return y + z.to(y.scalar_type());
}

at::Tensor ProjectedLinear::effective_weight() const {
  auto w = base_->effective_weight();
  if (!projector_.has_basis()) return w;
  return w + projector_.expand(a_.detach()).to(w.scalar_type());
}

void ProjectedLinear::merge() {
  if (!projector_.has_basis()) return;
  at::NoGradGuard no_grad;
  // A dense base adds in its dtype; an NF4 base re-quantizes (lossy).
  base_->add_to_weight(projector_.expand(a_));
  a_.zero_();
}

void ProjectedLinear::rebase(const at::Tensor& full_grad) {
  merge();
  if (projector_.needs_gradient()) {
    LOWMEM_CHECK(full_grad.defined(), "[projected_adapter] basis '",
                 projector_.options().basis(),
                 "' needs the full weight gradient; capture it with "
                 "capture_full_grad(true) before the forward pass");
    projector_.refresh(full_grad);
  } else {
    projector_.refresh(a_.scalar_type(), a_.device());
  }
}

void ProjectedLinear::capture_full_grad(bool on) {
  if (base_->is_quantized() && !on) return;  // nothing was captured
  auto& w = base_->base_weight();
  // Always start (and end) from no gradient: W0 belongs to no optimizer, so
  // nobody else zeroes it, and a stale .grad (e.g. left by a GaLore-form run
  // before a conversion) would be summed into the captured one.
  w.mutable_grad() = at::Tensor();
  w.set_requires_grad(on);
  capturing_ = on;
}

std::vector<std::shared_ptr<ProjectedLinear>> inject_projected(
    torch::nn::Module& root, const ProjectorOptions& options) {
  std::vector<std::shared_ptr<ProjectedLinear>> out;
  int64_t stream = 0;
  for (const auto& ref : nn::find_slots(root)) {
    auto layer =
        std::make_shared<ProjectedLinear>(ref.layer(), options, stream++);
    ref.replace(layer);
    out.push_back(layer);
  }
  return out;
}

}  // namespace lowmem::projection
