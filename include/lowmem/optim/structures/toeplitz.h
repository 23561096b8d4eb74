// Lower/upper triangular Toeplitz Kronecker factors of SINGD (arXiv
// 2312.05705; official singd/structures/tri{l,u}toeplitz.py). Deviations:
// products run as row-panel GEMMs of the triangle (official: grouped conv1d),
// half types on CPU in fp32, and from_inner sums Z Z^T's diagonals panel by
// panel instead of forming the dense n x n matrix.
#pragma once

#include "lowmem/optim/structures/structured_matrix.h"

namespace lowmem::optim::structures {

/// Tril: S[i,j] = d[i-j] (i >= j); triu: S[i,j] = d[j-i] (j >= i). Stores n.
class ToeplitzMatrix final : public StructuredMatrix {
 public:
  ToeplitzMatrix(at::Tensor diags, bool upper);
  LOWMEM_STRUCTURED_MATRIX_OVERRIDES;

 private:
  at::Tensor d_;  // [n]: first column (tril) or first row (triu)
  bool upper_;
};

/// The official "recursive" triangular classes with a diagonal corner
/// (singd/structures/{tril,triu}{bottomright,topleft}diag.py): a diagonal
/// plus one off-diagonal row or column through the hub index h:
///   trilbottomrightdiag [[a, 0], [b, diag(c)]]  column h = 0
///   triltopleftdiag     [[diag(c), 0], [b^T, a]] row h = n-1
///   triubottomrightdiag [[a, b^T], [0, diag(c)]] row h = 0
///   triutopleftdiag     [[diag(c), b], [0, a]]   column h = n-1
/// Stores 2n - 1 numbers. All ops are O(n) or O(n m) (official: dense).
class ArrowMatrix final : public StructuredMatrix {
 public:
  enum class Kind {
    kTrilBottomRight,
    kTrilTopLeft,
    kTriuBottomRight,
    kTriuTopLeft
  };
  ArrowMatrix(Kind kind, at::Tensor diag, at::Tensor off);
  LOWMEM_STRUCTURED_MATRIX_OVERRIDES;

 private:
  bool column() const;  // off-diagonal entries in column h (else row h)
  int64_t hub() const;
  at::Tensor full_off() const;  // [n] with a 0 at the hub
  at::Tensor strip(const at::Tensor& full) const;  // [n] -> [n-1]
  Kind kind_;
  at::Tensor diag_;  // [n]
  at::Tensor off_;   // [n-1]: the off-diagonal entries, hub skipped
};

}  // namespace lowmem::optim::structures
