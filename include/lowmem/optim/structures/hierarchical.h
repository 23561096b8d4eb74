// Hierarchical Kronecker factor of SINGD (arXiv 2312.05705; official
// singd/structures/hierarchical.py, key "hierarchical15_15"). Follows the
// official code exactly, including the factor 2 in the projection.
#pragma once

#include <array>

#include "lowmem/optim/structures/structured_matrix.h"

namespace lowmem::optim::structures {

/// Rows/cols split [K1 | n_c | K2]:
///   S = [[A, B_c, B_e], [0, diag(c), 0], [0, D, E]],  B = [B_c | B_e].
/// Stores K1^2 + K1 (n - K1) + n_c + K2 n_c + K2^2 numbers (31 n - 255 for
/// 15/15 and n > 30).
class HierarchicalMatrix final : public StructuredMatrix {
 public:
  HierarchicalMatrix(
      int64_t max_k1,
      int64_t max_k2,
      at::Tensor a,
      at::Tensor b,
      at::Tensor c,
      at::Tensor d,
      at::Tensor e);
  LOWMEM_STRUCTURED_MATRIX_OVERRIDES;

  /// (K1, n_c, K2) for an n x n matrix with maxima (max_k1, max_k2).
  static std::array<int64_t, 3> block_dims(
      int64_t n, int64_t max_k1, int64_t max_k2);

 private:
  int64_t max_k1_, max_k2_, k1_, nc_, k2_;
  at::Tensor a_;  // [K1, K1]
  at::Tensor b_;  // [K1, n_c + K2]
  at::Tensor c_;  // [n_c]
  at::Tensor d_;  // [K2, n_c]
  at::Tensor e_;  // [K2, K2]
};

}  // namespace lowmem::optim::structures
