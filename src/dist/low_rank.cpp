#include "lowmem/dist/low_rank.h"

#include "lowmem/core/check.h"
#include "lowmem/optim/galore.h"
#include "lowmem/projection/projector.h"

#include <c10/core/GradMode.h>
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

namespace lowmem::dist {
namespace {

uint64_t mix_seed(uint64_t a, uint64_t b) {
  uint64_t h = a ^ (b + 0x9e3779b97f4a7c15ULL + (a << 6) + (a >> 2));
  h ^= h >> 31;
  h *= 0x7fb5d329728ea185ULL;
  h ^= h >> 27;
  return h;
}

// GaLore's "std" side for W [m, n]: m >= n: right (G Q, m x r), else left
// (P^T G, r x n); so a GaLore basis can be used as it is.
bool left_side(const at::Tensor& p) {
  return projection::side_for("std", p.size(0), p.size(1)) ==
      projection::Side::kLeft;
}

at::Tensor project(const at::Tensor& g, const at::Tensor& basis) {
  return left_side(g) ? at::matmul(basis.t(), g) : at::matmul(g, basis);
}

at::Tensor project_back(const at::Tensor& low, const at::Tensor& basis,
                        const at::Tensor& like) {
  return left_side(like) ? at::matmul(basis, low) : at::matmul(low, basis.t());
}

}  // namespace

LowRankGradSync::LowRankGradSync(
    std::shared_ptr<Communicator> comm,
    std::vector<at::Tensor> params,
    LowRankSyncOptions options)
    : comm_(std::move(comm)), params_(std::move(params)), options_(options) {
  LOWMEM_CHECK(comm_ != nullptr, "[dist] LowRankGradSync needs a communicator");
  LOWMEM_CHECK(
      options_.rank() >= 1, "[dist] rank must be >= 1, got ", options_.rank());
  LOWMEM_CHECK(
      options_.update_proj_gap() >= 1,
      "[dist] update_proj_gap must be >= 1, got ",
      options_.update_proj_gap());
  for (const auto& p : params_) {
    LOWMEM_CHECK(
        p.defined() && p.requires_grad(),
        "[dist] LowRankGradSync parameters must require grad");
    const bool lr = p.dim() == 2 &&
        std::min(p.size(0), p.size(1)) > options_.rank() &&
        at::isFloatingType(p.scalar_type());
    projected_.push_back(lr);
    full_bytes_ += p.numel() * static_cast<int64_t>(p.element_size());
  }
  last_basis_.resize(params_.size());
}

at::Tensor LowRankGradSync::random_basis(int64_t index, int64_t step,
                                         int worker) const {
  const auto& p = params_.at(index);
  const int64_t d = std::min(p.size(0), p.size(1));
  const int64_t period = step / options_.update_proj_gap();
  uint64_t s = mix_seed(options_.seed(), static_cast<uint64_t>(index));
  s = mix_seed(s, static_cast<uint64_t>(period));
  s = mix_seed(s, static_cast<uint64_t>(worker));
  // Generated on the CPU in float64 so every device and rank gets the same
  // basis, then orthonormalised (P^T P = I) and moved to the parameter.
  auto gen = at::detail::createCPUGenerator(s);
  auto gauss = at::randn({d, options_.rank()}, gen, at::kDouble);
  auto q = std::get<0>(at::linalg_qr(gauss));
  return q.to(p.device(), p.scalar_type());
}

namespace {

// Concatenates `tensors` (flattened) into one buffer.
at::Tensor flatten(const std::vector<at::Tensor>& tensors) {
  std::vector<at::Tensor> parts;
  parts.reserve(tensors.size());
  for (const auto& t : tensors) {
    parts.push_back(t.reshape({-1}));
  }
  return at::cat(parts);
}

// Piece k of a flat buffer of `shapes` (the tensors flatten() took).
at::Tensor piece_of(const at::Tensor& flat,
                    const std::vector<at::Tensor>& shapes, size_t k) {
  int64_t off = 0;
  for (size_t j = 0; j < k; ++j) {
    off += shapes[j].numel();
  }
  return flat.narrow(0, off, shapes[k].numel()).view(shapes[k].sizes());
}

}  // namespace

void LowRankGradSync::synchronize() {
  c10::NoGradGuard no_grad;
  const int world = comm_->world_size();
  const bool per_worker = options_.mode() == ProjectionMode::kPerWorker;
  const auto before = comm_->stats().total_bytes();
  std::vector<at::Tensor> full;  // averaged in full
  std::vector<at::Tensor> low;   // projected pieces
  std::vector<int64_t> low_idx;
  for (size_t i = 0; i < params_.size(); ++i) {
    auto& p = params_[i];
    if (!p.grad().defined()) {
      p.mutable_grad() = at::zeros_like(p);
    }
    const at::Tensor basis = basis_for(i, per_worker);
    last_basis_[i] = basis;
    if (basis.defined()) {
      low.push_back(project(p.grad(), basis.to(p.grad().scalar_type())));
      low_idx.push_back(static_cast<int64_t>(i));
    } else {
      full.push_back(p.grad());
    }
  }
  // Full part: one flat all-reduce (mean).
  if (!full.empty() && world > 1) {
    auto flat = flatten(full);
    comm_->allreduce_mean({flat});
    for (size_t k = 0; k < full.size(); ++k) {
      full[k].copy_(piece_of(flat, full, k));
    }
  }
  if (!low.empty()) {
    if (per_worker) {
      average_per_worker(low, low_idx);
    } else {
      auto flat = flatten(low);
      comm_->allreduce_mean({flat});
      for (size_t k = 0; k < low.size(); ++k) {
        auto& p = params_[low_idx[k]];
        const auto piece = piece_of(flat, low, k);
        p.mutable_grad().copy_(project_back(
            piece, last_basis_[low_idx[k]].to(piece.scalar_type()), p));
      }
    }
  }
  bytes_last_step_ = comm_->stats().total_bytes() - before;
  ++step_;
}

at::Tensor LowRankGradSync::basis_for(size_t i, bool per_worker) {
  if (!projected_[i]) {
    return at::Tensor();
  }
  const auto& p = params_[i];
  const at::Tensor basis =
      options_.basis_provider()
          ? options_.basis_provider()(static_cast<int64_t>(i), p, step_)
          : random_basis(static_cast<int64_t>(i), step_,
                         per_worker ? comm_->rank() : 0);
  if (basis.defined()) {
    const int64_t d = std::min(p.size(0), p.size(1));
    LOWMEM_CHECK(basis.dim() == 2 && basis.size(0) == d,
                 "[dist] basis for parameter ", i, " must be [", d,
                 ", r], got ", basis.sizes());
  }
  return basis;
}

void LowRankGradSync::average_per_worker(const std::vector<at::Tensor>& low,
                                         const std::vector<int64_t>& low_idx) {
  LOWMEM_CHECK(!options_.basis_provider(),
               "[dist] the per-worker mode uses seeded random bases (each "
               "rank regenerates the others'); a basis_provider is not "
               "supported");
  const int world = comm_->world_size();
  const auto pieces = comm_->allgather(flatten(low));
  for (size_t k = 0; k < low.size(); ++k) {
    auto& p = params_[low_idx[k]];
    at::Tensor sum;
    for (int w = 0; w < world; ++w) {
      const auto piece = piece_of(pieces[w], low, k);
      const auto basis = w == comm_->rank()
                             ? last_basis_[low_idx[k]]
                             : random_basis(low_idx[k], step_, w);
      auto g = project_back(piece, basis.to(piece.scalar_type()), p);
      sum = sum.defined() ? sum.add_(g) : g;
    }
    p.mutable_grad().copy_(sum.div_(world));
  }
}

BasisProvider galore_basis_provider(
    const optim::GaLore& galore,
    std::vector<at::Tensor> projected) {
  LOWMEM_CHECK(
      projected.size() == galore.num_projected(),
      "[dist] galore_basis_provider needs GaLore's projected parameters (",
      galore.num_projected(),
      "), got ",
      projected.size());
  LOWMEM_CHECK(
      !galore.options().layerwise() &&
          galore.options().accumulation_steps() == 1,
      "[dist] low-rank sync needs GaLore without layerwise updates or "
      "accumulation hooks (they consume the gradient during backward)");
  const optim::GaLore* g = &galore;
  return [g, projected = std::move(projected)](
             int64_t, const at::Tensor& param, int64_t) -> at::Tensor {
    for (size_t i = 0; i < projected.size(); ++i) {
      if (!projected[i].is_same(param)) {
        continue;
      }
      const auto& proj = g->projector(i);
      if (!proj.has_basis() || proj.needs_refresh(g->step_count(i))) {
        return {};  // GaLore draws a new basis from this step's gradient
      }
      const bool left = left_side(param);
      if (proj.side() == projection::Side::kLeft && left) {
        return proj.left();
      }
      if (proj.side() == projection::Side::kRight && !left) {
        return proj.right();
      }
      return {};
    }
    return {};
  };
}

}  // namespace lowmem::dist
