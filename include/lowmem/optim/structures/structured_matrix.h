// Structured square matrices closed under multiplication: the Kronecker factor
// classes of SINGD (Lin et al., arXiv 2312.05705; official f-dangel/singd,
// singd/structures/). Each class stores only its free numbers. Deviations: the
// arrow-triangular classes (official: dense fall-backs) and the Toeplitz
// from_inner (official: dense Z Z^T) use O(n) / panel-by-panel algorithms.
#pragma once

#include <ATen/core/Tensor.h>

#include "lowmem/core/check.h"

#include <memory>
#include <string>
#include <vector>

namespace lowmem::optim::structures {

class StructuredMatrix;
using StructuredPtr = std::unique_ptr<StructuredMatrix>;

/// An n x n matrix S of some structure. "Pi(M)" is the projection of a dense
/// *symmetric* M onto the structure (official `from_dense`).
class StructuredMatrix {
 public:
  explicit StructuredMatrix(int64_t dim) : dim_(dim) {}
  virtual ~StructuredMatrix() = default;
  StructuredMatrix(const StructuredMatrix&) = delete;
  StructuredMatrix& operator=(const StructuredMatrix&) = delete;

  /// Registry key ("dense", "block30diagonal", ...).
  virtual std::string key() const = 0;
  int64_t dim() const { return dim_; }
  /// The stored numbers, in a fixed order (add_/mul_ pair them up).
  virtual std::vector<at::Tensor> tensors() const = 0;
  /// A matrix of the same class and dim holding `tensors` (same order).
  virtual StructuredPtr with_tensors(std::vector<at::Tensor> tensors) const = 0;

  /// Dense n x n equivalent (tests, debugging).
  virtual at::Tensor to_dense() const = 0;
  /// Pi(sym) in this class (same dim), dtype of `sym`.
  virtual StructuredPtr project(const at::Tensor& sym) const = 0;
  /// S X for a dense X [n, m].
  virtual at::Tensor matmul(const at::Tensor& x) const = 0;
  /// S^T X (block-diagonal: S X unless built with the transpose fix).
  virtual at::Tensor rmatmat(const at::Tensor& x) const = 0;
  /// S S' for S' of the same class.
  virtual StructuredPtr matmul(const StructuredMatrix& other) const = 0;
  /// Pi(S^T X X^T S); X undefined means X = I, i.e. Pi(S^T S).
  virtual StructuredPtr from_inner(const at::Tensor& x) const = 0;
  /// trace(S) / n.
  virtual double average_trace() const = 0;
  /// S += value * I.
  virtual void diag_add_(double value) = 0;

  /// Tensor-wise S += alpha * other (same class).
  void add_(const StructuredMatrix& other, double alpha = 1.0);
  void mul_(double value);
  /// Largest |entry| over the stored tensors (empty ones skipped).
  double infinity_vector_norm() const;
  /// Number of stored elements.
  int64_t numel() const;
  /// Bytes of the stored tensors.
  int64_t nbytes() const;
  at::ScalarType dtype() const;
  StructuredPtr clone() const;
  StructuredPtr zeros_like() const;

 private:
  int64_t dim_;
};

/// The overrides every structure class declares (contracts on
/// StructuredMatrix above), listed once for all of them.
#define LOWMEM_STRUCTURED_MATRIX_OVERRIDES                                      \
  std::string key() const override;                                           \
  std::vector<at::Tensor> tensors() const override;                           \
  StructuredPtr with_tensors(std::vector<at::Tensor> tensors) const override; \
  at::Tensor to_dense() const override;                                       \
  StructuredPtr project(const at::Tensor& sym) const override;                \
  at::Tensor matmul(const at::Tensor& x) const override;                      \
  at::Tensor rmatmat(const at::Tensor& x) const override;                     \
  StructuredPtr matmul(const StructuredMatrix& other) const override;         \
  StructuredPtr from_inner(const at::Tensor& x) const override;               \
  double average_trace() const override;                                      \
  void diag_add_(double value) override

/// `other` as the class T of `self` after checking that it has the same
/// structure (same key: block size, triangle, corner) and dim; throws
/// "[singd] cannot multiply <key>(<n>) by <key>(<n>)" otherwise.
template <class T>
const T& same_structure(const T& self, const StructuredMatrix& other) {
  auto* o = dynamic_cast<const T*>(&other);
  LOWMEM_CHECK(
      o && other.key() == self.key() && other.dim() == self.dim(),
      "[singd] cannot multiply ", self.key(), "(", self.dim(), ") by ",
      other.key(), "(", other.dim(), ")");
  return *o;
}

/// Options of the factory beyond key/dim/dtype.
struct StructureOptions {
  /// Block-diagonal only: use K_i^T where the official code uses K_i (its
  /// rmatmat and from_inner(); see docs/singd.md). Off = official behaviour.
  bool correct_block_transpose = false;
};

/// Identity (identity=true) or zero matrix of the structure `key`:
/// dense, diagonal, block<b>diagonal (official: block30diagonal),
/// hierarchical<K1>_<K2> (official: hierarchical15_15), triltoeplitz,
/// triutoeplitz, trilbottomrightdiag, triltopleftdiag, triubottomrightdiag,
/// triutopleftdiag.
StructuredPtr make_structured(
    const std::string& key,
    int64_t dim,
    const at::TensorOptions& options,
    bool identity,
    const StructureOptions& extra = {});

/// Throws "[singd] unknown structure '<key>'" for a bad key.
void check_structure_key(const std::string& key);

/// Stored element count of an n x n factor of structure `key`.
int64_t structured_numel(const std::string& key, int64_t dim);

/// The keys of every structure family (for help texts).
std::vector<std::string> structure_keys();

namespace detail {
/// The precision an official mixed-dtype product runs in: the lowest of two
/// (fp16 < bf16 < fp32) when either is half, otherwise the promoted type.
at::ScalarType compute_dtype(at::ScalarType a, at::ScalarType b);
}  // namespace detail

}  // namespace lowmem::optim::structures
