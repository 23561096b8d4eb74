// The code maps of block-wise quantization, as bitsandbytes defines them
// (bitsandbytes-foundation/bitsandbytes @95f9af3, bitsandbytes/functional.py):
// - dynamic_map: create_dynamic_map(signed, max_exponent_bits=7,
//   total_bits=8), the 8-bit code of the 8-bit optimizers (Dettmers et al.,
//   arXiv 2110.02861) and of NF4's double-quantized block scales. For
//   i = 0..6, the midpoints of linspace(0.1, 1, k + 1) scaled by 10^(i-6),
//   k = 2^i (signed: also negated) or 2^(i+1) (unsigned); plus 0 and 1.0;
//   sorted; 256 float32 values, built with the same ATen ops as the Python
//   so the values match bit for bit.
// - nf4_code: get_4bit_type("nf4"), the 16 NormalFloat4 values of QLoRA
//   (Dettmers et al., arXiv 2305.14314), quantiles of N(0, 1) normalised to
//   [-1, 1] (create_normal_map(offset=0.9677083, use_extra_value=True)),
//   as the float32 literals bitsandbytes hard-codes.
#pragma once

#include <ATen/core/Tensor.h>

namespace lowmem {

/// bitsandbytes' create_dynamic_map(is_signed): 256 sorted float32 values on
/// the CPU (computed once).
const at::Tensor& dynamic_map(bool is_signed);

/// bitsandbytes' get_4bit_type("nf4"): 16 sorted float32 values from -1 to 1
/// (index 7 is 0) on the CPU.
const at::Tensor& nf4_code();

/// The midpoints between neighbouring values of a sorted code [k] -> [k - 1]
/// (bitsandbytes' bucketize boundaries: (code[:-1] + code[1:]) / 2).
at::Tensor code_midpoints(const at::Tensor& code);

}  // namespace lowmem
