#include "lowmem/optim/structures/hierarchical.h"

#include <ATen/ATen.h>

#include "lowmem/core/check.h"

namespace lowmem::optim::structures {

std::array<int64_t, 3> HierarchicalMatrix::block_dims(
    int64_t n, int64_t max_k1, int64_t max_k2) {
  if (n <= max_k1) return {n, 0, 0};
  if (n <= max_k1 + max_k2) return {max_k1, 0, n - max_k1};
  return {max_k1, n - max_k1 - max_k2, max_k2};
}

HierarchicalMatrix::HierarchicalMatrix(
    int64_t max_k1,
    int64_t max_k2,
    at::Tensor a,
    at::Tensor b,
    at::Tensor c,
    at::Tensor d,
    at::Tensor e)
    : StructuredMatrix(a.size(0) + c.size(0) + e.size(0)),
      max_k1_(max_k1),
      max_k2_(max_k2),
      k1_(a.size(0)),
      nc_(c.size(0)),
      k2_(e.size(0)),
      a_(std::move(a)),
      b_(std::move(b)),
      c_(std::move(c)),
      d_(std::move(d)),
      e_(std::move(e)) {
  LOWMEM_CHECK(
      k1_ <= max_k1_ && k2_ <= max_k2_ && a_.dim() == 2 && e_.dim() == 2 &&
          c_.dim() == 1 && b_.dim() == 2 && b_.size(0) == k1_ &&
          b_.size(1) == nc_ + k2_ && d_.dim() == 2 && d_.size(0) == k2_ &&
          d_.size(1) == nc_,
      "[singd] inconsistent hierarchical blocks A", a_.sizes(), " B",
      b_.sizes(), " c", c_.sizes(), " D", d_.sizes(), " E", e_.sizes());
}

std::vector<at::Tensor> HierarchicalMatrix::tensors() const {
  return {a_, b_, c_, d_, e_};
}

std::string HierarchicalMatrix::key() const {
  return "hierarchical" + std::to_string(max_k1_) + "_" +
         std::to_string(max_k2_);
}

StructuredPtr HierarchicalMatrix::with_tensors(std::vector<at::Tensor> t) const {
  return std::make_unique<HierarchicalMatrix>(
      max_k1_, max_k2_, t.at(0), t.at(1), t.at(2), t.at(3), t.at(4));
}

at::Tensor HierarchicalMatrix::to_dense() const {
  int64_t n = dim();
  at::Tensor m = at::zeros({n, n}, a_.options());
  m.slice(0, 0, k1_).slice(1, 0, k1_).copy_(a_);
  m.slice(0, 0, k1_).slice(1, k1_).copy_(b_);
  m.slice(0, k1_, k1_ + nc_).slice(1, k1_, k1_ + nc_).diagonal().copy_(c_);
  m.slice(0, k1_ + nc_).slice(1, k1_, k1_ + nc_).copy_(d_);
  m.slice(0, k1_ + nc_).slice(1, k1_ + nc_).copy_(e_);
  return m;
}

StructuredPtr HierarchicalMatrix::project(const at::Tensor& m) const {
  int64_t s = k1_ + nc_;
  return std::make_unique<HierarchicalMatrix>(
      max_k1_, max_k2_, m.slice(0, 0, k1_).slice(1, 0, k1_).clone(),
      2 * m.slice(0, 0, k1_).slice(1, k1_),
      m.diagonal().slice(0, k1_, s).clone(),
      2 * m.slice(0, s).slice(1, k1_, s), m.slice(0, s).slice(1, s).clone());
}

at::Tensor HierarchicalMatrix::matmul(const at::Tensor& x0) const {
  at::Tensor x = x0.to(a_.scalar_type());
  auto parts = x.split_with_sizes({k1_, nc_, k2_}, 0);
  auto bs = b_.split_with_sizes({nc_, k2_}, 1);
  at::Tensor top = at::matmul(a_, parts[0]) + at::matmul(bs[0], parts[1]) +
                   at::matmul(bs[1], parts[2]);
  at::Tensor middle = c_.unsqueeze(1) * parts[1];
  at::Tensor bottom = at::matmul(d_, parts[1]) + at::matmul(e_, parts[2]);
  return at::cat({top, middle, bottom}, 0);
}

at::Tensor HierarchicalMatrix::rmatmat(const at::Tensor& x) const {
  auto parts = x.split_with_sizes({k1_, nc_, k2_}, 0);
  auto bs = b_.split_with_sizes({nc_, k2_}, 1);
  auto dt = a_.scalar_type();
  at::Tensor x0 = parts[0].to(dt), x2 = parts[2].to(dt);
  at::Tensor top = at::matmul(a_.t(), x0);
  // Official: the c * X2 term runs in the lower precision of the operands.
  auto cdt = detail::compute_dtype(c_.scalar_type(), parts[1].scalar_type());
  at::Tensor middle = at::matmul(bs[0].t(), x0) +
                      (c_.to(cdt).unsqueeze(1) * parts[1].to(cdt)).to(dt) +
                      at::matmul(d_.t(), x2);
  at::Tensor bottom = at::matmul(bs[1].t(), x0) + at::matmul(e_.t(), x2);
  return at::cat({top, middle, bottom}, 0);
}

StructuredPtr HierarchicalMatrix::matmul(const StructuredMatrix& other) const {
  const auto* o = &same_structure(*this, other);
  auto bs = b_.split_with_sizes({nc_, k2_}, 1);
  auto obs = o->b_.split_with_sizes({nc_, k2_}, 1);
  at::Tensor b_c = at::matmul(a_, obs[0]) + bs[0] * o->c_.unsqueeze(0) +
                   at::matmul(bs[1], o->d_);
  at::Tensor b_e = at::matmul(a_, obs[1]) + at::matmul(bs[1], o->e_);
  return std::make_unique<HierarchicalMatrix>(
      max_k1_, max_k2_, at::matmul(a_, o->a_), at::cat({b_c, b_e}, 1),
      c_ * o->c_, d_ * o->c_.unsqueeze(0) + at::matmul(e_, o->d_),
      at::matmul(e_, o->e_));
}

StructuredPtr HierarchicalMatrix::from_inner(const at::Tensor& x) const {
  if (!x.defined()) {
    auto bs = b_.split_with_sizes({nc_, k2_}, 1);
    return std::make_unique<HierarchicalMatrix>(
        max_k1_, max_k2_, at::matmul(a_.t(), a_), 2 * at::matmul(a_.t(), b_),
        c_.pow(2) + bs[0].pow(2).sum(0) + d_.pow(2).sum(0),
        2 * (at::matmul(bs[1].t(), bs[0]) + at::matmul(e_.t(), d_)),
        at::matmul(e_.t(), e_) + at::matmul(bs[1].t(), bs[1]));
  }
  auto s = rmatmat(x).split_with_sizes({k1_, nc_, k2_}, 0);
  return std::make_unique<HierarchicalMatrix>(
      max_k1_, max_k2_, at::matmul(s[0], s[0].t()),
      2 * at::cat({at::matmul(s[0], s[1].t()), at::matmul(s[0], s[2].t())}, 1),
      s[1].pow(2).sum(1), 2 * at::matmul(s[2], s[1].t()),
      at::matmul(s[2], s[2].t()));
}

double HierarchicalMatrix::average_trace() const {
  at::Tensor tr = a_.diagonal().sum() + c_.sum() + e_.diagonal().sum();
  return tr.item<double>() / static_cast<double>(dim());
}

void HierarchicalMatrix::diag_add_(double value) {
  a_.diagonal().add_(value);
  c_.add_(value);
  e_.diagonal().add_(value);
}

}  // namespace lowmem::optim::structures
