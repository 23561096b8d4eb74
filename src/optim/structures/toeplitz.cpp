#include "lowmem/optim/structures/toeplitz.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "lowmem/core/check.h"

namespace lowmem::optim::structures {

namespace {

// Rows per panel of the Toeplitz products: the largest temporary is a
// kPanel x n slice of the matrix (never the whole n x n).
constexpr int64_t kPanel = 256;

bool is_half(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16;
}

// The dtype a product with operands of dtypes a, b runs in: the official one
// (detail::compute_dtype), except half types on CPU, which run in fp32 (CPU
// has no fast half GEMM) and are rounded afterwards.
at::ScalarType work_dtype(at::ScalarType a, at::ScalarType b, const at::Device& dev) {
  at::ScalarType t = detail::compute_dtype(a, b);
  return (is_half(t) && dev.is_cpu()) ? at::kFloat : t;
}

// s[t] = sum_{i + j = t} g[i, j] for g [h, w], t = 0..h+w-2, without loops:
// padding each row with h zeros and re-reading the buffer with row stride
// w + h - 1 shifts row i right by i, so column t of that view holds g[i, t-i].
at::Tensor anti_diagonal_sums(const at::Tensor& g) {
  const int64_t h = g.size(0), w = g.size(1);
  at::Tensor p = at::constant_pad_nd(g, {0, h}).flatten();
  return p.narrow(0, 0, h * (w + h - 1)).view({h, w + h - 1}).sum(0);
}

// H[i, j] = d[i + j - h + 1] (0 where the index is negative), [h, n]: every
// row panel of the lower-triangular Toeplitz matrix L[i, j] = d[i - j] with
// its columns reversed is a slice of H.
at::Tensor hankel_panel(const at::Tensor& d, int64_t h) {
  const int64_t n = d.size(0);
  at::Tensor q = at::cat({at::zeros({h - 1}, d.options()), d});
  return q.as_strided({h, n}, {1, 1}).contiguous();
}

// L X for L[i, j] = d[i - j] (i >= j), given xf = X with its rows reversed
// ([n, m], any strides). Rows r0..r1-1 of L X are H[h-hh:, :r1] xf[n-r1:]
// (hh = r1 - r0): one GEMM per panel, n^2 m / 2 multiply-adds in all, only
// the triangle. (The official grouped conv1d is O(n^2 m) too but runs as a
// direct convolution; a float64 FFT was tried here first and was 5-10x slower
// than this on CPU for the layer sizes of the benchmarks.)
at::Tensor lower_apply_flipped(const at::Tensor& d, const at::Tensor& xf) {
  const int64_t n = d.size(0), m = xf.size(1);
  LOWMEM_CHECK(
      xf.dim() == 2 && xf.size(0) == n, "[singd] Toeplitz product needs [", n,
      ", m], got ", xf.sizes());
  const int64_t h = std::min(kPanel, n);
  at::Tensor hk = hankel_panel(d, h);
  at::Tensor out = at::empty({n, m}, xf.options());
  for (int64_t r0 = 0; r0 < n; r0 += h) {
    const int64_t hh = std::min(h, n - r0), r1 = r0 + hh;
    at::Tensor o = out.narrow(0, r0, hh);
    at::mm_out(o, hk.narrow(0, h - hh, hh).narrow(1, 0, r1), xf.narrow(0, n - r1, r1));
  }
  return out;
}

// L X (transpose = false) or L^T X = J L J X (J reverses rows).
at::Tensor lower_apply(const at::Tensor& d, const at::Tensor& x, bool transpose) {
  return transpose ? lower_apply_flipped(d, x).flip(0)
                   : lower_apply_flipped(d, x.flip(0));
}

// r[k] = sum_i <z_i, z_{i-k}>, k = 0..n-1: the sums of the diagonals of
// Z Z^T on and below the main one, by row panels (no n x n temporary):
// G = Z[r0:r1] Zf[n-r1:]^T holds <z_{r0+i}, z_{r1-1-j}>, whose anti-diagonal
// t = i + j is diagonal k = t - hh + 1 of Z Z^T.
at::Tensor lower_diagonal_sums(const at::Tensor& z) {
  const int64_t n = z.size(0);
  const int64_t h = std::min(kPanel, n);
  at::Tensor zf = z.flip(0);
  at::Tensor r = at::zeros({n}, z.options());
  for (int64_t r0 = 0; r0 < n; r0 += h) {
    const int64_t hh = std::min(h, n - r0), r1 = r0 + hh;
    at::Tensor g = at::mm(z.narrow(0, r0, hh), zf.narrow(0, n - r1, r1).t());
    r.narrow(0, 0, r1).add_(anti_diagonal_sums(g).narrow(0, hh - 1, r1));
  }
  return r;
}

// d[0] = r[0]/n, d[k] = 2 r[k]/(n-k): the Toeplitz projection of a symmetric
// matrix whose k-th diagonal sums are r[k].
at::Tensor diags_from_sums(const at::Tensor& r) {
  const int64_t n = r.size(0);
  at::Tensor denom = at::arange(n, 0, -1, r.options());
  at::Tensor scale = at::full({n}, 2.0, r.options());
  scale.narrow(0, 0, 1).fill_(1.0);
  return r * scale / denom;
}

}  // namespace

ToeplitzMatrix::ToeplitzMatrix(at::Tensor diags, bool upper)
    : StructuredMatrix(diags.size(0)), d_(std::move(diags)), upper_(upper) {
  LOWMEM_CHECK(
      d_.dim() == 1, "[singd] Toeplitz factor must be 1-D, got ", d_.sizes());
}

std::string ToeplitzMatrix::key() const {
  return upper_ ? "triutoeplitz" : "triltoeplitz";
}

std::vector<at::Tensor> ToeplitzMatrix::tensors() const {
  return {d_};
}

StructuredPtr ToeplitzMatrix::with_tensors(std::vector<at::Tensor> t) const {
  return std::make_unique<ToeplitzMatrix>(std::move(t.at(0)), upper_);
}

at::Tensor ToeplitzMatrix::to_dense() const {
  int64_t n = dim();
  at::Tensor ar = at::arange(n, d_.options().dtype(at::kLong));
  at::Tensor diff = ar.unsqueeze(1) - ar.unsqueeze(0);  // i - j
  if (upper_) diff = diff.neg();
  at::Tensor mask = diff.ge(0);
  return d_.index({diff.clamp_min(0)}) * mask.to(d_.scalar_type());
}

StructuredPtr ToeplitzMatrix::project(const at::Tensor& m) const {
  const int64_t n = m.size(0);
  // s[t] = sum over i - j = t - (n - 1) (columns reversed: anti-diagonals).
  at::Tensor s = anti_diagonal_sums(m.flip(1));
  at::Tensor sums = s.narrow(0, n - 1, n).clone();
  sums.narrow(0, 1, n - 1).add_(s.narrow(0, 0, n - 1).flip(0));
  at::Tensor denom = at::arange(n, 0, -1, m.options());
  return std::make_unique<ToeplitzMatrix>(sums / denom, upper_);
}

// Tril: S = L(d); triu: S = L(d)^T.
at::Tensor ToeplitzMatrix::matmul(const at::Tensor& x) const {
  auto t = work_dtype(d_.scalar_type(), x.scalar_type(), d_.device());
  return lower_apply(d_.to(t), x.to(t), upper_).to(d_.scalar_type());
}

at::Tensor ToeplitzMatrix::rmatmat(const at::Tensor& x) const {
  auto t = work_dtype(d_.scalar_type(), x.scalar_type(), d_.device());
  return lower_apply(d_.to(t), x.to(t), !upper_).to(d_.scalar_type());
}

StructuredPtr ToeplitzMatrix::matmul(const StructuredMatrix& other) const {
  const auto* o = &same_structure(*this, other);
  // d''[k] = sum_{m<=k} d[m] d'[k-m] = (L(d) d')[k] (tril and triu alike).
  auto t = work_dtype(d_.scalar_type(), o->d_.scalar_type(), d_.device());
  at::Tensor out = lower_apply(d_.to(t), o->d_.to(t).unsqueeze(1), false);
  return std::make_unique<ToeplitzMatrix>(
      out.squeeze(1).to(d_.scalar_type()), upper_);
}

StructuredPtr ToeplitzMatrix::from_inner(const at::Tensor& x) const {
  const int64_t n = dim();
  at::Tensor r;
  if (x.defined()) {
    // Diagonal sums of Z Z^T, Z = S^T X (kept in the work dtype).
    auto t = work_dtype(d_.scalar_type(), x.scalar_type(), d_.device());
    r = lower_diagonal_sums(lower_apply(d_.to(t), x.to(t), !upper_));
  } else {
    // Diagonal sums of S^T S: r[k] = sum_{j>=k} (n-j) d[j] d[j-k]
    // = (L(d)^T u)[k] with u[j] = (n-j) d[j] (tril and triu alike).
    auto t = work_dtype(d_.scalar_type(), d_.scalar_type(), d_.device());
    at::Tensor dd = d_.to(t);
    at::Tensor u = at::arange(n, 0, -1, dd.options()) * dd;
    r = lower_apply(dd, u.unsqueeze(1), true).squeeze(1);
  }
  return std::make_unique<ToeplitzMatrix>(
      diags_from_sums(r).to(d_.scalar_type()), upper_);
}

double ToeplitzMatrix::average_trace() const {
  return d_[0].item<double>();
}

void ToeplitzMatrix::diag_add_(double value) {
  d_.narrow(0, 0, 1).add_(value);
}

// ---------------------------------------------------------------- arrow --

ArrowMatrix::ArrowMatrix(Kind kind, at::Tensor diag, at::Tensor off)
    : StructuredMatrix(diag.size(0)),
      kind_(kind),
      diag_(std::move(diag)),
      off_(std::move(off)) {
  LOWMEM_CHECK(
      diag_.dim() == 1 && off_.dim() == 1 && off_.size(0) == diag_.size(0) - 1,
      "[singd] arrow factor needs diag [n] and off [n-1], got ", diag_.sizes(),
      " and ", off_.sizes());
}

std::string ArrowMatrix::key() const {
  switch (kind_) {
    case Kind::kTrilBottomRight:
      return "trilbottomrightdiag";
    case Kind::kTrilTopLeft:
      return "triltopleftdiag";
    case Kind::kTriuBottomRight:
      return "triubottomrightdiag";
    case Kind::kTriuTopLeft:
      return "triutopleftdiag";
  }
  return "";
}

std::vector<at::Tensor> ArrowMatrix::tensors() const {
  return {off_, diag_};
}

bool ArrowMatrix::column() const {
  return kind_ == Kind::kTrilBottomRight || kind_ == Kind::kTriuTopLeft;
}

int64_t ArrowMatrix::hub() const {
  return (kind_ == Kind::kTrilBottomRight || kind_ == Kind::kTriuBottomRight)
             ? 0
             : dim() - 1;
}

at::Tensor ArrowMatrix::full_off() const {
  at::Tensor z = at::zeros({1}, off_.options());
  return hub() == 0 ? at::cat({z, off_}) : at::cat({off_, z});
}

at::Tensor ArrowMatrix::strip(const at::Tensor& full) const {
  return hub() == 0 ? full.slice(0, 1) : full.slice(0, 0, dim() - 1);
}

StructuredPtr ArrowMatrix::with_tensors(std::vector<at::Tensor> t) const {
  return std::make_unique<ArrowMatrix>(kind_, std::move(t.at(1)), std::move(t.at(0)));
}

at::Tensor ArrowMatrix::to_dense() const {
  at::Tensor m = at::diag(diag_);
  int64_t h = hub();
  if (column())
    m.select(1, h).add_(full_off());
  else
    m.select(0, h).add_(full_off());
  return m;
}

StructuredPtr ArrowMatrix::project(const at::Tensor& m) const {
  int64_t h = hub();
  at::Tensor off = strip(m.select(1, h) + m.select(0, h));
  return std::make_unique<ArrowMatrix>(
      kind_, m.diagonal().clone(), off.contiguous());
}

at::Tensor ArrowMatrix::matmul(const at::Tensor& x0) const {
  at::Tensor x = x0.to(diag_.scalar_type());
  at::Tensor v = full_off();
  at::Tensor out = diag_.unsqueeze(1) * x;
  int64_t h = hub();
  if (column())
    out = out + v.unsqueeze(1) * x.select(0, h).unsqueeze(0);
  else
    out.select(0, h).add_(at::matmul(v, x));
  return out;
}

at::Tensor ArrowMatrix::rmatmat(const at::Tensor& x0) const {
  at::Tensor x = x0.to(diag_.scalar_type());
  at::Tensor v = full_off();
  at::Tensor out = diag_.unsqueeze(1) * x;
  int64_t h = hub();
  if (column())
    out.select(0, h).add_(at::matmul(v, x));
  else
    out = out + v.unsqueeze(1) * x.select(0, h).unsqueeze(0);
  return out;
}

StructuredPtr ArrowMatrix::matmul(const StructuredMatrix& other) const {
  const auto* o = &same_structure(*this, other);
  int64_t h = hub();
  at::Tensor v = full_off(), vo = o->full_off();
  at::Tensor off = column() ? diag_ * vo + o->diag_[h] * v
                            : diag_[h] * vo + v * o->diag_;
  return std::make_unique<ArrowMatrix>(
      kind_, diag_ * o->diag_, strip(off).contiguous());
}

StructuredPtr ArrowMatrix::from_inner(const at::Tensor& x) const {
  int64_t h = hub();
  if (x.defined()) {
    at::Tensor z = rmatmat(x);
    at::Tensor off = 2 * at::matmul(z, z.select(0, h));
    return std::make_unique<ArrowMatrix>(
        kind_, z.pow(2).sum(1), strip(off).contiguous());
  }
  at::Tensor v = full_off();
  if (column()) {
    at::Tensor d = diag_.pow(2);
    d.narrow(0, h, 1).add_(v.pow(2).sum());
    return std::make_unique<ArrowMatrix>(
        kind_, d, strip(2 * diag_ * v).contiguous());
  }
  return std::make_unique<ArrowMatrix>(
      kind_, diag_.pow(2) + v.pow(2), strip(2 * diag_[h] * v).contiguous());
}

double ArrowMatrix::average_trace() const {
  return diag_.mean().item<double>();
}

void ArrowMatrix::diag_add_(double value) {
  diag_.add_(value);
}

}  // namespace lowmem::optim::structures
