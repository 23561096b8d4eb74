#include "lowmem/core/quant_maps.h"

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "lowmem/core/check.h"

namespace lowmem {
namespace {

// create_dynamic_map(signed, max_exponent_bits=7, total_bits=8), op for op:
// additional_items = 2^(7 - 7) - 1 = 0, so that branch never runs.
at::Tensor make_dynamic_map(bool is_signed) {
  constexpr int kMaxExponentBits = 7;
  constexpr int kNonSignBits = 7;  // total_bits - 1
  std::vector<at::Tensor> parts;
  for (int i = 0; i < kMaxExponentBits; ++i) {
    const int shift = i + kNonSignBits - kMaxExponentBits + (is_signed ? 0 : 1);
    const int64_t items = (int64_t{1} << shift) + 1;
    const at::Tensor bounds = at::linspace(0.1, 1, items, at::kFloat);
    const at::Tensor means =
        (bounds.slice(0, 0, items - 1) + bounds.slice(0, 1)) / 2.0;
    const double scale = std::pow(10.0, -(kMaxExponentBits - 1) + i);
    parts.push_back(means * scale);
    if (is_signed) parts.push_back(means * -scale);
  }
  parts.push_back(at::zeros({1}, at::kFloat));
  parts.push_back(at::ones({1}, at::kFloat));
  at::Tensor data = at::cat(parts);
  LOWMEM_CHECK(data.numel() == 256, "[quant] dynamic map has ", data.numel(),
               " values, expected 256");
  return std::get<0>(data.sort());
}

}  // namespace

const at::Tensor& dynamic_map(bool is_signed) {
  static const at::Tensor s = make_dynamic_map(true);
  static const at::Tensor u = make_dynamic_map(false);
  return is_signed ? s : u;
}

const at::Tensor& nf4_code() {
  // get_4bit_type("nf4"): these literals, then data.div_(data.abs().max()),
  // a division by 1.0 that changes nothing.
  static const at::Tensor code = at::tensor(
      std::vector<float>{
          -1.0f, -0.6961928009986877f, -0.5250730514526367f,
          -0.39491748809814453f, -0.28444138169288635f, -0.18477343022823334f,
          -0.09105003625154495f, 0.0f, 0.07958029955625534f,
          0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
          0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f},
      at::kFloat);
  return code;
}

at::Tensor code_midpoints(const at::Tensor& code) {
  const int64_t k = code.numel();
  return (code.slice(0, 0, k - 1) + code.slice(0, 1)) / 2;
}

}  // namespace lowmem
