// Dense and diagonal Kronecker factors of SINGD (arXiv 2312.05705; official
// singd/structures/{dense,diagonal}.py). Dense rmatmat is the true transpose.
#pragma once

#include "lowmem/optim/structures/structured_matrix.h"

namespace lowmem::optim::structures {

/// Unstructured n x n matrix; stores n^2 numbers.
class DenseMatrix final : public StructuredMatrix {
 public:
  explicit DenseMatrix(at::Tensor mat);  // [n, n]
  std::string key() const override { return "dense"; }
  std::vector<at::Tensor> tensors() const override { return {mat_}; }
  StructuredPtr with_tensors(std::vector<at::Tensor> t) const override;
  at::Tensor to_dense() const override { return mat_; }
  StructuredPtr project(const at::Tensor& sym) const override;
  at::Tensor matmul(const at::Tensor& x) const override;
  at::Tensor rmatmat(const at::Tensor& x) const override;
  StructuredPtr matmul(const StructuredMatrix& other) const override;
  StructuredPtr from_inner(const at::Tensor& x) const override;
  double average_trace() const override;
  void diag_add_(double value) override;

 private:
  at::Tensor mat_;  // [n, n]
};

/// diag(d); stores n numbers.
class DiagonalMatrix final : public StructuredMatrix {
 public:
  explicit DiagonalMatrix(at::Tensor diag);  // [n]
  std::string key() const override { return "diagonal"; }
  std::vector<at::Tensor> tensors() const override { return {diag_}; }
  StructuredPtr with_tensors(std::vector<at::Tensor> t) const override;
  at::Tensor to_dense() const override;
  StructuredPtr project(const at::Tensor& sym) const override;
  at::Tensor matmul(const at::Tensor& x) const override;
  at::Tensor rmatmat(const at::Tensor& x) const override;
  StructuredPtr matmul(const StructuredMatrix& other) const override;
  StructuredPtr from_inner(const at::Tensor& x) const override;
  double average_trace() const override;
  void diag_add_(double value) override;

 private:
  at::Tensor diag_;  // [n]
};

}  // namespace lowmem::optim::structures
