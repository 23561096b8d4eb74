#include "lowmem/projection/projector.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/serialize/archive.h>

#include <algorithm>
#include <cmath>

#include "lowmem/core/check.h"
#include "lowmem/core/input.h"
#include "lowmem/core/profile.h"

namespace lowmem::projection {
namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

at::Tensor randn_seeded(at::IntArrayRef shape, uint64_t seed,
                        at::ScalarType dtype) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn(shape, gen, at::TensorOptions().dtype(dtype));
}

// Orthonormal columns spanning y's columns (reduced QR).
at::Tensor orthonormal(const at::Tensor& y) {
  return std::get<0>(at::linalg_qr(y, "reduced"));
}

// The dtype a basis is stored and used in for a gradient of dtype t.
at::ScalarType basis_dtype(const ProjectorOptions& o, at::ScalarType t) {
  if (o.proj_dtype() == "grad" && (t == at::kBFloat16 || t == at::kHalf))
    return t;
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// The dtype a basis is computed in (SVD, QR, random draws): never 16-bit.
at::ScalarType compute_dtype(at::ScalarType basis) {
  return basis == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace

void validate(const ProjectorOptions& o) {
  LOWMEM_CHECK(o.rank() >= 1, "[projection] rank must be >= 1, got ", o.rank());
  LOWMEM_CHECK(o.update_proj_gap() >= 1,
               "[projection] update_proj_gap must be >= 1, got ",
               o.update_proj_gap());
  LOWMEM_CHECK(std::isfinite(o.scale()) && o.scale() > 0,
               "[projection] scale must be finite and > 0, got ", o.scale());
  const auto& t = o.proj_type();
  LOWMEM_CHECK(t == "std" || t == "reverse_std" || t == "left" ||
                   t == "right" || t == "full",
               "[projection] proj_type must be std, reverse_std, left, right "
               "or full, got '", t, "'");
  const auto& b = o.basis();
  LOWMEM_CHECK(b == "svd" || b == "rsvd" || b == "gaussian" ||
                   b == "orthogonal",
               "[projection] basis must be svd, rsvd, gaussian or orthogonal, "
               "got '", b, "'");
  LOWMEM_CHECK(o.power_iters() >= 0,
               "[projection] power_iters must be >= 0, got ", o.power_iters());
  LOWMEM_CHECK(o.oversample() >= 0,
               "[projection] oversample must be >= 0, got ", o.oversample());
  LOWMEM_CHECK(o.proj_dtype() == "float32" || o.proj_dtype() == "grad",
               "[projection] proj_dtype must be float32 or grad, got ",
               quote(o.proj_dtype()));
}

Side side_for(const std::string& proj_type, int64_t rows, int64_t cols) {
  if (proj_type == "std") return rows >= cols ? Side::kRight : Side::kLeft;
  if (proj_type == "reverse_std")
    return rows >= cols ? Side::kLeft : Side::kRight;
  if (proj_type == "left") return Side::kLeft;
  if (proj_type == "right") return Side::kRight;
  if (proj_type == "full") return Side::kBoth;
  LOWMEM_CHECK(false, "[projection] unknown proj_type '", proj_type, "'");
  return Side::kLeft;
}

std::pair<at::Tensor, at::Tensor> randomized_svd(const at::Tensor& g,
                                                 int64_t r,
                                                 int64_t power_iters,
                                                 int64_t oversample,
                                                 uint64_t seed) {
  LOWMEM_CHECK(g.dim() == 2, "[projection] randomized_svd needs a matrix, got ",
               g.dim(), " dims");
  const int64_t m = g.size(0), n = g.size(1);
  const int64_t k = std::min({r + oversample, m, n});
  auto omega = randn_seeded({n, k}, seed, g.scalar_type()).to(g.device());
  auto q = orthonormal(at::matmul(g, omega));  // [m, k], range of G
  for (int64_t i = 0; i < power_iters; ++i) {
    auto z = orthonormal(at::matmul(g.t(), q));  // [n, k]
    q = orthonormal(at::matmul(g, z));           // [m, k]
  }
  auto b = at::matmul(q.t(), g);  // [k, n]
  auto usv = at::linalg_svd(b, /*full_matrices=*/false);
  auto u = at::matmul(q, std::get<0>(usv)).narrow(1, 0, r);
  auto v = std::get<2>(usv).narrow(0, 0, r).t();
  return {u.contiguous(), v.contiguous()};
}

Projector::Projector(ProjectorOptions options, int64_t rows, int64_t cols,
                     int64_t stream)
    : options_(std::move(options)), rows_(rows), cols_(cols), stream_(stream) {
  validate(options_);
  LOWMEM_CHECK(rows >= 1 && cols >= 1,
               "[projection] matrix shape must be positive, got [", rows, ", ",
               cols, "]");
  side_ = side_for(options_.proj_type(), rows, cols);
  rank_ = std::min({options_.rank(), rows, cols});
}

std::vector<int64_t> Projector::low_rank_shape() const {
  switch (side_) {
    case Side::kLeft:
      return {rank_, cols_};
    case Side::kRight:
      return {rows_, rank_};
    case Side::kBoth:
      return {rank_, rank_};
  }
  return {};
}

bool Projector::needs_gradient() const {
  return options_.basis() == "svd" || options_.basis() == "rsvd";
}

bool Projector::random_sketch() const { return !needs_gradient(); }

bool Projector::needs_refresh(int64_t step) const {
  return !has_basis() || step % options_.update_proj_gap() == 0;
}

uint64_t Projector::draw_seed(int64_t refresh_index) const {
  uint64_t s = splitmix64(static_cast<uint64_t>(options_.seed()));
  s = splitmix64(s ^ static_cast<uint64_t>(stream_));
  return splitmix64(s ^ static_cast<uint64_t>(refresh_index));
}

void Projector::draw_sketch(at::Tensor* p, at::Tensor* q) const {
  const uint64_t seed = draw_seed(refreshes_ - 1);
  const bool ortho = options_.basis() == "orthogonal";
  auto draw = [&](int64_t dim, uint64_t s) {
    auto x = randn_seeded({dim, rank_}, s, compute_dtype(dtype_));
    x = ortho ? orthonormal(x) : x / std::sqrt(static_cast<double>(rank_));
    return x.to(device_, dtype_);
  };
  if (side_ != Side::kRight) *p = draw(rows_, seed);
  if (side_ != Side::kLeft) *q = draw(cols_, splitmix64(seed ^ 0x51ULL));
}

void Projector::refresh(at::ScalarType dtype, c10::Device device) {
  LOWMEM_CHECK(random_sketch(), "[projection] basis '", options_.basis(),
               "' is computed from a gradient; call refresh(grad)");
  dtype_ = basis_dtype(options_, dtype);
  device_ = device;
  ++refreshes_;
  p_ = at::Tensor();
  q_ = at::Tensor();
  if (options_.cache_sketch()) draw_sketch(&p_, &q_);
}

void Projector::refresh(const at::Tensor& grad) {
  if (random_sketch()) {
    LOWMEM_CHECK(grad.defined(), "[projection] refresh(grad): grad undefined");
    refresh(grad.scalar_type(), grad.device());
    return;
  }
  LOWMEM_CHECK(grad.defined() && grad.dim() == 2 && grad.size(0) == rows_ &&
                   grad.size(1) == cols_,
               "[projection] refresh needs a [", rows_, ", ", cols_,
               "] gradient, got ",
               grad.defined() ? grad.sizes() : at::IntArrayRef{});
  profile::Scope scope(profile::Phase::kProjection);
  dtype_ = basis_dtype(options_, grad.scalar_type());
  device_ = grad.device();
  auto g = grad.detach().to(compute_dtype(dtype_));
  at::Tensor u, v;  // [m, r], [n, r]
  if (options_.basis() == "svd") {
    // Official: torch.linalg.svd(matrix.float(), full_matrices=False).
    auto usv = at::linalg_svd(g, /*full_matrices=*/false);
    u = std::get<0>(usv).narrow(1, 0, rank_);
    v = std::get<2>(usv).narrow(0, 0, rank_).t();
  } else {
    std::tie(u, v) = randomized_svd(g, rank_, options_.power_iters(),
                                    options_.oversample(), draw_seed(refreshes_));
  }
  ++refreshes_;
  p_ = side_ != Side::kRight ? u.to(dtype_).contiguous() : at::Tensor();
  q_ = side_ != Side::kLeft ? v.to(dtype_).contiguous() : at::Tensor();
}

at::Tensor Projector::left() const {
  if (side_ == Side::kRight || !has_basis()) return {};
  if (p_.defined()) return p_;
  at::Tensor p, q;
  draw_sketch(&p, &q);
  return p;
}

at::Tensor Projector::right() const {
  if (side_ == Side::kLeft || !has_basis()) return {};
  if (q_.defined()) return q_;
  at::Tensor p, q;
  draw_sketch(&p, &q);
  return q;
}

namespace {

// Rows (or columns) per chunk when a low-precision matrix is upcast piece by
// piece: about 1 Mi elements (4 MiB of fp32), at least one.
int64_t chunk_lines(int64_t line_length) {
  return std::max<int64_t>(
      1, (int64_t{1} << 20) / std::max<int64_t>(1, line_length));
}

}  // namespace

bool Projector::blocked() const {
  return side_ != Side::kBoth && rows_ * cols_ > (int64_t{1} << 20);
}

int64_t Projector::block_rows() const {
  return blocked() ? std::min(rows_, chunk_lines(cols_)) : rows_;
}

int64_t Projector::block_cols() const {
  return blocked() ? std::min(cols_, chunk_lines(rows_)) : cols_;
}

at::Tensor Projector::project(const at::Tensor& g) const {
  LOWMEM_CHECK(has_basis(), "[projection] project() before the first refresh");
  LOWMEM_CHECK(g.dim() == 2 && g.size(0) == rows_ && g.size(1) == cols_,
               "[projection] project expects [", rows_, ", ", cols_,
               "], got ", g.sizes());
  profile::Scope scope(profile::Phase::kProjection);
  // A bf16/fp16 gradient is upcast a block at a time (rows for G Q, columns
  // for P^T G): the same products as upcasting it whole, without a
  // full-size fp32 copy (for a 4096 x 11008 weight, 180 MB per call).
  if (blocked() && g.scalar_type() != dtype_) {
    at::Tensor out = at::empty(low_rank_shape(), g.options().dtype(dtype_));
    if (side_ == Side::kRight) {
      const at::Tensor q = right();
      const int64_t step = block_rows();
      for (int64_t r0 = 0; r0 < rows_; r0 += step) {
        const int64_t n = std::min(step, rows_ - r0);
        at::Tensor rows = out.narrow(0, r0, n);
        at::mm_out(rows, g.narrow(0, r0, n).to(dtype_), q);
      }
    } else {
      const at::Tensor pt = left().t();
      const int64_t step = block_cols();
      for (int64_t c0 = 0; c0 < cols_; c0 += step) {
        const int64_t n = std::min(step, cols_ - c0);
        out.narrow(1, c0, n).copy_(at::mm(pt, g.narrow(1, c0, n).to(dtype_)));
      }
    }
    return out;
  }
  auto x = g.to(dtype_);
  switch (side_) {
    case Side::kLeft:
      return at::matmul(left().t(), x);
    case Side::kRight:
      return at::matmul(x, right());
    case Side::kBoth:
      return at::matmul(at::matmul(left().t(), x), right());
  }
  return {};
}

at::Tensor Projector::expand(const at::Tensor& low) const {
  LOWMEM_CHECK(has_basis(), "[projection] expand() before the first refresh");
  const auto want = low_rank_shape();
  LOWMEM_CHECK(low.sizes() == at::IntArrayRef(want),
               "[projection] expected a low-rank tensor of shape ",
               at::IntArrayRef(want), ", got ", low.sizes());
  profile::Scope scope(profile::Phase::kProjection);
  auto x = low.to(dtype_);
  switch (side_) {
    case Side::kLeft:
      return at::matmul(left(), x);
    case Side::kRight:
      return at::matmul(x, right().t());
    case Side::kBoth:
      return at::matmul(at::matmul(left(), x), right().t());
  }
  return {};
}

void Projector::add_back_to(at::Tensor& target, const at::Tensor& low) const {
  LOWMEM_CHECK(
      target.dim() == 2 && target.size(0) == rows_ && target.size(1) == cols_,
      "[projection] add_back_to expects a [", rows_, ", ", cols_,
      "] target, got ", target.sizes());
  if (!blocked()) {
    target.add_(project_back(low).to(target.scalar_type()));
    return;
  }
  LOWMEM_CHECK(has_basis(),
               "[projection] add_back_to() before the first refresh");
  const auto want = low_rank_shape();
  LOWMEM_CHECK(low.sizes() == at::IntArrayRef(want),
               "[projection] expected a low-rank tensor of shape ",
               at::IntArrayRef(want), ", got ", low.sizes());
  profile::Scope scope(profile::Phase::kProjection);
  // Row blocks of the update, each made, scaled, rounded to the target's
  // dtype and added as project_back(low).to(dtype) would be, whole (no
  // full-size temporary, in the basis dtype or any other).
  const at::Tensor x = low.to(dtype_);
  const at::Tensor basis = side_ == Side::kRight ? right().t() : left();
  const int64_t step = block_rows();
  for (int64_t r0 = 0; r0 < rows_; r0 += step) {
    const int64_t n = std::min(step, rows_ - r0);
    at::Tensor part = side_ == Side::kRight ? at::mm(x.narrow(0, r0, n), basis)
                                            : at::mm(basis.narrow(0, r0, n), x);
    if (options_.scale() != 1.0) part.mul_(options_.scale());
    target.narrow(0, r0, n).add_(part.to(target.scalar_type()));
  }
}

at::Tensor Projector::project_back(const at::Tensor& low) const {
  auto full = expand(low);
  profile::Scope scope(profile::Phase::kProjection);
  if (options_.scale() != 1.0) full.mul_(options_.scale());
  return full;
}

std::vector<at::Tensor> Projector::state_tensors() const {
  std::vector<at::Tensor> out;
  if (p_.defined()) out.push_back(p_);
  if (q_.defined()) out.push_back(q_);
  return out;
}

void Projector::save(torch::serialize::OutputArchive& archive,
                     const std::string& prefix) const {
  archive.write(prefix + "refreshes", c10::IValue(refreshes_));
  archive.write(prefix + "shape", c10::IValue(std::vector<int64_t>{
                                      rows_, cols_, rank_, stream_}));
  archive.write(prefix + "dtype",
                c10::IValue(static_cast<int64_t>(dtype_)));
  archive.write(prefix + "device", c10::IValue(device_.str()));
  // Uncached sketches are regenerated from (seed, stream, refresh index).
  if (p_.defined()) archive.write(prefix + "p", p_, /*is_buffer=*/true);
  if (q_.defined()) archive.write(prefix + "q", q_, /*is_buffer=*/true);
}

void Projector::load(torch::serialize::InputArchive& archive,
                     const std::string& prefix) {
  c10::IValue v;
  archive.read(prefix + "shape", v);
  const auto shape = v.toIntVector();
  LOWMEM_CHECK(shape.size() == 4 && shape[0] == rows_ && shape[1] == cols_ &&
                   shape[2] == rank_,
               "[projection] checkpoint projector ", prefix, " has shape/rank ",
               shape, ", this one [", rows_, ", ", cols_, "] rank ", rank_);
  stream_ = shape[3];
  archive.read(prefix + "refreshes", v);
  refreshes_ = v.toInt();
  archive.read(prefix + "dtype", v);
  dtype_ = static_cast<at::ScalarType>(v.toInt());
  archive.read(prefix + "device", v);
  device_ = c10::Device(v.toStringRef());
  p_ = at::Tensor();
  q_ = at::Tensor();
  at::Tensor t;
  if (archive.try_read(prefix + "p", t, /*is_buffer=*/true)) p_ = t;
  at::Tensor t2;
  if (archive.try_read(prefix + "q", t2, /*is_buffer=*/true)) q_ = t2;
  if (p_.defined()) device_ = p_.device();
  if (q_.defined()) device_ = q_.device();
  if (has_basis() && random_sketch() && options_.cache_sketch() &&
      !p_.defined() && !q_.defined())
    draw_sketch(&p_, &q_);
  const bool complete = (side_ == Side::kRight || p_.defined()) &&
                        (side_ == Side::kLeft || q_.defined());
  LOWMEM_CHECK(!has_basis() || random_sketch() || complete,
               "[projection] checkpoint projector ", prefix,
               " lacks its basis tensors");
}

}  // namespace lowmem::projection
