// Block-diagonal Kronecker factor of SINGD (arXiv 2312.05705; official
// singd/structures/blockdiagonal.py, key "block30diagonal"). Quirk kept by
// default: the official rmatmat returns S X (not S^T X) and from_inner()
// returns Pi(S S^T); `correct_block_transpose` switches to the true transpose.
#pragma once

#include "lowmem/optim/structures/structured_matrix.h"

namespace lowmem::optim::structures {

/// floor(n/b) blocks of b x b plus one trailing r x r block (r = n mod b);
/// stores floor(n/b) b^2 + r^2 numbers.
class BlockDiagonalMatrix final : public StructuredMatrix {
 public:
  BlockDiagonalMatrix(
      int64_t block_dim,
      at::Tensor blocks,
      at::Tensor last,
      bool correct_transpose);
  LOWMEM_STRUCTURED_MATRIX_OVERRIDES;
  int64_t block_dim() const { return b_; }

 private:
  at::Tensor apply(const at::Tensor& x, bool transpose) const;
  int64_t b_;
  at::Tensor blocks_;  // [floor(n/b), b, b]
  at::Tensor last_;    // [r, r]
  bool correct_transpose_;
};

}  // namespace lowmem::optim::structures
