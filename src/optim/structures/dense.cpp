#include "lowmem/optim/structures/dense.h"

#include <ATen/ATen.h>

#include "lowmem/core/check.h"

namespace lowmem::optim::structures {

DenseMatrix::DenseMatrix(at::Tensor mat)
    : StructuredMatrix(mat.size(0)), mat_(std::move(mat)) {
  LOWMEM_CHECK(
      mat_.dim() == 2 && mat_.size(0) == mat_.size(1),
      "[singd] dense factor must be square, got ", mat_.sizes());
}

std::string DenseMatrix::key() const {
  return "dense";
}

std::vector<at::Tensor> DenseMatrix::tensors() const {
  return {mat_};
}

at::Tensor DenseMatrix::to_dense() const {
  return mat_;
}

StructuredPtr DenseMatrix::with_tensors(std::vector<at::Tensor> t) const {
  return std::make_unique<DenseMatrix>(std::move(t.at(0)));
}

StructuredPtr DenseMatrix::project(const at::Tensor& sym) const {
  return std::make_unique<DenseMatrix>(sym);
}

at::Tensor DenseMatrix::matmul(const at::Tensor& x) const {
  return at::matmul(mat_, x.to(mat_.scalar_type()));
}

at::Tensor DenseMatrix::rmatmat(const at::Tensor& x) const {
  return at::matmul(mat_.t(), x.to(mat_.scalar_type()));
}

StructuredPtr DenseMatrix::matmul(const StructuredMatrix& other) const {
  return std::make_unique<DenseMatrix>(at::matmul(mat_, same_structure(*this, other).mat_));
}

StructuredPtr DenseMatrix::from_inner(const at::Tensor& x) const {
  at::Tensor s = x.defined() ? rmatmat(x) : mat_.t();
  return std::make_unique<DenseMatrix>(at::matmul(s, s.t()));
}

double DenseMatrix::average_trace() const {
  return mat_.diagonal().mean().item<double>();
}

void DenseMatrix::diag_add_(double value) {
  mat_.diagonal().add_(value);
}

DiagonalMatrix::DiagonalMatrix(at::Tensor diag)
    : StructuredMatrix(diag.size(0)), diag_(std::move(diag)) {
  LOWMEM_CHECK(
      diag_.dim() == 1, "[singd] diagonal factor must be 1-D, got ",
      diag_.sizes());
}

std::string DiagonalMatrix::key() const {
  return "diagonal";
}

std::vector<at::Tensor> DiagonalMatrix::tensors() const {
  return {diag_};
}

StructuredPtr DiagonalMatrix::with_tensors(std::vector<at::Tensor> t) const {
  return std::make_unique<DiagonalMatrix>(std::move(t.at(0)));
}

at::Tensor DiagonalMatrix::to_dense() const {
  return at::diag(diag_);
}

StructuredPtr DiagonalMatrix::project(const at::Tensor& sym) const {
  return std::make_unique<DiagonalMatrix>(sym.diagonal().clone());
}

at::Tensor DiagonalMatrix::matmul(const at::Tensor& x) const {
  at::Tensor d = diag_;
  for (int64_t i = 1; i < x.dim(); ++i) d = d.unsqueeze(-1);
  return d * x.to(diag_.scalar_type());
}

at::Tensor DiagonalMatrix::rmatmat(const at::Tensor& x) const {
  return matmul(x);
}

StructuredPtr DiagonalMatrix::matmul(const StructuredMatrix& other) const {
  return std::make_unique<DiagonalMatrix>(diag_ * same_structure(*this, other).diag_);
}

StructuredPtr DiagonalMatrix::from_inner(const at::Tensor& x) const {
  at::Tensor d = diag_.pow(2);
  if (x.defined()) d = d * x.to(diag_.scalar_type()).pow(2).sum(1);
  return std::make_unique<DiagonalMatrix>(d);
}

double DiagonalMatrix::average_trace() const {
  return diag_.mean().item<double>();
}

void DiagonalMatrix::diag_add_(double value) {
  diag_.add_(value);
}

}  // namespace lowmem::optim::structures
