#include "lowmem/nn/nf4.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <utility>

#include "lowmem/core/check.h"
#include "lowmem/core/profile.h"
#include "lowmem/core/quant_maps.h"
#include "lowmem/nn/slot_module.h"

namespace lowmem::nn {
namespace {

constexpr int64_t kB = kNf4BlockSize;
constexpr int64_t kB2 = kNf4ScaleBlockSize;
// Elements per chunk of a chunked quantization (whole blocks, even).
constexpr int64_t kChunk = int64_t{1} << 20;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The default backend's quantize_blockwise / quantize_4bit on a float32 1-D
// tensor, op for op: int32 code indices [n] and the block absmax values.
std::pair<at::Tensor, at::Tensor> quantize_flat(const at::Tensor& flat,
                                                const at::Tensor& bounds,
                                                int64_t bs) {
  const int64_t n = flat.numel(), rem = n % bs, full = n - rem;
  const int64_t blocks = full / bs;
  at::Tensor com = flat.narrow(0, 0, full).view({blocks, bs});
  at::Tensor absmax = std::get<0>(com.abs().max(-1));
  // 1.0 / t is t.reciprocal() * 1.0 in torch; the product by 1.0 is exact.
  at::Tensor scaled =
      at::clamp(com * absmax.clamp_min(1e-38).reciprocal().view({-1, 1}), -1, 1)
          .reshape(-1);
  if (rem) {
    const at::Tensor tail = flat.narrow(0, full, rem);
    const at::Tensor am = tail.abs().max().clamp_min(1e-38);
    absmax = at::cat({absmax, am.unsqueeze(0)});
    scaled = at::cat({scaled, at::clamp(tail / am, -1, 1)});
  }
  return {at::bucketize(scaled, bounds, /*out_int32=*/true), absmax};
}

// The default backend's dequantize_blockwise: code[q] * absmax per block.
at::Tensor dequantize_flat(const at::Tensor& q, const at::Tensor& absmax,
                           const at::Tensor& code, int64_t bs) {
  const int64_t n = q.numel(), rem = n % bs, full = n - rem;
  const int64_t blocks = full / bs;
  at::Tensor out = code.index_select(0, q.reshape(-1).to(at::kLong));
  if (rem == 0) {
    return (out.view({-1, bs}) * absmax.view({-1, 1})).reshape(n);
  }
  return at::cat({(out.narrow(0, 0, full).view({blocks, bs}) *
                   absmax.narrow(0, 0, blocks).view({-1, 1}))
                      .reshape(full),
                  out.narrow(0, full, rem) * absmax[blocks]});
}

// Packs int32 indices [len] (< 16) two per byte, the even one high; an odd
// count is padded with the index of 0.0 (bucketize of the padded 0).
at::Tensor pack_nibbles(const at::Tensor& idx, int64_t zero_index) {
  at::Tensor q = idx.to(at::kByte);
  if (q.numel() % 2) {
    q = at::cat({q, at::full({1}, zero_index, q.options())});
  }
  const at::Tensor pairs = q.view({-1, 2});
  return pairs.select(1, 0).mul(16).add_(pairs.select(1, 1));
}

template <class T>
void dequantize_cpu(const uint8_t* packed, const float* absmax,
                    const float* code, T* out, int64_t n) {
  const int64_t blocks = ceil_div(n, kB);
  at::parallel_for(0, blocks, 64, [&](int64_t b0, int64_t b1) {
    T table[16];
    for (int64_t b = b0; b < b1; ++b) {
      const float s = absmax[b];
      // code[index] * absmax in float32, then the cast (bitsandbytes' order).
      for (int k = 0; k < 16; ++k) table[k] = static_cast<T>(code[k] * s);
      const int64_t lo = b * kB, hi = std::min(n, lo + kB);
      for (int64_t i = lo; i < hi; i += 2) {
        const uint8_t byte = packed[i / 2];
        out[i] = table[byte >> 4];
        if (i + 1 < hi) out[i + 1] = table[byte & 15];
      }
    }
  });
}

}  // namespace

int64_t Nf4Weight::numel() const {
  int64_t n = 1;
  for (auto s : shape) n *= s;
  return n;
}

int64_t Nf4Weight::bytes_for(int64_t numel) {
  const int64_t blocks = ceil_div(numel, kB);
  return ceil_div(numel, 2) + blocks + 4 * ceil_div(blocks, kB2) + 4;
}

int64_t Nf4Weight::nbytes() const {
  if (!defined()) return 0;
  int64_t n = 0;
  for (const auto* t : {&packed, &absmax_q, &absmax2, &offset})
    n += t->numel() * static_cast<int64_t>(t->element_size());
  return n;
}

Nf4Weight Nf4Weight::empty(at::IntArrayRef shape, c10::Device device) {
  Nf4Weight w;
  w.shape = shape.vec();
  const int64_t n = w.numel(), blocks = ceil_div(n, kB);
  const auto u8 = at::TensorOptions(at::kByte).device(device);
  const auto f32 = at::TensorOptions(at::kFloat).device(device);
  w.packed = at::empty({ceil_div(n, 2)}, u8);
  w.absmax_q = at::empty({blocks}, u8);
  w.absmax2 = at::empty({ceil_div(blocks, kB2)}, f32);
  w.offset = at::empty({1}, f32);
  return w;
}

Nf4Weight Nf4Weight::quantize(const at::Tensor& x) {
  LOWMEM_CHECK(
      x.defined() && at::isFloatingType(x.scalar_type()) && x.numel() > 0,
      "[nf4] quantize needs a non-empty floating tensor, got ",
      x.defined() ? x.scalar_type() : at::ScalarType::Undefined);
  Nf4Weight w = empty(x.sizes(), x.device());
  const int64_t n = x.numel();
  const at::Tensor flat = x.reshape(-1);
  const at::Tensor bounds = code_midpoints(nf4_code()).to(x.device());
  const int64_t zero = 7;  // nf4_code()[7] == 0
  at::Tensor absmax = at::empty({ceil_div(n, kB)}, w.absmax2.options());
  for (int64_t lo = 0; lo < n; lo += kChunk) {
    const int64_t len = std::min(kChunk, n - lo);
    auto [idx, am] =
        quantize_flat(flat.narrow(0, lo, len).to(at::kFloat), bounds, kB);
    w.packed.narrow(0, lo / 2, ceil_div(len, 2)).copy_(pack_nibbles(idx, zero));
    absmax.narrow(0, lo / kB, am.numel()).copy_(am);
  }
  // compress_statistics: 8-bit blockwise of absmax - mean(absmax).
  const at::Tensor offset = absmax.mean();
  auto [q2, am2] = quantize_flat(
      absmax - offset, code_midpoints(dynamic_map(true)).to(x.device()), kB2);
  w.absmax_q.copy_(q2);
  w.absmax2.copy_(am2);
  w.offset.copy_(offset.reshape({1}));
  return w;
}

at::Tensor Nf4Weight::absmax() const {
  LOWMEM_CHECK(defined(), "[nf4] absmax of an undefined weight");
  at::Tensor a = dequantize_flat(absmax_q, absmax2,
                                 dynamic_map(true).to(absmax_q.device()), kB2);
  a.add_(offset);  // absmax += offset (float32)
  return a;
}

at::Tensor Nf4Weight::dequantize_reference(at::ScalarType dtype) const {
  profile::Scope scope(profile::Phase::kDequantize);
  LOWMEM_CHECK(defined(), "[nf4] dequantize of an undefined weight");
  const int64_t n = numel();
  at::Tensor dq =
      at::empty({packed.numel() * 2}, packed.options().dtype(at::kInt));
  dq.slice(0, 1, c10::nullopt, 2).copy_(packed.bitwise_and(15));
  dq.slice(0, 0, c10::nullopt, 2).copy_(packed.__rshift__(4));
  at::Tensor vals = dequantize_flat(dq.narrow(0, 0, n), absmax(),
                                    nf4_code().to(packed.device()), kB);
  return vals.reshape(shape).to(dtype);
}

at::Tensor Nf4Weight::dequantize(at::ScalarType dtype) const {
  LOWMEM_CHECK(defined(), "[nf4] dequantize of an undefined weight");
  LOWMEM_CHECK(at::isFloatingType(dtype), "[nf4] dequantize needs a floating ",
               "dtype, got ", dtype);
  if (!packed.device().is_cpu()) return dequantize_reference(dtype);
  profile::Scope scope(profile::Phase::kDequantize);
  const at::Tensor am = absmax().contiguous();
  const at::Tensor p = packed.contiguous();
  at::Tensor out = at::empty(shape, packed.options().dtype(dtype));
  const float* code = nf4_code().data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, dtype, "nf4_dequantize", [&] {
        dequantize_cpu<scalar_t>(p.data_ptr<uint8_t>(), am.data_ptr<float>(),
                                 code, out.data_ptr<scalar_t>(), numel());
      });
  return out;
}

// ---------------------------------------------------------------------------

namespace {

// y = x W^T with W = dequantize(storage) made in forward and again in
// backward; only the 4-bit storage is saved.
struct Nf4Matmul : public torch::autograd::Function<Nf4Matmul> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx,
                            const at::Tensor& x, const at::Tensor& packed,
                            const at::Tensor& absmax_q,
                            const at::Tensor& absmax2, const at::Tensor& offset,
                            int64_t out_features, int64_t in_features,
                            int64_t dtype) {
    ctx->save_for_backward({packed, absmax_q, absmax2, offset});
    ctx->saved_data["out"] = out_features;
    ctx->saved_data["in"] = in_features;
    ctx->saved_data["dtype"] = dtype;
    const Nf4Weight w{
        packed, absmax_q, absmax2, offset, {out_features, in_features}};
    return at::linear(x, w.dequantize(static_cast<at::ScalarType>(dtype)));
  }

  static torch::autograd::variable_list backward(
      torch::autograd::AutogradContext* ctx,
      torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Nf4Weight w{
        saved[0],
        saved[1],
        saved[2],
        saved[3],
        {ctx->saved_data["out"].toInt(), ctx->saved_data["in"].toInt()}};
    const at::Tensor& g = grads[0];  // [..., out]
    const auto dtype =
        static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt());
    at::Tensor gx = at::matmul(g, w.dequantize(dtype));  // [..., in]
    return {gx, {}, {}, {}, {}, {}, {}, {}};
  }
};

}  // namespace

Nf4Linear::Nf4Linear(const at::Tensor& weight, at::Tensor bias)
    : LinearLike(weight.defined() && weight.dim() == 2 ? weight.size(1) : 0,
                 weight.defined() && weight.dim() == 2 ? weight.size(0) : 0),
      bias_(std::move(bias)),
      dtype_(weight.defined() ? weight.scalar_type() : at::kFloat) {
  LOWMEM_CHECK(weight.defined() && weight.dim() == 2 && weight.numel() > 0 &&
                   at::isFloatingType(weight.scalar_type()),
               "[nf4] a linear weight must be a non-empty floating [out, in] "
               "matrix, got ",
               weight.defined() ? weight.sizes() : c10::IntArrayRef{});
  at::NoGradGuard g;
  w_ = weight.is_meta() ? Nf4Weight::empty(weight.sizes(), weight.device())
                        : Nf4Weight::quantize(weight.detach());
  register_storage();
  if (bias_.defined()) {
    bias_ = register_parameter("bias", bias_, /*requires_grad=*/false);
  }
}

void Nf4Linear::register_storage() {
  // register_buffer keeps these tensors (same TensorImpl): loading a
  // checkpoint copies into them and to(device) swaps their data in place.
  w_.packed = register_buffer("weight_packed", w_.packed);
  w_.absmax_q = register_buffer("weight_absmax_q", w_.absmax_q);
  w_.absmax2 = register_buffer("weight_absmax2", w_.absmax2);
  w_.offset = register_buffer("weight_offset", w_.offset);
}

void Nf4Linear::to(torch::Dtype dtype, bool non_blocking) {
  LOWMEM_CHECK(at::isFloatingType(dtype),
               "[nf4] an NF4 layer computes in a floating dtype, got ", dtype);
  dtype_ = dtype;
  if (bias_.defined()) {
    bias_.set_data(bias_.to(dtype, non_blocking));
  }
}

void Nf4Linear::to(torch::Device device, torch::Dtype dtype,
                   bool non_blocking) {
  torch::nn::Module::to(device, non_blocking);
  to(dtype, non_blocking);
}

at::Tensor Nf4Linear::forward_impl(const at::Tensor& x) {
  at::Tensor y = Nf4Matmul::apply(x.to(dtype_), w_.packed, w_.absmax_q,
                                  w_.absmax2, w_.offset, out_features(),
                                  in_features(), static_cast<int64_t>(dtype_));
  // The bias outside the function (autograd gives it a gradient if it wants
  // one), in place: no second output-sized buffer.
  return bias_.defined() ? y.add_(bias_) : y;
}

at::Tensor Nf4Linear::effective_weight() const { return w_.dequantize(dtype_); }

at::Tensor& Nf4Linear::base_weight() {
  LOWMEM_CHECK(false, "[nf4] this layer's weight is stored as NF4 (4-bit): ",
               "there is no dense weight to read or update; train it through ",
               "an adapter, or load the base in bf16/fp32 to change it");
  return bias_;  // not reached
}

at::TensorOptions Nf4Linear::weight_options() {
  return at::TensorOptions().dtype(dtype_).device(w_.packed.device());
}

void Nf4Linear::add_to_weight(const at::Tensor& delta) {
  at::NoGradGuard g;
  LOWMEM_CHECK(delta.sizes() == at::IntArrayRef(w_.shape), "[nf4] delta of ",
               "shape ", delta.sizes(), " for a weight of shape ",
               at::IntArrayRef(w_.shape));
  const Nf4Weight q = Nf4Weight::quantize(
      w_.dequantize(at::kFloat).add_(delta.to(w_.packed.device(), at::kFloat)));
  w_.packed.copy_(q.packed);
  w_.absmax_q.copy_(q.absmax_q);
  w_.absmax2.copy_(q.absmax2);
  w_.offset.copy_(q.offset);
}

int64_t quantize_linears_nf4(
    torch::nn::Module& root,
    const std::function<bool(const std::string&)>& pick) {
  int64_t n = 0;
  for (const auto& ref : find_slots(root)) {
    auto layer = std::dynamic_pointer_cast<Linear>(ref.layer());
    if (!layer || !pick(ref.path)) continue;
    auto q = std::make_shared<Nf4Linear>(layer->base_weight(), layer->bias());
    layer.reset();
    ref.replace(std::move(q));
    ++n;
  }
  return n;
}

}  // namespace lowmem::nn
