#include "lowmem/optim/structures/structured_matrix.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cctype>
#include <cmath>

#include "lowmem/core/check.h"
#include "lowmem/optim/structures/block_diagonal.h"
#include "lowmem/optim/structures/dense.h"
#include "lowmem/optim/structures/hierarchical.h"
#include "lowmem/optim/structures/toeplitz.h"

namespace lowmem::optim::structures {

void StructuredMatrix::add_(const StructuredMatrix& other, double alpha) {
  LOWMEM_CHECK(
      other.key() == key() && other.dim() == dim(), "[singd] add_ of ",
      other.key(), "(", other.dim(), ") to ", key(), "(", dim(), ")");
  auto mine = tensors();
  auto theirs = other.tensors();
  for (size_t i = 0; i < mine.size(); ++i) mine[i].add_(theirs[i], alpha);
}

void StructuredMatrix::mul_(double value) {
  for (auto& t : tensors()) t.mul_(value);
}

double StructuredMatrix::infinity_vector_norm() const {
  double out = 0.0;
  bool any = false;
  for (const auto& t : tensors()) {
    if (t.numel() == 0) continue;
    out = std::max(out, t.abs().max().item<double>());
    any = true;
  }
  LOWMEM_CHECK(any, "[singd] infinity norm of an empty ", key(), " matrix");
  return out;
}

int64_t StructuredMatrix::numel() const {
  int64_t n = 0;
  for (const auto& t : tensors()) n += t.numel();
  return n;
}

int64_t StructuredMatrix::nbytes() const {
  int64_t n = 0;
  for (const auto& t : tensors())
    n += t.numel() * static_cast<int64_t>(t.element_size());
  return n;
}

at::ScalarType StructuredMatrix::dtype() const {
  return tensors().front().scalar_type();
}

StructuredPtr StructuredMatrix::clone() const {
  std::vector<at::Tensor> t;
  for (const auto& x : tensors()) t.push_back(x.clone());
  return with_tensors(std::move(t));
}

StructuredPtr StructuredMatrix::zeros_like() const {
  std::vector<at::Tensor> t;
  for (const auto& x : tensors()) t.push_back(at::zeros_like(x));
  return with_tensors(std::move(t));
}

namespace detail {
at::ScalarType compute_dtype(at::ScalarType a, at::ScalarType b) {
  if (a == at::kHalf || b == at::kHalf) return at::kHalf;
  if (a == at::kBFloat16 || b == at::kBFloat16) return at::kBFloat16;
  return at::promote_types(a, b);
}
}  // namespace detail

namespace {

// Parses "<prefix><int>[<sep><int>]<suffix>"-style keys; returns false if
// `key` does not match.
bool parse_block(const std::string& key, int64_t* b) {
  const std::string pre = "block", post = "diagonal";
  if (key.size() <= pre.size() + post.size() || key.rfind(pre, 0) != 0 ||
      key.compare(key.size() - post.size(), post.size(), post) != 0)
    return false;
  std::string mid = key.substr(pre.size(), key.size() - pre.size() - post.size());
  if (mid.empty() || !std::all_of(mid.begin(), mid.end(), ::isdigit))
    return false;
  *b = std::stoll(mid);
  return *b > 0;
}

bool parse_hierarchical(const std::string& key, int64_t* k1, int64_t* k2) {
  const std::string pre = "hierarchical";
  if (key.rfind(pre, 0) != 0) return false;
  std::string rest = key.substr(pre.size());
  auto us = rest.find('_');
  if (us == std::string::npos) return false;
  std::string a = rest.substr(0, us), c = rest.substr(us + 1);
  auto digits = [](const std::string& s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), ::isdigit);
  };
  if (!digits(a) || !digits(c)) return false;
  *k1 = std::stoll(a);
  *k2 = std::stoll(c);
  return *k1 > 0 && *k2 > 0;
}

bool parse_arrow(const std::string& key, ArrowMatrix::Kind* kind) {
  if (key == "trilbottomrightdiag") {
    *kind = ArrowMatrix::Kind::kTrilBottomRight;
  } else if (key == "triltopleftdiag") {
    *kind = ArrowMatrix::Kind::kTrilTopLeft;
  } else if (key == "triubottomrightdiag") {
    *kind = ArrowMatrix::Kind::kTriuBottomRight;
  } else if (key == "triutopleftdiag") {
    *kind = ArrowMatrix::Kind::kTriuTopLeft;
  } else {
    return false;
  }
  return true;
}

// Identity on CPU in bf16 is built in fp32 first (official supported_eye).
at::Tensor eye(int64_t n, const at::TensorOptions& o) {
  return at::eye(n, o.dtype(at::kFloat)).to(o.dtype());
}

}  // namespace

std::vector<std::string> structure_keys() {
  return {"dense",          "diagonal",           "block<b>diagonal",
          "hierarchical<K1>_<K2>", "triltoeplitz", "triutoeplitz",
          "trilbottomrightdiag", "triltopleftdiag", "triubottomrightdiag",
          "triutopleftdiag"};
}

void check_structure_key(const std::string& key) {
  int64_t a = 0, b = 0;
  ArrowMatrix::Kind k{};
  bool ok = key == "dense" || key == "diagonal" || key == "triltoeplitz" ||
            key == "triutoeplitz" || parse_block(key, &a) ||
            parse_hierarchical(key, &a, &b) || parse_arrow(key, &k);
  LOWMEM_CHECK(
      ok, "[singd] unknown structure '", key,
      "' (expected dense, diagonal, block<b>diagonal e.g. block30diagonal, "
      "hierarchical<K1>_<K2> e.g. hierarchical15_15, triltoeplitz, "
      "triutoeplitz, trilbottomrightdiag, triltopleftdiag, "
      "triubottomrightdiag or triutopleftdiag)");
}

StructuredPtr make_structured(
    const std::string& key,
    int64_t n,
    const at::TensorOptions& o,
    bool identity,
    const StructureOptions& extra) {
  check_structure_key(key);
  LOWMEM_CHECK(n > 0, "[singd] structure dim must be positive, got ", n);
  auto z = [&](at::IntArrayRef shape) { return at::zeros(shape, o); };
  if (key == "dense")
    return std::make_unique<DenseMatrix>(identity ? eye(n, o) : z({n, n}));
  if (key == "diagonal")
    return std::make_unique<DiagonalMatrix>(
        identity ? at::ones({n}, o) : z({n}));
  if (key == "triltoeplitz" || key == "triutoeplitz") {
    at::Tensor d = z({n});
    if (identity) d[0] = 1.0;
    return std::make_unique<ToeplitzMatrix>(d, key == "triutoeplitz");
  }
  int64_t b = 0, k1 = 0, k2 = 0;
  if (parse_block(key, &b)) {
    int64_t nb = n / b, r = n % b;
    at::Tensor blocks = identity ? eye(b, o).unsqueeze(0).repeat({nb, 1, 1})
                                 : z({nb, b, b});
    at::Tensor last = identity ? eye(r, o) : z({r, r});
    return std::make_unique<BlockDiagonalMatrix>(
        b, blocks, last, extra.correct_block_transpose);
  }
  if (parse_hierarchical(key, &k1, &k2)) {
    auto dims = HierarchicalMatrix::block_dims(n, k1, k2);
    int64_t K1 = dims[0], nc = dims[1], K2 = dims[2];
    return std::make_unique<HierarchicalMatrix>(
        k1, k2, identity ? eye(K1, o) : z({K1, K1}), z({K1, nc + K2}),
        identity ? at::ones({nc}, o) : z({nc}), z({K2, nc}),
        identity ? eye(K2, o) : z({K2, K2}));
  }
  ArrowMatrix::Kind kind{};
  parse_arrow(key, &kind);
  return std::make_unique<ArrowMatrix>(
      kind, identity ? at::ones({n}, o) : z({n}), z({n - 1}));
}

int64_t structured_numel(const std::string& key, int64_t n) {
  return make_structured(key, n, at::TensorOptions().dtype(at::kFloat), false)
      ->numel();
}

}  // namespace lowmem::optim::structures
