// Dense and diagonal Kronecker factors of SINGD (arXiv 2312.05705; official
// singd/structures/{dense,diagonal}.py). Dense rmatmat is the true transpose.
#pragma once

#include "lowmem/optim/structures/structured_matrix.h"

namespace lowmem::optim::structures {

/// Unstructured n x n matrix; stores n^2 numbers.
class DenseMatrix final : public StructuredMatrix {
 public:
  explicit DenseMatrix(at::Tensor mat);  // [n, n]
  LOWMEM_STRUCTURED_MATRIX_OVERRIDES;

 private:
  at::Tensor mat_;  // [n, n]
};

/// diag(d); stores n numbers.
class DiagonalMatrix final : public StructuredMatrix {
 public:
  explicit DiagonalMatrix(at::Tensor diag);  // [n]
  LOWMEM_STRUCTURED_MATRIX_OVERRIDES;

 private:
  at::Tensor diag_;  // [n]
};

}  // namespace lowmem::optim::structures
