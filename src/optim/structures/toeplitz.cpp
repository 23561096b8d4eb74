#include "lowmem/optim/structures/toeplitz.h"

#include <ATen/ATen.h>

#include "lowmem/core/check.h"

namespace lowmem::optim::structures {

namespace {

bool is_half(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16;
}

// Runs `fn` on operands cast to `cdt`; half types on CPU compute in fp32 and
// are rounded to `cdt` (CPU conv1d has no reliable half kernels).
template <class F>
at::Tensor in_precision(at::ScalarType cdt, const at::Tensor& like, F fn) {
  if (is_half(cdt) && like.device().is_cpu())
    return fn(at::kFloat).to(cdt);
  return fn(cdt);
}

// Sums of the diagonals of `m` [n, n]: out[t] = sum over j - i = t - (n-1).
at::Tensor all_traces(const at::Tensor& m) {
  int64_t n = m.size(0);
  at::Tensor ar = at::arange(n, m.options().dtype(at::kLong));
  at::Tensor idx = (ar.unsqueeze(0) - ar.unsqueeze(1) + (n - 1)).flatten();
  at::Tensor out = at::zeros({2 * n - 1}, m.options());
  return out.scatter_add_(0, idx, m.contiguous().flatten());
}

// c[k] = sum_j u[j] v[j-k], k = 0..n-1, by FFT in float64.
at::Tensor correlate(const at::Tensor& u, const at::Tensor& v) {
  int64_t n = u.size(0);
  at::Tensor fu = at::fft_rfft(u.to(at::kDouble), 2 * n);
  at::Tensor fv = at::fft_rfft(v.to(at::kDouble), 2 * n);
  return at::fft_irfft(fu * fv.conj(), 2 * n).slice(0, 0, n);
}

// d[0] = r[0]/n, d[k] = 2 r[k]/(n-k): the Toeplitz projection of a symmetric
// matrix whose k-th diagonal sums are r[k].
at::Tensor diags_from_sums(at::Tensor r) {
  int64_t n = r.size(0);
  at::Tensor denom = at::arange(n, 0, -1, r.options());
  at::Tensor scale = at::full({n}, 2.0, r.options());
  scale[0] = 1.0;
  return r * scale / denom;
}

}  // namespace

ToeplitzMatrix::ToeplitzMatrix(at::Tensor diags, bool upper)
    : StructuredMatrix(diags.size(0)), d_(std::move(diags)), upper_(upper) {
  LOWMEM_CHECK(
      d_.dim() == 1, "[singd] Toeplitz factor must be 1-D, got ", d_.sizes());
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
  int64_t n = m.size(0);
  at::Tensor t = all_traces(m);
  at::Tensor sums = t.slice(0, n - 1).clone();
  sums.slice(0, 1).add_(t.slice(0, 0, n - 1).flip(0));
  at::Tensor denom = at::arange(n, 0, -1, m.options());
  return std::make_unique<ToeplitzMatrix>(sums / denom, upper_);
}

// out_i = sum_{j<=i} d[i-j] X_j (lower) or sum_{j>=i} d[j-i] X_j (upper),
// per column of x [n, m], by FFT in float64: O(m n log n) where the official
// grouped conv1d is O(m n^2).
static at::Tensor toeplitz_apply(const at::Tensor& d, const at::Tensor& x, bool lower) {
  int64_t n = d.size(0);
  at::Tensor xd = x.to(at::kDouble);
  if (!lower) xd = xd.flip(0);
  at::Tensor fd = at::fft_rfft(d.to(at::kDouble), 2 * n).unsqueeze(1);
  at::Tensor fx = at::fft_rfft(xd, 2 * n, 0);
  at::Tensor out = at::fft_irfft(fd * fx, 2 * n, 0).slice(0, 0, n);
  if (!lower) out = out.flip(0);
  return out;
}

at::Tensor ToeplitzMatrix::matmul(const at::Tensor& x) const {
  return toeplitz_apply(d_, x, !upper_).to(d_.scalar_type());
}

at::Tensor ToeplitzMatrix::rmatmat(const at::Tensor& x) const {
  return toeplitz_apply(d_, x, upper_).to(d_.scalar_type());
}

StructuredPtr ToeplitzMatrix::matmul(const StructuredMatrix& other) const {
  auto* o = dynamic_cast<const ToeplitzMatrix*>(&other);
  LOWMEM_CHECK(
      o && o->upper_ == upper_ && o->dim() == dim(), "[singd] cannot multiply ",
      key(), " by ", other.key());
  int64_t n = dim();
  // d''[k] = sum_{m<=k} d[m] d'[k-m]: a causal convolution cut to n.
  at::Tensor out = in_precision(d_.scalar_type(), d_, [&](at::ScalarType t) {
    at::Tensor input = at::constant_pad_nd(o->d_.to(t), {n - 1, 0}).view({1, 1, -1});
    at::Tensor weight = d_.to(t).flip(0).view({1, 1, -1});
    return at::conv1d(input, weight).view({n});
  });
  return std::make_unique<ToeplitzMatrix>(out.to(d_.scalar_type()), upper_);
}

StructuredPtr ToeplitzMatrix::from_inner(const at::Tensor& x) const {
  int64_t n = dim();
  at::Tensor r;
  if (x.defined()) {
    // Diagonal sums of Z Z^T, Z = S^T X: autocorrelation of Z's rows.
    at::Tensor z = rmatmat(x).to(at::kDouble);
    at::Tensor f = at::fft_rfft(z, 2 * n, 0);
    at::Tensor p = at::real(f * f.conj()).sum(1);
    r = at::fft_irfft(p, 2 * n).slice(0, 0, n);
  } else {
    // Diagonal sums of S^T S: r[k] = sum_j (n-j) d[j] d[j-k] (tril and triu).
    at::Tensor w = at::arange(n, 0, -1, d_.options().dtype(at::kDouble));
    at::Tensor dd = d_.to(at::kDouble);
    r = correlate(w * dd, dd);
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
  auto* o = dynamic_cast<const ArrowMatrix*>(&other);
  LOWMEM_CHECK(
      o && o->kind_ == kind_ && o->dim() == dim(), "[singd] cannot multiply ",
      key(), " by ", other.key());
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
