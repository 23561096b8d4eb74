#include "lowmem/optim/factored.h"

#include <ATen/ATen.h>

#include <cmath>

#include "lowmem/core/check.h"

namespace lowmem::optim::factored {

bool is_factored(at::IntArrayRef shape) {
  return shape.size() >= 2;
}

std::vector<int64_t> row_shape(at::IntArrayRef shape) {
  LOWMEM_CHECK(is_factored(shape), "[factored] shape ", shape,
               " has fewer than 2 dims");
  return std::vector<int64_t>(shape.begin(), shape.end() - 1);
}

std::vector<int64_t> col_shape(at::IntArrayRef shape) {
  LOWMEM_CHECK(is_factored(shape), "[factored] shape ", shape,
               " has fewer than 2 dims");
  std::vector<int64_t> out(shape.begin(), shape.end() - 2);
  out.push_back(shape.back());
  return out;
}

void ema_row_col(
    at::Tensor& row, at::Tensor& col, const at::Tensor& q, double beta) {
  row.mul_(beta).add_(q.mean(-1), 1.0 - beta);
  col.mul_(beta).add_(q.mean(-2), 1.0 - beta);
}

at::Tensor row_factor(const at::Tensor& row) {
  return (row / row.mean(-1, /*keepdim=*/true)).rsqrt_();
}

at::Tensor col_factor(const at::Tensor& col) {
  return col.rsqrt();
}

at::Tensor approx_rsqrt(const at::Tensor& row, const at::Tensor& col) {
  return at::mul(row_factor(row).unsqueeze(-1), col_factor(col).unsqueeze(-2));
}

at::Tensor dense_second_moment(const at::Tensor& row, const at::Tensor& col) {
  return row.unsqueeze(-1) * col.unsqueeze(-2) /
         row.mean(-1, /*keepdim=*/true).unsqueeze(-1);
}

at::Tensor rms(const at::Tensor& t) {
  return t.norm() / std::sqrt(static_cast<double>(t.numel()));
}

at::Tensor clip_divisor(const at::Tensor& u, double threshold) {
  return (rms(u) / threshold).clamp_min_(1.0);
}

}  // namespace lowmem::optim::factored
