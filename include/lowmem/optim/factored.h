// Row/column factored second-moment math shared by Adafactor (Shazeer & Stern
// 2018, arXiv 1804.04235) and CAME (Luo et al. 2023, arXiv 2307.02047), as in
// the official code (HF transformers `Adafactor._approx_sq_grad`, yangluo7/CAME
// `_approx_sq_grad`): means (not sums) over the last dim (rows) and the
// second-to-last dim (columns); tensors with ndim > 2 are factored over their
// last two dims, the leading dims acting as a batch. Pure tensor functions.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace lowmem::optim::factored {

/// True when the official code factors a tensor of this shape (ndim >= 2).
bool is_factored(at::IntArrayRef shape);
/// Row-statistic shape: shape[:-1] (m for an m x n matrix).
std::vector<int64_t> row_shape(at::IntArrayRef shape);
/// Column-statistic shape: shape[:-2] + shape[-1:] (n for an m x n matrix).
std::vector<int64_t> col_shape(at::IntArrayRef shape);

/// In place: row <- beta*row + (1-beta)*mean_r(q), col <- beta*col +
/// (1-beta)*mean_c(q); mean_r over the last dim, mean_c over dim -2.
void ema_row_col(
    at::Tensor& row, at::Tensor& col, const at::Tensor& q, double beta);

/// rsqrt(row / mean(row, -1)), shape like row ([..., m]).
at::Tensor row_factor(const at::Tensor& row);
/// rsqrt(col), shape like col ([..., n]).
at::Tensor col_factor(const at::Tensor& col);
/// The preconditioner rsqrt(V_hat) as a full [..., m, n] tensor:
/// row_factor(row)[..., :, None] * col_factor(col)[..., None, :]
/// (official `_approx_sq_grad`).
at::Tensor approx_rsqrt(const at::Tensor& row, const at::Tensor& col);
/// The dense second moment the factors stand for:
/// V_hat[..., i, j] = row[..., i] * col[..., j] / mean(row[..., :]), which is
/// the paper's R C / (1^T R) with sums (see docs/optim.md).
at::Tensor dense_second_moment(const at::Tensor& row, const at::Tensor& col);

/// Root mean square of all elements (0-dim tensor, no host sync).
at::Tensor rms(const at::Tensor& t);
/// The update-clipping divisor max(1, rms(u) / threshold) (0-dim tensor).
at::Tensor clip_divisor(const at::Tensor& u, double threshold);

}  // namespace lowmem::optim::factored
