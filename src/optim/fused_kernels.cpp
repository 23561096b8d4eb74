// Fused CPU loops. Vectorization relies on __restrict pointers, independent
// lanes for reductions (kLanes partial sums) and -fno-math-errno (set for all
// library targets in cmake/layers.cmake); see research/performance.md.
#include "fused_kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace lowmem::optim::kernels {

namespace {

constexpr int64_t kLanes = 16;
// Elements per chunk below which a pass is not split across threads.
constexpr int64_t kGrain = 1 << 15;

int64_t num_chunks(int64_t work) {
  const int64_t t = at::get_num_threads();
  return std::max<int64_t>(1, std::min<int64_t>(t, work / kGrain));
}

// Runs fn(chunk, begin, end) over `chunks` contiguous ranges of [0, n).
template <class Fn>
void for_chunks(int64_t n, int64_t chunks, const Fn& fn) {
  if (chunks <= 1) {
    fn(0, 0, n);
    return;
  }
  at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) fn(c, n * c / chunks, n * (c + 1) / chunks);
  });
}

float* fptr(at::Tensor& t) {
  return t.data_ptr<float>();
}
const float* fptr(const at::Tensor& t) {
  return t.data_ptr<float>();
}

// Row/column reduction over B batches of M x N rows: body(r, acc) handles
// global row r in [0, B*M), adds its N per-column values into acc (this
// chunk's accumulator for r's batch) and returns the row total. Writes
// rowsum[B*M], colsum[B*N].
template <class Body>
void rows_cols(
    int64_t B, int64_t M, int64_t N, float* rowsum, float* colsum,
    const Body& body) {
  const int64_t rows = B * M;
  const int64_t chunks = std::min(rows, num_chunks(rows * N));
  std::vector<float> partial(static_cast<size_t>(chunks * B * N), 0.f);
  for_chunks(rows, chunks, [&](int64_t c, int64_t r0, int64_t r1) {
    float* acc = partial.data() + c * B * N;
    for (int64_t r = r0; r < r1; ++r) rowsum[r] = body(r, acc + (r / M) * N);
  });
  for (int64_t k = 0; k < B * N; ++k) {
    float s = 0.f;
    for (int64_t c = 0; c < chunks; ++c) s += partial[c * B * N + k];
    colsum[k] = s;
  }
}

// Sum of a row of values f(j), j < n, with kLanes independent partial sums so
// the loop vectorizes without reassociation flags; also acc[j] += f(j).
template <class F>
inline float row_reduce(int64_t n, float* __restrict acc, const F& f) {
  float s[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int64_t k = 0; k < kLanes; ++k) {
      const float q = f(j + k);
      s[k] += q;
      acc[j + k] += q;
    }
  }
  float tail = 0.f;
  for (; j < n; ++j) {
    const float q = f(j);
    tail += q;
    acc[j] += q;
  }
  for (int64_t k = 0; k < kLanes; ++k) tail += s[k];
  return tail;
}

// Sum of f(j), j < n, in double across lanes (for RMS reductions).
template <class F>
inline double lane_sum(int64_t b, int64_t e, const F& f) {
  float s[kLanes] = {};
  double total = 0.0;
  int64_t j = b;
  // Flush float lanes to double every block to keep precision on long runs.
  constexpr int64_t kBlock = 4096;
  while (j + kLanes <= e) {
    const int64_t stop = std::min(e - (e - j) % kLanes, j + kBlock);
    for (; j < stop; j += kLanes) {
      for (int64_t k = 0; k < kLanes; ++k) s[k] += f(j + k);
    }
    for (int64_t k = 0; k < kLanes; ++k) {
      total += s[k];
      s[k] = 0.f;
    }
  }
  for (; j < e; ++j) total += f(j);
  return total;
}

// Parallel sum of f(i) over [0, n) in double.
template <class F>
double parallel_sum(int64_t n, const F& f) {
  const int64_t chunks = num_chunks(n);
  std::vector<double> part(static_cast<size_t>(chunks), 0.0);
  for_chunks(n, chunks, [&](int64_t c, int64_t b, int64_t e) {
    part[c] = lane_sum(b, e, f);
  });
  double s = 0.0;
  for (double x : part) s += x;
  return s;
}

// Shape as B batches of M x N (factored over the last two dims).
void bmn(const at::Tensor& p, int64_t& B, int64_t& M, int64_t& N) {
  const int64_t d = p.dim();
  M = p.size(d - 2);
  N = p.size(d - 1);
  B = M * N == 0 ? 0 : p.numel() / (M * N);
}

// Row/col statistics EMA: s <- beta*s + (1-beta)*(sum/count).
void ema_means(float* s, const float* sum, int64_t n, double count,
               double beta) {
  const float b = static_cast<float>(beta), a = static_cast<float>(1.0 - beta);
  for (int64_t k = 0; k < n; ++k) {
    const float mean = sum[k] / static_cast<float>(count);
    s[k] = s[k] * b + a * mean;
  }
}

// rfac = rsqrt(row / mean_b(row)) per batch, cfac = rsqrt(col).
void factors(const float* row, const float* col, int64_t B, int64_t M,
             int64_t N, float* rfac, float* cfac) {
  for (int64_t b = 0; b < B; ++b) {
    float s = 0.f;
    for (int64_t i = 0; i < M; ++i) s += row[b * M + i];
    const float mean = s / static_cast<float>(M);
    for (int64_t i = 0; i < M; ++i) {
      rfac[b * M + i] = 1.f / std::sqrt(row[b * M + i] / mean);
    }
  }
  for (int64_t k = 0; k < B * N; ++k) cfac[k] = 1.f / std::sqrt(col[k]);
}

// Pass 1 of the factored optimizers, one read of g (and of p when `p` is
// given, for the parameter RMS):
//   row <- beta*row + (1-beta)*mean_r(g^2 + eps1), col likewise with mean_c;
// returns sum_ij u_ij^2 for u = rsqrt(row_i/mean(row)) * rsqrt(col_j) * g_ij
// with the *updated* row/col, without a second pass over g, from
//   sum u^2 = sum_b mean_b(row) * sum_j (1/col_bj) * sum_i g_bij^2 / row_bi,
// where row_bi is final as soon as row i has been read (the row is still in
// L1 for the weighted column sum). *p_sumsq receives sum p^2.
double sq_pass(const float* g, int64_t B, int64_t M, int64_t N, double eps1_d,
               double beta, float* row, float* col, const float* p,
               double* p_sumsq) {
  const int64_t rows = B * M, BN = B * N;
  const int64_t chunks = std::min(rows, num_chunks(rows * N));
  std::vector<float> partial(static_cast<size_t>(chunks * 2 * BN), 0.f);
  std::vector<double> psq(static_cast<size_t>(chunks), 0.0);
  const float eps1 = static_cast<float>(eps1_d);
  const float bb = static_cast<float>(beta);
  const float aa = static_cast<float>(1.0 - beta);
  for_chunks(rows, chunks, [&](int64_t c, int64_t r0, int64_t r1) {
    float* acc = partial.data() + c * 2 * BN;
    float* wacc = acc + BN;
    double ps = 0.0;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / M;
      const float* __restrict gr = g + r * N;
      const float rs = row_reduce(
          N, acc + b * N, [&](int64_t j) { return gr[j] * gr[j] + eps1; });
      const float rn = row[r] * bb + aa * (rs / static_cast<float>(N));
      row[r] = rn;  // each row belongs to one chunk
      const float inv = 1.f / rn;
      float* __restrict w = wacc + b * N;
      for (int64_t j = 0; j < N; ++j) w[j] += gr[j] * gr[j] * inv;
      if (p != nullptr) {
        const float* __restrict pr = p + r * N;
        ps += lane_sum(0, N, [&](int64_t j) { return pr[j] * pr[j]; });
      }
    }
    psq[c] = ps;
  });
  std::vector<double> wsum(static_cast<size_t>(BN));
  for (int64_t k = 0; k < BN; ++k) {
    float cs = 0.f;
    double ws = 0.0;
    for (int64_t c = 0; c < chunks; ++c) {
      cs += partial[c * 2 * BN + k];
      ws += partial[c * 2 * BN + BN + k];
    }
    col[k] = col[k] * bb + aa * (cs / static_cast<float>(M));
    wsum[k] = ws;
  }
  double sumsq = 0.0;
  for (int64_t b = 0; b < B; ++b) {
    double mean_r = 0.0, s = 0.0;
    for (int64_t i = 0; i < M; ++i) mean_r += row[b * M + i];
    mean_r /= static_cast<double>(M);
    for (int64_t j = 0; j < N; ++j) s += wsum[b * N + j] / col[b * N + j];
    sumsq += mean_r * s;
  }
  if (p_sumsq != nullptr) {
    double t = 0.0;
    for (double x : psq) t += x;
    *p_sumsq = t;
  }
  return sumsq;
}

float clip_div(double sumsq, int64_t n, double threshold) {
  const double rms = std::sqrt(sumsq / static_cast<double>(n));
  return static_cast<float>(std::max(1.0, rms / threshold));
}

}  // namespace

bool fusable(const at::Tensor& p, const at::Tensor& g) {
  return p.device().is_cpu() && g.device().is_cpu() &&
         p.scalar_type() == at::kFloat && g.scalar_type() == at::kFloat &&
         p.is_contiguous() && g.is_contiguous() && p.numel() == g.numel() &&
         p.numel() > 0;
}

void came_factored(
    at::Tensor& p,
    const at::Tensor& g_t,
    at::Tensor& m_t,
    at::Tensor& row,
    at::Tensor& col,
    at::Tensor& res_row,
    at::Tensor& res_col,
    const CameHyper& h) {
  int64_t B, M, N;
  bmn(p, B, M, N);
  const float* __restrict g = fptr(g_t);
  float* __restrict m = fptr(m_t);
  float* __restrict pp = fptr(p);
  std::vector<float> rsum(B * M), csum(B * N), rfac(B * M), cfac(B * N);

  // Pass 1 (g): row/col EMAs of g^2 + eps1 and the RMS of u for the clip.
  const double sumsq = sq_pass(g, B, M, N, h.eps1, h.beta2, fptr(row),
                               fptr(col), nullptr, nullptr);
  factors(fptr(row), fptr(col), B, M, N, rfac.data(), cfac.data());
  const float clip = clip_div(sumsq, p.numel(), h.clip_threshold);

  // Pass 2 (g, m -> m): u_hat = u / clip; m <- b1 m + (1-b1) u_hat;
  // residual (u_hat - m)^2 + eps2 reduced to row/col means; EMA with beta3.
  const float b1 = static_cast<float>(h.beta1);
  const float a1 = static_cast<float>(1.0 - h.beta1);
  const float eps2 = static_cast<float>(h.eps2);
  const float* rf_p = rfac.data();
  const float* cf_p = cfac.data();
  rows_cols(B, M, N, rsum.data(), csum.data(), [&](int64_t r, float* acc) {
    const float* __restrict gr = g + r * N;
    float* __restrict mr = m + r * N;
    const float* __restrict cf = cf_p + (r / M) * N;
    const float rf = rf_p[r];
    return row_reduce(N, acc, [&](int64_t j) {
      const float u = (rf * cf[j]) * gr[j] / clip;
      const float mm = mr[j] * b1 + a1 * u;
      mr[j] = mm;
      const float d = u - mm;
      return d * d + eps2;
    });
  });
  ema_means(fptr(res_row), rsum.data(), B * M, N, h.beta3);
  ema_means(fptr(res_col), csum.data(), B * N, M, h.beta3);
  factors(fptr(res_row), fptr(res_col), B, M, N, rfac.data(), cfac.data());

  // Pass 3 (p, m -> p): p <- p - lr*wd*p; p <- p - lr * (rsqrt(S_hat) * m).
  const float wdc = static_cast<float>(-h.weight_decay * h.lr);
  const bool decay = h.weight_decay != 0;
  const float lr = static_cast<float>(h.lr);
  const int64_t rows = B * M;
  for_chunks(rows, std::min(rows, num_chunks(rows * N)),
             [&](int64_t, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* __restrict pr = pp + r * N;
      const float* __restrict mr = m + r * N;
      const float* __restrict cf = cf_p + (r / M) * N;
      const float rf = rf_p[r];
      if (decay) {
        for (int64_t j = 0; j < N; ++j) {
          const float q = pr[j] + wdc * pr[j];
          pr[j] = q - ((rf * cf[j]) * mr[j]) * lr;
        }
      } else {
        for (int64_t j = 0; j < N; ++j) pr[j] -= ((rf * cf[j]) * mr[j]) * lr;
      }
    }
  });
}

void came_vector(
    at::Tensor& p,
    const at::Tensor& g_t,
    at::Tensor& m_t,
    at::Tensor& v_t,
    const CameHyper& h) {
  const int64_t n = p.numel();
  const float* __restrict g = fptr(g_t);
  float* __restrict m = fptr(m_t);
  float* __restrict v = fptr(v_t);
  float* __restrict pp = fptr(p);
  const float b2 = static_cast<float>(h.beta2);
  const float a2 = static_cast<float>(1.0 - h.beta2);
  const float eps1 = static_cast<float>(h.eps1);
  // Pass 1 (g, v -> v): v EMA and sum of u^2, u = rsqrt(v) * g.
  const double sumsq = parallel_sum(n, [&](int64_t i) {
    const float vv = v[i] * b2 + a2 * (g[i] * g[i] + eps1);
    v[i] = vv;
    const float u = (1.f / std::sqrt(vv)) * g[i];
    return u * u;
  });
  const float clip = clip_div(sumsq, n, h.clip_threshold);
  // Pass 2: u_hat, momentum, decay, p <- p - lr * m.
  const float b1 = static_cast<float>(h.beta1);
  const float a1 = static_cast<float>(1.0 - h.beta1);
  const float wdc = static_cast<float>(-h.weight_decay * h.lr);
  const float lr = static_cast<float>(h.lr);
  const bool decay = h.weight_decay != 0;
  for_chunks(n, num_chunks(n), [&](int64_t, int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float u = (1.f / std::sqrt(v[i])) * g[i] / clip;
      const float mm = m[i] * b1 + a1 * u;
      m[i] = mm;
      const float q = decay ? pp[i] + wdc * pp[i] : pp[i];
      pp[i] = q - mm * lr;
    }
  });
}

void adafactor_factored(
    at::Tensor& p,
    const at::Tensor& g_t,
    at::Tensor& m_t,
    at::Tensor& row,
    at::Tensor& col,
    const AdafactorHyper& h) {
  int64_t B, M, N;
  bmn(p, B, M, N);
  const float* __restrict g = fptr(g_t);
  float* __restrict pp = fptr(p);
  float* __restrict m = h.use_beta1 ? fptr(m_t) : nullptr;
  std::vector<float> rfac(B * M), cfac(B * N);
  const int64_t rows = B * M;
  const int64_t chunks = std::min(rows, num_chunks(rows * N));

  // Pass 1 (g[, p]): row/col EMAs of g^2 + eps1, the RMS of u for the clip
  // and, with parameter scaling, the RMS of p before the update.
  double psq = 0.0;
  const double sumsq =
      sq_pass(g, B, M, N, h.eps1, h.beta2t, fptr(row), fptr(col),
              h.scale_parameter ? pp : nullptr, &psq);
  factors(fptr(row), fptr(col), B, M, N, rfac.data(), cfac.data());
  double alpha = h.rho;
  if (h.scale_parameter) {
    const double rms = std::sqrt(psq / static_cast<double>(p.numel()));
    alpha = std::max(h.eps2, rms) * h.rho;
  }
  const float clip = clip_div(sumsq, p.numel(), h.clip_threshold);

  // Pass 2 (g, p[, M] -> p[, M]).
  const float al = static_cast<float>(alpha);
  const float wdc = static_cast<float>(-h.weight_decay * alpha);
  const bool decay = h.weight_decay != 0;
  const float b1 = static_cast<float>(h.beta1);
  const float a1 = static_cast<float>(1.0 - h.beta1);
  const float* rf_p = rfac.data();
  const float* cf_p = cfac.data();
  for_chunks(rows, chunks, [&](int64_t, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* __restrict pr = pp + r * N;
      const float* __restrict gr = g + r * N;
      const float* __restrict cf = cf_p + (r / M) * N;
      const float rf = rf_p[r];
      if (m != nullptr) {
        float* __restrict mr = m + r * N;
        for (int64_t j = 0; j < N; ++j) {
          const float u = ((rf * cf[j]) * gr[j] / clip) * al;
          const float mm = mr[j] * b1 + a1 * u;
          mr[j] = mm;
          const float q = decay ? pr[j] + wdc * pr[j] : pr[j];
          pr[j] = q - mm;
        }
      } else {
        for (int64_t j = 0; j < N; ++j) {
          const float u = ((rf * cf[j]) * gr[j] / clip) * al;
          const float q = decay ? pr[j] + wdc * pr[j] : pr[j];
          pr[j] = q - u;
        }
      }
    }
  });
}

void adafactor_vector(
    at::Tensor& p,
    const at::Tensor& g_t,
    at::Tensor& m_t,
    at::Tensor& v_t,
    const AdafactorHyper& h) {
  const int64_t n = p.numel();
  const float* __restrict g = fptr(g_t);
  float* __restrict v = fptr(v_t);
  float* __restrict pp = fptr(p);
  float* __restrict m = h.use_beta1 ? fptr(m_t) : nullptr;
  const float b2 = static_cast<float>(h.beta2t);
  const float a2 = static_cast<float>(1.0 - h.beta2t);
  const float eps1 = static_cast<float>(h.eps1);
  // Pass 1 (g, v[, p] -> v): v EMA, sum of u^2 and of p^2.
  double alpha = h.rho;
  if (h.scale_parameter) {
    const double s = parallel_sum(n, [&](int64_t i) { return pp[i] * pp[i]; });
    alpha = std::max(h.eps2, std::sqrt(s / static_cast<double>(n))) * h.rho;
  }
  const double sumsq = parallel_sum(n, [&](int64_t i) {
    const float vv = v[i] * b2 + a2 * (g[i] * g[i] + eps1);
    v[i] = vv;
    const float u = (1.f / std::sqrt(vv)) * g[i];
    return u * u;
  });
  const float clip = clip_div(sumsq, n, h.clip_threshold);
  const float al = static_cast<float>(alpha);
  const float wdc = static_cast<float>(-h.weight_decay * alpha);
  const bool decay = h.weight_decay != 0;
  const float b1 = static_cast<float>(h.beta1);
  const float a1 = static_cast<float>(1.0 - h.beta1);
  for_chunks(n, num_chunks(n), [&](int64_t, int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      float u = ((1.f / std::sqrt(v[i])) * g[i] / clip) * al;
      if (m != nullptr) {
        u = m[i] * b1 + a1 * u;
        m[i] = u;
      }
      const float q = decay ? pp[i] + wdc * pp[i] : pp[i];
      pp[i] = q - u;
    }
  });
}

void adamw(
    at::Tensor& p,
    const at::Tensor& g_t,
    at::Tensor& m_t,
    at::Tensor& v_t,
    const AdamWHyper& h) {
  const int64_t n = p.numel();
  const float* __restrict g = fptr(g_t);
  float* __restrict m = fptr(m_t);
  float* __restrict v = fptr(v_t);
  float* __restrict pp = fptr(p);
  const float decay = static_cast<float>(1.0 - h.lr * h.weight_decay);
  const float b1 = static_cast<float>(h.beta1);
  const float a1 = static_cast<float>(1.0 - h.beta1);
  const float b2 = static_cast<float>(h.beta2);
  const float a2 = static_cast<float>(1.0 - h.beta2);
  const float bc2_sqrt = static_cast<float>(std::sqrt(h.bias_correction2));
  const float eps = static_cast<float>(h.eps);
  const float step_size = static_cast<float>(h.lr / h.bias_correction1);
  for_chunks(n, num_chunks(n), [&](int64_t, int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float gi = g[i];
      const float mm = m[i] * b1 + a1 * gi;
      const float vv = v[i] * b2 + a2 * gi * gi;
      m[i] = mm;
      v[i] = vv;
      const float denom = std::sqrt(vv) / bc2_sqrt + eps;
      pp[i] = pp[i] * decay - step_size * (mm / denom);
    }
  });
}

}  // namespace lowmem::optim::kernels
