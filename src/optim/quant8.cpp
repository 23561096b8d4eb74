#include "lowmem/optim/quant8.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "lowmem/core/check.h"
#include "lowmem/core/profile.h"
#include "lowmem/core/quant_maps.h"

namespace lowmem::optim {
namespace {

constexpr int64_t kB = kQ8BlockSize;

int64_t blocks_of(int64_t n) { return (n + kB - 1) / kB; }

// Midpoints between neighbouring code values: bucketize's boundaries.
const at::Tensor& midpoints(bool is_signed) {
  static const at::Tensor s = code_midpoints(dynamic_map(true));
  static const at::Tensor u = code_midpoints(dynamic_map(false));
  return is_signed ? s : u;
}

// lower_bound over the sorted midpoints in O(1) on average: the midpoint
// index of the smallest float sharing v's top 16 bits (sign, exponent, 7
// mantissa bits), from where a short forward scan finds lower_bound(v)
// exactly (lower_bound is monotone in v and every float with those top bits
// is >= that smallest one). 64 Ki one-byte entries per map.
class MidpointIndex {
 public:
  explicit MidpointIndex(const at::Tensor& mids)
      : mids_(mids.contiguous()),
        b_(mids_.data_ptr<float>()),
        nb_(mids_.numel()),
        start_(size_t{1} << 16) {
    for (uint32_t k = 0; k < (1u << 16); ++k) {
      // Positive keys grow with the low bits, negative ones shrink.
      const uint32_t bits = (k & 0x8000u) ? ((k << 16) | 0xFFFFu) : (k << 16);
      float lo;
      std::memcpy(&lo, &bits, sizeof lo);
      start_[k] =
          std::isnan(lo)
              ? uint8_t{0}
              : static_cast<uint8_t>(std::lower_bound(b_, b_ + nb_, lo) - b_);
    }
  }
  uint8_t operator()(float v) const {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    int64_t i = start_[bits >> 16];
    while (i < nb_ && b_[i] < v) ++i;
    return static_cast<uint8_t>(i);
  }

 private:
  at::Tensor mids_;
  const float* b_;
  int64_t nb_;
  std::vector<uint8_t> start_;
};

const MidpointIndex& midpoint_index(bool is_signed) {
  static const MidpointIndex s(midpoints(true));
  static const MidpointIndex u(midpoints(false));
  return is_signed ? s : u;
}

// The CPU kernel of quantize_blocks for a contiguous fp32 x2d and contiguous
// outputs: per block, absmax, x * (1 / max(absmax, 1e-38)) clamped to
// [-1, 1], then the index of the first midpoint >= it (bucketize's lower
// bound), in one pass, each float operation as the tensor ops below do it.
// Returns false (nothing trusted) when a block holds a NaN: the tensor ops
// then decide.
bool quantize_blocks_cpu(const at::Tensor& x2d, at::Tensor& am,
                         at::Tensor& codes2d, bool is_signed) {
  const MidpointIndex& index = midpoint_index(is_signed);
  const int64_t rows = x2d.size(0), len = x2d.size(1);
  const float* x = x2d.data_ptr<float>();
  float* a = am.data_ptr<float>();
  uint8_t* c = codes2d.data_ptr<uint8_t>();
  std::atomic<bool> nan{false};
  at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * len;
      float m = 0.0f;
      bool bad = false;
      for (int64_t i = 0; i < len; ++i) {
        const float v = std::fabs(xr[i]);
        bad |= std::isnan(v);
        m = v > m ? v : m;
      }
      if (bad) {
        nan.store(true, std::memory_order_relaxed);
        continue;
      }
      a[r] = m;
      const float inv = 1.0f / (m < 1e-38f ? 1e-38f : m);
      uint8_t* cr = c + r * len;
      for (int64_t i = 0; i < len; ++i) {
        float v = xr[i] * inv;
        v = v < -1.0f ? -1.0f : (v > 1.0f ? 1.0f : v);
        cr[i] = index(v);
      }
    }
  });
  return !nan.load();
}

// Quantizes the rows of x2d [nb, len] (one block per row) into codes2d and
// am [nb].
void quantize_blocks(const at::Tensor& x2d, at::Tensor am, at::Tensor codes2d,
                     bool is_signed) {
  if (x2d.device().is_cpu() && x2d.scalar_type() == at::kFloat &&
      x2d.is_contiguous() && am.is_contiguous() && codes2d.is_contiguous() &&
      codes2d.scalar_type() == at::kByte &&
      quantize_blocks_cpu(x2d, am, codes2d, is_signed))
    return;
  const at::Tensor absmax = x2d.abs().amax(1);
  const at::Tensor scaled =
      x2d.mul(absmax.clamp_min(1e-38).reciprocal().unsqueeze(1)).clamp_(-1, 1);
  const at::Tensor bounds = midpoints(is_signed).to(x2d.device());
  codes2d.copy_(at::bucketize(scaled, bounds, /*out_int32=*/true));
  am.copy_(absmax);
}

}  // namespace

int64_t BlockwiseQ8::nbytes() const {
  if (!defined()) return 0;
  return codes.numel() * static_cast<int64_t>(codes.element_size()) +
         absmax.numel() * static_cast<int64_t>(absmax.element_size());
}

BlockwiseQ8 BlockwiseQ8::zeros(at::IntArrayRef sizes, c10::Device device,
                               bool is_signed) {
  BlockwiseQ8 q;
  q.is_signed = is_signed;
  q.codes = at::zeros(sizes, at::TensorOptions(at::kByte).device(device));
  q.absmax = at::zeros({blocks_of(q.codes.numel())},
                       at::TensorOptions(at::kFloat).device(device));
  return q;
}

BlockwiseQ8 BlockwiseQ8::quantize(const at::Tensor& x, bool is_signed) {
  LOWMEM_CHECK(x.defined() && at::isFloatingType(x.scalar_type()),
               "[q8] quantize needs a floating tensor, got ",
               x.defined() ? x.scalar_type() : at::ScalarType::Undefined);
  BlockwiseQ8 q = zeros(x.sizes(), x.device(), is_signed);
  q.store(x);
  return q;
}

at::Tensor BlockwiseQ8::dequantize_range(int64_t start, int64_t len) const {
  LOWMEM_CHECK(defined(), "[q8] dequantize of an undefined state");
  LOWMEM_CHECK(
      start >= 0 && len >= 0 && start % kB == 0 && start + len <= numel(),
      "[q8] range [", start, ", ", start + len,
      ") is not block-aligned inside ", numel(), " elements");
  profile::Scope scope(profile::Phase::kStateQuantize);
  const at::Tensor c = codes.view(-1).narrow(0, start, len);
  const at::Tensor am = absmax.narrow(0, start / kB, blocks_of(len));
  if (codes.device().is_cpu() && codes.is_contiguous() &&
      absmax.is_contiguous()) {
    // code value x its block's absmax, one float multiply per element, as
    // the tensor ops below compute it.
    at::Tensor out = at::empty({len}, absmax.options());
    const float* map = dynamic_map(is_signed).data_ptr<float>();
    const uint8_t* cp = c.data_ptr<uint8_t>();
    const float* ap = am.data_ptr<float>();
    float* op = out.data_ptr<float>();
    at::parallel_for(0, blocks_of(len), 64, [&](int64_t b0, int64_t b1) {
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t i1 = std::min(len, (blk + 1) * kB);
        const float s = ap[blk];
        for (int64_t i = blk * kB; i < i1; ++i) op[i] = map[cp[i]] * s;
      }
    });
    return out;
  }
  at::Tensor vals = dynamic_map(is_signed)
                        .to(codes.device())
                        .index_select(0, c.to(at::kLong));
  const int64_t nfull = len / kB, full = nfull * kB;
  if (nfull > 0) {
    vals.narrow(0, 0, full)
        .view({nfull, kB})
        .mul_(am.narrow(0, 0, nfull).unsqueeze(1));
  }
  if (full < len) vals.narrow(0, full, len - full).mul_(am.narrow(0, nfull, 1));
  return vals;
}

at::Tensor BlockwiseQ8::dequantize() const {
  LOWMEM_CHECK(defined(), "[q8] dequantize of an undefined state");
  const int64_t n = numel();
  if (n <= kQ8ChunkElements) return dequantize_range(0, n).view(codes.sizes());
  at::Tensor out = at::empty(codes.sizes(), codes.options().dtype(at::kFloat));
  at::Tensor flat = out.view(-1);
  for (int64_t lo = 0; lo < n; lo += kQ8ChunkElements) {
    const int64_t len = std::min(kQ8ChunkElements, n - lo);
    flat.narrow(0, lo, len).copy_(dequantize_range(lo, len));
  }
  return out;
}

void BlockwiseQ8::store_range(int64_t start, const at::Tensor& flat) {
  LOWMEM_CHECK(defined(), "[q8] store into an undefined state");
  const int64_t len = flat.numel();
  LOWMEM_CHECK(flat.dim() == 1 && start >= 0 && start % kB == 0 &&
                   start + len <= numel(),
               "[q8] store of ", len, " elements at ", start,
               " is not a block-aligned 1-D range inside ", numel());
  profile::Scope scope(profile::Phase::kStateQuantize);
  const at::Tensor x = flat.to(at::kFloat);
  at::Tensor c = codes.view(-1).narrow(0, start, len);
  at::Tensor am = absmax.narrow(0, start / kB, blocks_of(len));
  const int64_t nfull = len / kB, full = nfull * kB;
  if (nfull > 0) {
    quantize_blocks(x.narrow(0, 0, full).view({nfull, kB}),
                    am.narrow(0, 0, nfull),
                    c.narrow(0, 0, full).view({nfull, kB}), is_signed);
  }
  if (full < len) {
    quantize_blocks(x.narrow(0, full, len - full).view({1, len - full}),
                    am.narrow(0, nfull, 1),
                    c.narrow(0, full, len - full).view({1, len - full}),
                    is_signed);
  }
}

void BlockwiseQ8::store(const at::Tensor& x) {
  LOWMEM_CHECK(x.numel() == numel(), "[q8] store of ", x.numel(),
               " elements into a state of ", numel());
  const at::Tensor flat = x.reshape(-1);
  const int64_t n = numel();
  for (int64_t lo = 0; lo < n; lo += kQ8ChunkElements) {
    store_range(lo, flat.narrow(0, lo, std::min(kQ8ChunkElements, n - lo)));
  }
}

void q8_update(at::Tensor& p, const at::Tensor& g, BlockwiseQ8& first,
               BlockwiseQ8* second, const Q8ChunkUpdate& update) {
  const int64_t n = p.numel();
  LOWMEM_CHECK(
      first.numel() == n && (second == nullptr || second->numel() == n),
      "[q8] state of ", first.numel(), " elements for a parameter of ", n);
  if (!p.is_contiguous() || !g.is_contiguous()) {
    at::Tensor m = first.dequantize();
    at::Tensor v = second != nullptr ? second->dequantize() : at::Tensor();
    update(p, g, m, v);
    first.store(m);
    if (second != nullptr) second->store(v);
    return;
  }
  const at::Tensor pf = p.view(-1), gf = g.view(-1);
  for (int64_t lo = 0; lo < n; lo += kQ8ChunkElements) {
    const int64_t len = std::min(kQ8ChunkElements, n - lo);
    at::Tensor pc = pf.narrow(0, lo, len);
    const at::Tensor gc = gf.narrow(0, lo, len);
    at::Tensor m = first.dequantize_range(lo, len);
    at::Tensor v =
        second != nullptr ? second->dequantize_range(lo, len) : at::Tensor();
    update(pc, gc, m, v);
    first.store_range(lo, m);
    if (second != nullptr) second->store_range(lo, v);
  }
}

void BlockwiseQ8::to(c10::Device device) {
  if (!defined() || codes.device() == device) return;
  codes = codes.to(device);
  absmax = absmax.to(device);
}

}  // namespace lowmem::optim
