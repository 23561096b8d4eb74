#include "lowmem/optim/structures/block_diagonal.h"

#include <ATen/ATen.h>

#include "lowmem/core/check.h"

namespace lowmem::optim::structures {

BlockDiagonalMatrix::BlockDiagonalMatrix(
    int64_t block_dim,
    at::Tensor blocks,
    at::Tensor last,
    bool correct_transpose)
    : StructuredMatrix(blocks.size(0) * block_dim + last.size(0)),
      b_(block_dim),
      blocks_(std::move(blocks)),
      last_(std::move(last)),
      correct_transpose_(correct_transpose) {
  LOWMEM_CHECK(
      blocks_.dim() == 3 && blocks_.size(1) == b_ && blocks_.size(2) == b_,
      "[singd] blocks must be [n_blocks, ", b_, ", ", b_, "], got ",
      blocks_.sizes());
  LOWMEM_CHECK(
      last_.dim() == 2 && last_.size(0) == last_.size(1) && last_.size(0) < b_,
      "[singd] last block must be square and smaller than ", b_, ", got ",
      last_.sizes());
}

std::vector<at::Tensor> BlockDiagonalMatrix::tensors() const {
  return {blocks_, last_};
}

std::string BlockDiagonalMatrix::key() const {
  return "block" + std::to_string(b_) + "diagonal";
}

StructuredPtr BlockDiagonalMatrix::with_tensors(
    std::vector<at::Tensor> t) const {
  return std::make_unique<BlockDiagonalMatrix>(
      b_, std::move(t.at(0)), std::move(t.at(1)), correct_transpose_);
}

at::Tensor BlockDiagonalMatrix::to_dense() const {
  int64_t nb = blocks_.size(0), n = dim();
  at::Tensor out = at::zeros({n, n}, blocks_.options());
  for (int64_t i = 0; i < nb; ++i)
    out.slice(0, i * b_, (i + 1) * b_).slice(1, i * b_, (i + 1) * b_).copy_(
        blocks_[i]);
  out.slice(0, nb * b_).slice(1, nb * b_).copy_(last_);
  return out;
}

StructuredPtr BlockDiagonalMatrix::project(const at::Tensor& sym) const {
  int64_t nb = blocks_.size(0), end = nb * b_;
  at::Tensor head = sym.slice(0, 0, end).slice(1, 0, end).reshape(
      {nb, b_, nb, b_});
  // [b, b, nb] diagonal over the two block indices -> [nb, b, b]
  at::Tensor blocks = head.diagonal(0, 0, 2).permute({2, 0, 1}).contiguous();
  at::Tensor last = sym.slice(0, end).slice(1, end).contiguous();
  return std::make_unique<BlockDiagonalMatrix>(
      b_, blocks, last, correct_transpose_);
}

at::Tensor BlockDiagonalMatrix::apply(const at::Tensor& x, bool transpose)
    const {
  LOWMEM_CHECK(
      x.dim() == 2 && x.size(0) == dim(), "[singd] expected a matrix with ",
      dim(), " rows, got ", x.sizes());
  int64_t nb = blocks_.size(0), r = last_.size(0), cols = x.size(1);
  // Official: the product runs in the lower precision of the two operands
  // and is cast back to the block dtype.
  auto out_dtype = blocks_.scalar_type();
  auto cdt = detail::compute_dtype(out_dtype, x.scalar_type());
  at::Tensor xb = x.slice(0, 0, nb * b_).reshape({nb, b_, cols}).to(cdt);
  at::Tensor blocks = transpose ? blocks_.transpose(1, 2) : blocks_;
  at::Tensor last = transpose ? last_.t() : last_;
  at::Tensor top = at::bmm(blocks.to(cdt), xb).reshape({nb * b_, cols});
  at::Tensor bottom = at::matmul(last.to(cdt), x.slice(0, nb * b_).to(cdt));
  (void)r;
  return at::cat({top, bottom}, 0).to(out_dtype);
}

at::Tensor BlockDiagonalMatrix::matmul(const at::Tensor& x) const {
  return apply(x, false);
}

at::Tensor BlockDiagonalMatrix::rmatmat(const at::Tensor& x) const {
  // Official quirk: rmatmat(X) = S @ X.
  return apply(x, correct_transpose_);
}

StructuredPtr BlockDiagonalMatrix::matmul(const StructuredMatrix& other) const {
  const auto* o = &same_structure(*this, other);
  return std::make_unique<BlockDiagonalMatrix>(
      b_, at::bmm(blocks_, o->blocks_), at::matmul(last_, o->last_),
      correct_transpose_);
}

StructuredPtr BlockDiagonalMatrix::from_inner(const at::Tensor& x) const {
  if (!x.defined()) {
    // Official: K_i K_i^T (quirk); correct: K_i^T K_i.
    at::Tensor blocks = correct_transpose_
                            ? at::bmm(blocks_.transpose(1, 2), blocks_)
                            : at::bmm(blocks_, blocks_.transpose(1, 2));
    at::Tensor last = correct_transpose_ ? at::matmul(last_.t(), last_)
                                         : at::matmul(last_, last_.t());
    return std::make_unique<BlockDiagonalMatrix>(
        b_, blocks, last, correct_transpose_);
  }
  at::Tensor s = rmatmat(x);
  int64_t nb = blocks_.size(0), cols = s.size(1);
  at::Tensor sb = s.slice(0, 0, nb * b_).reshape({nb, b_, cols});
  at::Tensor sl = s.slice(0, nb * b_);
  return std::make_unique<BlockDiagonalMatrix>(
      b_, at::bmm(sb, sb.transpose(1, 2)), at::matmul(sl, sl.t()),
      correct_transpose_);
}

double BlockDiagonalMatrix::average_trace() const {
  double n = static_cast<double>(dim());
  at::Tensor tr = blocks_.diagonal(0, 1, 2).sum() + last_.diagonal().sum();
  return tr.item<double>() / n;
}

void BlockDiagonalMatrix::diag_add_(double value) {
  blocks_.diagonal(0, 1, 2).add_(value);
  last_.diagonal().add_(value);
}

}  // namespace lowmem::optim::structures
