// Block-wise 8-bit optimizer state with bitsandbytes' dynamic code (Dettmers
// et al., "8-bit Optimizers via Block-wise Quantization", arXiv 2110.02861),
// as bitsandbytes-foundation/bitsandbytes (95f9af3) defines it:
// - Code: create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)
//   (bitsandbytes/functional.py): for i = 0..6, the midpoints of
//   linspace(0.1, 1, k + 1) scaled by 10^(i-6), k = 2^i (signed: also
//   negated) or 2^(i+1) (unsigned); plus 0 and 1.0; sorted; 256 float32
//   values. The signed map (first moments) runs from -0.99296875 to 1.0 (no
//   -1); the unsigned one (second moments) from 0 to 1.0. Built in
//   core/quant_maps.h with the same ATen ops (linspace, mean of neighbours,
//   scale) so the values match the Python bit for bit
//   (tests/optim/q8_reference.py).
// - Blocks: 256 consecutive elements of the flattened tensor, the last block
//   possibly shorter (optim/optimizer.py Optimizer2State.init_state:
//   `blocksize = 256`, blocks = ceil(n / 256)); one float32 absmax per block.
// - Quantize (backends/default/ops.py quantize_blockwise): absmax = max |x|
//   over the block, scaled = clamp(x * (1 / max(absmax, 1e-38)), -1, 1), the
//   code index = bucketize(scaled, midpoints of neighbouring code values)
//   (right = false): round to the nearest code value, a tie to the lower one.
//   An all-zero block keeps absmax 0 and dequantizes to 0.
// - Dequantize: code[index] * absmax[block].
// - Optimizers (optim/optimizer.py, backends/cpu/ops.py
//   _optimizer_update_8bit_blockwise_cpu): a parameter with fewer than
//   min_8bit_size (4096) elements keeps fp32 state; an update dequantizes
//   the state to fp32, runs the fp32 update, and requantizes with fresh
//   absmax values. update_step dispatches on the stored state, so a state
//   loaded from a checkpoint keeps its width whatever optim_bits says.
// Deviations: (1) bitsandbytes' CUDA kernel (kOptimizerStatic8bit2State-
// Blockwise) divides by absmax instead of multiplying by its reciprocal,
// nudges a first-moment code whose sign differs from the value's, applies
// weight decay after the update and zeroes the state where the gradient is
// not finite; lowmem follows the PyTorch reference backends above instead.
// (2) Updates run over chunks of whole blocks (1 Mi elements) so the fp32
// copies of the state stay small; the result is the same as one pass.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <functional>

#include "lowmem/core/quant_maps.h"

namespace lowmem::optim {

/// Elements per quantization block (bitsandbytes' optimizer blocksize).
inline constexpr int64_t kQ8BlockSize = 256;
/// bitsandbytes' min_8bit_size default: smaller parameters keep fp32 state.
inline constexpr int64_t kMin8bitSize = 4096;
/// Elements per chunk of a chunked 8-bit update (a multiple of the block).
inline constexpr int64_t kQ8ChunkElements = int64_t{1} << 20;

/// bitsandbytes' create_dynamic_map(is_signed) (core/quant_maps.h).
using lowmem::dynamic_map;

/// One tensor stored as 8-bit codes of a dynamic map plus a float32 absmax
/// per block of 256 elements (1 + 4/256 bytes per element).
struct BlockwiseQ8 {
  at::Tensor codes;       // uint8, the shape of the stored tensor, contiguous
  at::Tensor absmax;      // float32 [ceil(numel / 256)]
  bool is_signed = true;  // signed map (first moments) or unsigned (squares)

  bool defined() const { return codes.defined(); }
  int64_t numel() const { return codes.numel(); }
  /// Bytes of codes and absmax.
  int64_t nbytes() const;

  /// Zero state (codes 0, absmax 0: every value dequantizes to 0), like
  /// bitsandbytes' init_state; on `device` (meta works: nothing allocated).
  static BlockwiseQ8 zeros(at::IntArrayRef sizes, c10::Device device,
                           bool is_signed);
  /// Quantizes `x` (any floating dtype; read as float32).
  static BlockwiseQ8 quantize(const at::Tensor& x, bool is_signed);

  /// The stored tensor as float32, shaped like `codes`.
  at::Tensor dequantize() const;
  /// Elements [start, start + len) of the flattened tensor as float32 [len];
  /// start must be a multiple of 256.
  at::Tensor dequantize_range(int64_t start, int64_t len) const;
  /// Requantizes the whole tensor from `x` (numel must match).
  void store(const at::Tensor& x);
  /// Requantizes elements [start, start + flat.numel()) from the 1-D `flat`
  /// (start a multiple of 256; absmax of the blocks covered is recomputed).
  void store_range(int64_t start, const at::Tensor& flat);
  /// Moves codes and absmax to `device`.
  void to(c10::Device device);
};

/// An elementwise fp32 update of one chunk: p and g are views of the
/// parameter and its gradient, m and v the chunk's dequantized moments (fp32,
/// shaped like p; v undefined without a second moment), updated in place.
using Q8ChunkUpdate = std::function<void(at::Tensor& p, const at::Tensor& g,
                                         at::Tensor& m, at::Tensor& v)>;

/// Dequantize, update in fp32, requantize (bitsandbytes' order), over chunks
/// of kQ8ChunkElements whole blocks when p and g are contiguous (1-D views),
/// else over the whole tensors. `second` may be null.
void q8_update(at::Tensor& p, const at::Tensor& g, BlockwiseQ8& first,
               BlockwiseQ8* second, const Q8ChunkUpdate& update);

}  // namespace lowmem::optim
