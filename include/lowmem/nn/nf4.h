// 4-bit NormalFloat (NF4) weights with double-quantized block scales, as QLoRA
// defines them (Dettmers et al., "QLoRA: Efficient Finetuning of Quantized
// LLMs", arXiv 2305.14314) and bitsandbytes implements them
// (bitsandbytes-foundation/bitsandbytes @95f9af3: functional.py
// quantize_4bit(blocksize=64, compress_statistics=True, quant_type="nf4") and
// dequantize_4bit; the default backend's quantize_4bit, dequantize_4bit,
// quantize_blockwise and dequantize_blockwise in backends/default/ops.py):
// - Blocks of 64 consecutive elements of the flattened weight, each scaled by
//   its absmax: scaled = clamp(x * (1 / max(absmax, 1e-38)), -1, 1); the
//   last block, if shorter, divides by its absmax clamped to 1e-38 (and
//   stores the clamped value).
// - Each scaled value gets the index of the nearest NF4 code value
//   (core/quant_maps.h nf4_code), bucketize over the midpoints, a tie to the
//   lower; two indices per byte, the even element in the high nibble; an odd
//   count is padded with 0.0's index.
// - Double quantization (compress_statistics): offset = mean of the block
//   absmax values; absmax - offset is stored 8-bit blockwise (blocks of 256,
//   signed dynamic map, a float32 absmax per block, the same rules).
// - Dequantize: absmax = dynamic_map[q] * absmax2[block / 256] + offset
//   (float32), then value = nf4_code[index] * absmax[block] in float32, cast
//   to the compute dtype.
// About 0.5 + 1/64 + 4/(64*256) bytes per element (4.127 bits, QLoRA §3).
// Checked bit for bit against a transcription of those functions
// (tests/nn/nf4_reference.py -> tests/golden/nf4.pt). Deviation: quantize and
// dequantize run over chunks of whole blocks, and the CPU dequantization is
// one loop writing the compute dtype directly, so no int32/fp32 copy of the
// whole weight is made; the values are the same.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "lowmem/nn/linear.h"

namespace lowmem::nn {

/// Elements per NF4 block (bitsandbytes' quantize_4bit default, QLoRA's).
inline constexpr int64_t kNf4BlockSize = 64;
/// Block scales per 8-bit block of the double quantization.
inline constexpr int64_t kNf4ScaleBlockSize = 256;

/// One tensor stored as NF4 with double-quantized block scales.
struct Nf4Weight {
  at::Tensor packed;    // uint8 [ceil(n / 2)]: two 4-bit indices per byte
  at::Tensor absmax_q;  // uint8 [ceil(n / 64)]: absmax - offset, 8-bit codes
  at::Tensor absmax2;   // float32 [ceil(n / 64 / 256)]: their block absmax
  at::Tensor offset;    // float32 [1]: mean of the block absmax values
  std::vector<int64_t> shape;  // the original tensor's shape

  bool defined() const { return packed.defined(); }
  int64_t numel() const;
  /// Bytes of packed, absmax_q, absmax2 and offset.
  int64_t nbytes() const;
  /// What nbytes() is for a tensor of `numel` elements.
  static int64_t bytes_for(int64_t numel);

  /// Quantizes `x` (float32, bf16, fp16 or fp64; read as float32).
  static Nf4Weight quantize(const at::Tensor& x);
  /// Storage of the right sizes, uninitialised, on `device` (meta: nothing
  /// allocated), for planning.
  static Nf4Weight empty(at::IntArrayRef shape, c10::Device device);

  /// The per-block scales, float32 [ceil(n / 64)].
  at::Tensor absmax() const;
  /// The stored tensor in `dtype` (floating), shaped like the original.
  at::Tensor dequantize(at::ScalarType dtype) const;
  /// The same through ATen ops only (any device; what dequantize uses off
  /// the CPU), kept for tests.
  at::Tensor dequantize_reference(at::ScalarType dtype) const;
};

/// A frozen linear layer whose weight is stored as NF4 (QLoRA's frozen base):
/// y = x W^T + b with W dequantized to the compute dtype on the fly, once in
/// forward and again in backward (a custom autograd function that saves only
/// the 4-bit storage, so no dense weight outlives a layer's matmul). Only the
/// input gets a gradient (and the bias, if it requires one). Buffers (saved
/// with the model): weight_packed, weight_absmax_q, weight_absmax2,
/// weight_offset; the bias keeps its parameter name "bias".
class Nf4Linear final : public LinearLike {
 public:
  /// `weight` [out, in] quantized (on a meta tensor: storage of the right
  /// sizes on meta, for planning); the compute dtype is the weight's.
  explicit Nf4Linear(const at::Tensor& weight, at::Tensor bias = {});
  at::Tensor forward_impl(const at::Tensor& x) override;
  /// The dequantized weight [out, in] in the compute dtype (a new tensor).
  at::Tensor effective_weight() const override;
  at::Tensor bias() const override { return bias_; }
  /// Throws: there is no dense weight (is_quantized()).
  at::Tensor& base_weight() override;
  bool is_quantized() const override { return true; }
  at::TensorOptions weight_options() override;
  /// Dequantizes, adds `delta` in float32 and quantizes again: lossy (the
  /// sum is rounded to NF4 afresh; a change smaller than half a code step
  /// of its block is lost).
  void add_to_weight(const at::Tensor& delta) override;

  /// A dtype conversion (torch::nn::Module::to, e.g. model->to(kBFloat16))
  /// changes the compute dtype and the bias only: the 4-bit storage keeps
  /// its uint8/float32 tensors (Module's default would cast them).
  /// A non-floating dtype throws c10::Error.
  void to(torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Device device, torch::Dtype dtype,
          bool non_blocking = false) override;
  using torch::nn::Module::to;  // to(device): moves everything as usual
  const Nf4Weight& weight() const { return w_; }
  at::ScalarType compute_dtype() const { return dtype_; }

 private:
  void register_storage();
  Nf4Weight w_;
  at::Tensor bias_;
  at::ScalarType dtype_;
};

/// Replaces every slot layer under `root` whose path `pick` accepts and that
/// is a plain nn::Linear by an Nf4Linear of its weight and bias (the dense
/// weight is released once no one else holds it); parameters of the new
/// layers are frozen. Returns the number replaced.
int64_t quantize_linears_nf4(
    torch::nn::Module& root,
    const std::function<bool(const std::string&)>& pick);

}  // namespace lowmem::nn
