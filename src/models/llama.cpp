#include "lowmem/models/llama.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

#include "lowmem/core/check.h"
#include "lowmem/core/input.h"

namespace lowmem::models {

namespace {

at::TensorOptions param_options(const LlamaConfig& c) {
  return at::TensorOptions().dtype(c.dtype()).device(c.device());
}

// The normalisation / rotary precision: fp32, or fp64 for fp64 inputs (so
// float64 gradient checks stay float64).
c10::ScalarType compute_type(c10::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// A module holding one "weight" parameter (HF's Embedding / bias-free Linear
// names), drawn N(0, std) directly in the target dtype and device.
class WeightOnly : public torch::nn::Module {
 public:
  WeightOnly(int64_t rows, int64_t cols, double std, const at::TensorOptions& o) {
    at::NoGradGuard no_grad;
    weight = register_parameter(
        "weight", at::empty({rows, cols}, o).normal_(0.0, std));
  }
  at::Tensor weight;
};

// A linear slot drawn N(0, std) directly in the target dtype and device (no
// fp32 transient and no Kaiming draw that would be overwritten); the bias, if
// any, zero (HF _init_weights).
std::shared_ptr<nn::Linear> make_linear(int64_t in, int64_t out,
                                        const LlamaConfig& c,
                                        bool bias = false) {
  at::NoGradGuard no_grad;
  const auto o = param_options(c);
  return std::make_shared<nn::Linear>(
      at::empty({out, in}, o).normal_(0.0, c.initializer_range()),
      bias ? at::zeros({out}, o) : at::Tensor());
}

// HF repeat_kv: [B, KV, T, D] -> [B, KV * rep, T, D], each K/V head serving
// `rep` consecutive query heads.
at::Tensor repeat_kv(const at::Tensor& x, int64_t rep) {
  if (rep == 1) return x;
  const int64_t B = x.size(0), KV = x.size(1), T = x.size(2), D = x.size(3);
  return x.unsqueeze(2).expand({B, KV, rep, T, D}).reshape({B, KV * rep, T, D});
}

// modeling_rope_utils._compute_llama3_parameters on inv_freq (same dtype).
at::Tensor llama3_inv_freq(const at::Tensor& inv_freq, const RopeScaling& s) {
  const double old_len =
      static_cast<double>(s.original_max_position_embeddings());
  const double low_wavelen = old_len / s.low_freq_factor();
  const double high_wavelen = old_len / s.high_freq_factor();
  at::Tensor wavelen = (2.0 * M_PI) / inv_freq;
  // wavelen > low_freq_wavelen: divide by factor; < high: keep.
  at::Tensor scaled =
      at::where(wavelen > low_wavelen, inv_freq / s.factor(), inv_freq);
  at::Tensor smooth = (old_len / wavelen - s.low_freq_factor()) /
                      (s.high_freq_factor() - s.low_freq_factor());
  at::Tensor smoothed = (1 - smooth) * scaled / s.factor() + smooth * scaled;
  at::Tensor medium =
      wavelen.ge(high_wavelen).logical_and(wavelen.le(low_wavelen));
  return at::where(medium, smoothed, scaled);
}

void validate_rope_scaling(const RopeScaling& s) {
  const auto& t = s.rope_type();
  LOWMEM_CHECK(t == "default" || t == "linear" || t == "llama3",
               "[llama] unsupported rope_scaling type ", quote(t),
               " (supported: default, linear, llama3)");
  if (t == "default") return;
  LOWMEM_CHECK(s.factor() > 0.0,
               "[llama] rope_scaling factor must be > 0, got ", s.factor());
  if (t != "llama3") return;
  LOWMEM_CHECK(
      s.low_freq_factor() > 0.0 && s.high_freq_factor() > s.low_freq_factor(),
      "[llama] llama3 rope_scaling needs 0 < low_freq_factor < "
      "high_freq_factor, got ",
      s.low_freq_factor(), " and ", s.high_freq_factor());
  LOWMEM_CHECK(
      s.original_max_position_embeddings() > 0,
      "[llama] llama3 rope_scaling original_max_position_embeddings must be "
      "> 0, got ",
      s.original_max_position_embeddings());
}

}  // namespace

int64_t resolved_head_dim(const LlamaConfig& c) {
  if (c.head_dim() > 0) return c.head_dim();
  return c.num_attention_heads() > 0 ? c.hidden_size() / c.num_attention_heads()
                                     : 0;
}

int64_t resolved_kv_heads(const LlamaConfig& c) {
  return c.num_key_value_heads() > 0 ? c.num_key_value_heads()
                                     : c.num_attention_heads();
}

namespace {

void validate_sizes(const LlamaConfig& c) {
  LOWMEM_CHECK(
      c.vocab_size() > 0, "[llama] vocab_size must be > 0, got ", c.vocab_size());
  LOWMEM_CHECK(
      c.hidden_size() > 0,
      "[llama] hidden_size must be > 0, got ",
      c.hidden_size());
  LOWMEM_CHECK(
      c.intermediate_size() > 0,
      "[llama] intermediate_size must be > 0, got ",
      c.intermediate_size());
  LOWMEM_CHECK(
      c.num_hidden_layers() > 0,
      "[llama] num_hidden_layers must be > 0, got ",
      c.num_hidden_layers());
  LOWMEM_CHECK(
      c.num_attention_heads() > 0,
      "[llama] num_attention_heads must be > 0, got ",
      c.num_attention_heads());
  LOWMEM_CHECK(
      c.num_key_value_heads() >= 0 && c.head_dim() >= 0 &&
          c.sliding_window() >= 0,
      "[llama] num_key_value_heads, head_dim and sliding_window must be >= 0 "
      "(0: unset), got ",
      c.num_key_value_heads(), ", ", c.head_dim(), ", ", c.sliding_window());
  LOWMEM_CHECK(
      c.head_dim() > 0 || c.hidden_size() % c.num_attention_heads() == 0,
      "[llama] hidden_size ", c.hidden_size(),
      " is not a multiple of num_attention_heads ", c.num_attention_heads());
  LOWMEM_CHECK(resolved_head_dim(c) % 2 == 0, "[llama] head dimension ",
               resolved_head_dim(c),
               " must be even (rotary embeddings rotate pairs)");
  LOWMEM_CHECK(c.num_attention_heads() % resolved_kv_heads(c) == 0,
               "[llama] num_attention_heads ", c.num_attention_heads(),
               " is not a multiple of num_key_value_heads ",
               resolved_kv_heads(c));
  LOWMEM_CHECK(
      c.max_position_embeddings() > 0,
      "[llama] max_position_embeddings must be > 0, got ",
      c.max_position_embeddings());
}

}  // namespace

void validate(const LlamaConfig& c) {
  validate_sizes(c);
  LOWMEM_CHECK(
      c.rms_norm_eps() > 0.0,
      "[llama] rms_norm_eps must be > 0, got ",
      c.rms_norm_eps());
  LOWMEM_CHECK(
      c.rope_theta() > 0.0, "[llama] rope_theta must be > 0, got ", c.rope_theta());
  validate_rope_scaling(c.rope_scaling());
  LOWMEM_CHECK(
      c.initializer_range() >= 0.0,
      "[llama] initializer_range must be >= 0, got ",
      c.initializer_range());
  LOWMEM_CHECK(
      at::isFloatingType(c.dtype()),
      "[llama] dtype must be floating point, got ",
      c.dtype());
}

LlamaConfig llama_preset(const std::string& name) {
  std::string n = name;
  if (n.rfind("llama_", 0) == 0)
    n = n.substr(6);
  // jiaweizzhao/GaLore configs/llama_<n>.json (commit 8460814): hidden_size,
  // intermediate_size, num_attention_heads, num_hidden_layers,
  // max_sequence_length; all: vocab_size 32000, rms_norm_eps 1e-06,
  // initializer_range 0.02.
  struct Row {
    const char* name;
    int64_t hidden, inter, heads, layers, max_len;
  };
  static const Row rows[] = {
      {"60m", 512, 1376, 8, 8, 1024},
      {"130m", 768, 2048, 12, 12, 1024},
      {"350m", 1024, 2736, 16, 24, 1024},
      {"1b", 2048, 5461, 32, 24, 1024},
      {"7b", 4096, 11008, 32, 32, 2048},
  };
  for (const auto& r : rows) {
    if (n == r.name) {
      return LlamaConfig()
          .vocab_size(32000)
          .hidden_size(r.hidden)
          .intermediate_size(r.inter)
          .num_attention_heads(r.heads)
          .num_hidden_layers(r.layers)
          .max_position_embeddings(r.max_len)
          .rms_norm_eps(1e-6)
          .initializer_range(0.02);
    }
  }
  LOWMEM_CHECK(
      false,
      "[llama] unknown preset '",
      name,
      "' (expected 60m, 130m, 350m, 1b or 7b)");
  return {};
}

std::vector<std::string> llama_preset_names() {
  return {"60m", "130m", "350m", "1b", "7b"};
}

RMSNorm::RMSNorm(int64_t n, double eps, const at::TensorOptions& options)
    : eps_(eps) {
  weight = register_parameter("weight", at::ones({n}, options));
}

at::Tensor RMSNorm::forward(const at::Tensor& x) {
  const auto in_type = x.scalar_type();
  at::Tensor h = x.to(compute_type(in_type));
  at::Tensor var = h.pow(2).mean(-1, /*keepdim=*/true);
  h = h * at::rsqrt(var + eps_);
  return weight * h.to(in_type);
}

at::Tensor rope_inv_freq(int64_t head_dim, double theta,
                         const RopeScaling& scaling, c10::ScalarType dtype,
                         c10::Device device) {
  auto o = at::TensorOptions().dtype(compute_type(dtype)).device(device);
  // inv_freq_i = theta^(-2i/d), i < d/2 (HF: 1 / base^(arange(0, d, 2)/d)).
  at::Tensor inv_freq =
      at::pow(theta, at::arange(0, head_dim, 2, o) / static_cast<double>(head_dim))
          .reciprocal();
  if (scaling.rope_type() == "linear") return inv_freq / scaling.factor();
  if (scaling.rope_type() == "llama3")
    return llama3_inv_freq(inv_freq, scaling);
  return inv_freq;
}

std::pair<at::Tensor, at::Tensor> rotary_tables(int64_t seq_len,
                                                int64_t head_dim, double theta,
                                                c10::ScalarType dtype,
                                                c10::Device device) {
  at::Tensor inv_freq = rope_inv_freq(head_dim, theta, {}, dtype, device);
  at::Tensor freqs =
      at::outer(at::arange(seq_len, inv_freq.options()), inv_freq);  // [T, d/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1);                      // [T, d]
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

std::pair<at::Tensor, at::Tensor> rotary_tables(const at::Tensor& positions,
                                                int64_t head_dim, double theta,
                                                const RopeScaling& scaling,
                                                c10::ScalarType dtype) {
  at::Tensor inv_freq =
      rope_inv_freq(head_dim, theta, scaling, dtype, positions.device());
  // HF: inv_freq[None, :, None] @ position_ids[:, None, :], a product.
  at::Tensor freqs = positions.to(inv_freq.scalar_type()).unsqueeze(-1) *
                     inv_freq;                                // [B, T, d/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1).unsqueeze(1);  // [B, 1, T, d]
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

at::Tensor apply_rotary(
    const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  at::Tensor x1 = x.narrow(-1, 0, half);
  at::Tensor x2 = x.narrow(-1, half, half);
  at::Tensor rotated = at::cat({-x2, x1}, -1);
  return x * cos + rotated * sin;
}

namespace {

void check_layout(const PackedLayout& layout, int64_t B, int64_t T) {
  const std::vector<int64_t> want = {B, T};
  LOWMEM_CHECK(layout.positions.defined(),
               "[llama] packed rows need positions as well as segments");
  for (const auto* t : {&layout.segments, &layout.positions}) {
    LOWMEM_CHECK(
        t->sizes() == c10::IntArrayRef(want) && t->scalar_type() == at::kLong,
        "[llama] packed layout tensors must be int64 [", B, ", ", T, "], got ",
        t->sizes(), " ", t->scalar_type());
  }
}

// 0 where `allowed`, -inf elsewhere, in the attention dtype.
at::Tensor additive_mask(const at::Tensor& allowed, c10::ScalarType dtype,
                         c10::Device device) {
  return at::zeros(allowed.sizes(),
                   at::TensorOptions().dtype(dtype).device(device))
      .masked_fill_(allowed.logical_not(),
                    -std::numeric_limits<double>::infinity());
}

// Rotary tables [T, D] at the 1-D `positions` with the config's scaling (HF
// multiplies inv_freq by the position ids whatever the scaling).
void rope_at(const LlamaConfig& c, const at::Tensor& positions,
             c10::ScalarType dtype, AttentionInputs& in) {
  std::tie(in.cos, in.sin) =
      rotary_tables(positions.unsqueeze(0), resolved_head_dim(c),
                    c.rope_theta(), c.rope_scaling(), dtype);
  in.cos = in.cos[0][0];
  in.sin = in.sin[0][0];
}

}  // namespace

AttentionInputs attention_inputs(const LlamaConfig& c, int64_t batch,
                                 int64_t seq_len, const PackedLayout& layout,
                                 c10::ScalarType dtype, c10::Device device) {
  const int64_t D = resolved_head_dim(c), T = seq_len;
  AttentionInputs in;
  auto io = at::TensorOptions().dtype(at::kLong).device(device);
  at::Tensor q = at::arange(T, io).unsqueeze(1), k = at::arange(T, io);
  at::Tensor allowed = k.le(q);  // [T, T] causal (masking_utils)
  if (c.sliding_window() > 0)    // sliding_window_overlay: kv > q - window
    allowed = allowed.logical_and(k.gt(q - c.sliding_window()));
  if (layout.packed()) {
    check_layout(layout, batch, T);
    const at::Tensor& seg = layout.segments;
    // Block-diagonal: only keys of the query's own segment ([B, 1, T, T]).
    allowed =
        allowed.logical_and(seg.unsqueeze(2).eq(seg.unsqueeze(1))).unsqueeze(1);
    std::tie(in.cos, in.sin) = rotary_tables(
        layout.positions, D, c.rope_theta(), c.rope_scaling(), dtype);
  } else if (c.rope_scaling().rope_type() == "default") {
    std::tie(in.cos, in.sin) =
        rotary_tables(T, D, c.rope_theta(), dtype, device);
  } else {
    rope_at(c, at::arange(T, io), dtype, in);
  }
  in.mask = additive_mask(allowed, dtype, device);
  return in;
}

AttentionInputs cached_attention_inputs(const LlamaConfig& c, int64_t start,
                                        int64_t seq_len, c10::ScalarType dtype,
                                        c10::Device device) {
  LOWMEM_CHECK(start >= 0 && seq_len > 0,
               "[llama] cached positions need start >= 0 and new tokens > 0, "
               "got start ",
               start, " and ", seq_len);
  auto io = at::TensorOptions().dtype(at::kLong).device(device);
  at::Tensor q = at::arange(start, start + seq_len, io);  // query positions
  at::Tensor k = at::arange(start + seq_len, io);         // key positions
  at::Tensor allowed = k.le(q.unsqueeze(1));              // [T, S] causal
  if (c.sliding_window() > 0)
    allowed = allowed.logical_and(k.gt(q.unsqueeze(1) - c.sliding_window()));
  AttentionInputs in;
  // The same tables as attention_inputs() at these positions: HF multiplies
  // inv_freq by the position ids whatever the scaling.
  rope_at(c, q, dtype, in);
  in.mask = additive_mask(allowed, dtype, device);
  return in;
}

int64_t LlamaKVCache::bytes() const {
  int64_t n = 0;
  for (const auto* v : {&keys, &values})
    for (const auto& t : *v)
      n += t.numel() * static_cast<int64_t>(t.element_size());
  return n;
}

LlamaAttention::LlamaAttention(const LlamaConfig& c)
    : config_(c),
      hidden_(c.hidden_size()),
      heads_(c.num_attention_heads()),
      kv_heads_(resolved_kv_heads(c)),
      head_dim_(resolved_head_dim(c)) {
  const int64_t C = hidden_, Q = heads_ * head_dim_, KV = kv_heads_ * head_dim_;
  const bool qkv_bias = c.attention_bias() || c.qkv_bias();
  register_slot("q_proj", make_linear(C, Q, c, qkv_bias));
  register_slot("k_proj", make_linear(C, KV, c, qkv_bias));
  register_slot("v_proj", make_linear(C, KV, c, qkv_bias));
  register_slot("o_proj", make_linear(Q, C, c, c.attention_bias()));
  if (c.qk_norm()) {
    const auto o = param_options(c);
    q_norm = register_module(
        "q_norm", std::make_shared<RMSNorm>(head_dim_, c.rms_norm_eps(), o));
    k_norm = register_module(
        "k_norm", std::make_shared<RMSNorm>(head_dim_, c.rms_norm_eps(), o));
  }
}

at::Tensor LlamaAttention::forward(const at::Tensor& x) {
  LOWMEM_CHECK(x.dim() == 3, "[llama] attention expected input [B, T, C], got ",
               x.sizes());
  return forward(x, attention_inputs(config_, x.size(0), x.size(1), {},
                                     x.scalar_type(), x.device()));
}

at::Tensor LlamaAttention::forward(const at::Tensor& x,
                                   const AttentionInputs& in) {
  LOWMEM_CHECK(
      x.dim() == 3 && x.size(2) == hidden_,
      "[llama] attention expected input [B, T, ",
      hidden_,
      "], got ",
      x.sizes());
  const int64_t B = x.size(0), T = x.size(1), H = heads_, D = head_dim_;
  auto heads = [&](const char* slot, int64_t n) {  // -> [B, T, n, D]
    return linear(slot).forward(x).view({B, T, n, D});
  };
  at::Tensor q = heads("q_proj", H), k = heads("k_proj", kv_heads_);
  if (q_norm) {  // Qwen3: per-head RMSNorm before the transpose and RoPE
    q = q_norm->forward(q);
    k = k_norm->forward(k);
  }
  q = apply_rotary(q.transpose(1, 2), in.cos, in.sin);  // [B, H, T, D]
  k = repeat_kv(apply_rotary(k.transpose(1, 2), in.cos, in.sin), H / kv_heads_);
  at::Tensor v =
      repeat_kv(heads("v_proj", kv_heads_).transpose(1, 2), H / kv_heads_);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  at::Tensor scores;
  if (in.mask.dim() == 2) {  // one [T, T] mask: fused into baddbmm
    scores = at::baddbmm(in.mask, q.reshape({B * H, T, D}),
                         k.reshape({B * H, T, D}).transpose(1, 2),
                         /*beta=*/1.0,
                         /*alpha=*/scale)
                 .view({B, H, T, T});
  } else {  // per-row masks [B, 1, T, T] (HF eager: matmul * scaling + mask)
    scores = at::matmul(q, k.transpose(2, 3)) * scale + in.mask;
  }
  // HF: softmax in fp32, then back to the activations' dtype.
  at::Tensor att = at::softmax(scores, -1, compute_type(scores.scalar_type()))
                       .to(q.scalar_type());
  at::Tensor y = at::matmul(att, v).transpose(1, 2).reshape({B, T, H * D});
  return linear("o_proj").forward(y);
}

at::Tensor LlamaAttention::forward(const at::Tensor& x,
                                   const AttentionInputs& in,
                                   const at::Tensor& key_cache,
                                   const at::Tensor& value_cache,
                                   int64_t start) {
  LOWMEM_CHECK(x.dim() == 3 && x.size(2) == hidden_,
               "[llama] attention expected input [B, T, ", hidden_, "], got ",
               x.sizes());
  const int64_t B = x.size(0), T = x.size(1), H = heads_, KV = kv_heads_,
                D = head_dim_, S = start + T, rep = H / KV;
  LOWMEM_CHECK(key_cache.dim() == 4 && key_cache.size(0) == B &&
                   key_cache.size(1) == KV && key_cache.size(3) == D &&
                   key_cache.size(2) >= S &&
                   value_cache.sizes() == key_cache.sizes(),
               "[llama] KV cache tensors ", key_cache.sizes(), " and ",
               value_cache.sizes(), " cannot hold ", B, " rows of ", KV,
               " heads of ", D, " at positions up to ", S);
  auto heads = [&](const char* slot, int64_t n) {  // -> [B, T, n, D]
    return linear(slot).forward(x).view({B, T, n, D});
  };
  at::Tensor q = heads("q_proj", H), k = heads("k_proj", KV);
  if (q_norm) {
    q = q_norm->forward(q);
    k = k_norm->forward(k);
  }
  q = apply_rotary(q.transpose(1, 2), in.cos, in.sin);  // [B, H, T, D]
  k = apply_rotary(k.transpose(1, 2), in.cos, in.sin);  // [B, KV, T, D]
  key_cache.narrow(2, start, T).copy_(k);
  value_cache.narrow(2, start, T).copy_(heads("v_proj", KV).transpose(1, 2));
  // The query heads sharing a K/V head (HF repeat_kv: heads kv*rep ..
  // kv*rep + rep - 1) stacked along T, so each K/V head is read in place:
  // [B*KV, rep*T, D] x [B*KV, D, S] (the cache views need no copy).
  at::Tensor keys = key_cache.narrow(2, 0, S).reshape({B * KV, S, D});
  at::Tensor values = value_cache.narrow(2, 0, S).reshape({B * KV, S, D});
  at::Tensor mask = rep == 1 ? in.mask : in.mask.repeat({rep, 1});
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  at::Tensor scores = at::baddbmm(mask, q.reshape({B * KV, rep * T, D}),
                                  keys.transpose(1, 2), /*beta=*/1.0,
                                  /*alpha=*/scale);
  at::Tensor att = at::softmax(scores, -1, compute_type(scores.scalar_type()))
                       .to(q.scalar_type());
  at::Tensor y = at::bmm(att, values)
                     .view({B, H, T, D})
                     .transpose(1, 2)
                     .reshape({B, T, H * D});
  return linear("o_proj").forward(y);
}

LlamaMLP::LlamaMLP(const LlamaConfig& c) {
  const int64_t C = c.hidden_size(), I = c.intermediate_size();
  register_slot("gate_proj", make_linear(C, I, c, c.mlp_bias()));
  register_slot("up_proj", make_linear(C, I, c, c.mlp_bias()));
  register_slot("down_proj", make_linear(I, C, c, c.mlp_bias()));
}

at::Tensor LlamaMLP::forward(const at::Tensor& x) {
  at::Tensor h = at::silu(linear("gate_proj").forward(x));
  h = h * linear("up_proj").forward(x);
  return linear("down_proj").forward(h);
}

LlamaDecoderLayer::LlamaDecoderLayer(const LlamaConfig& c) {
  const auto o = param_options(c);
  input_layernorm = register_module(
      "input_layernorm",
      std::make_shared<RMSNorm>(c.hidden_size(), c.rms_norm_eps(), o));
  self_attn = register_module("self_attn", std::make_shared<LlamaAttention>(c));
  post_attention_layernorm = register_module(
      "post_attention_layernorm",
      std::make_shared<RMSNorm>(c.hidden_size(), c.rms_norm_eps(), o));
  mlp = register_module("mlp", std::make_shared<LlamaMLP>(c));
}

at::Tensor LlamaDecoderLayer::forward(const at::Tensor& x) {
  at::Tensor h = x + self_attn->forward(input_layernorm->forward(x));
  return h + mlp->forward(post_attention_layernorm->forward(h));
}

at::Tensor LlamaDecoderLayer::forward_with(
    const at::Tensor& x, const std::vector<at::Tensor>& context) {
  LOWMEM_CHECK(context.size() == 3,
               "[llama] a decoder layer's context is {cos, sin, mask}, got ",
               context.size(), " tensors");
  const AttentionInputs in{context[0], context[1], context[2]};
  at::Tensor h = x + self_attn->forward(input_layernorm->forward(x), in);
  return h + mlp->forward(post_attention_layernorm->forward(h));
}

at::Tensor LlamaDecoderLayer::forward(const at::Tensor& x,
                                      const AttentionInputs& in,
                                      const at::Tensor& key_cache,
                                      const at::Tensor& value_cache,
                                      int64_t start) {
  at::Tensor h = x + self_attn->forward(input_layernorm->forward(x), in,
                                        key_cache, value_cache, start);
  return h + mlp->forward(post_attention_layernorm->forward(h));
}

Llama::Llama(LlamaConfig config, const LlamaLayerHook& on_layer)
    : config_(std::move(config)) {
  validate(config_);
  const auto& c = config_;
  const auto o = param_options(c);
  // HF LlamaForCausalLM: model.{embed_tokens, layers, norm}, lm_head.
  auto inner = register_module("model", std::make_shared<torch::nn::Module>());
  auto embed = std::make_shared<WeightOnly>(
      c.vocab_size(), c.hidden_size(), c.initializer_range(), o);
  inner->register_module("embed_tokens", embed);
  embed_tokens = embed->weight;
  torch::nn::ModuleList layers;
  for (int64_t i = 0; i < c.num_hidden_layers(); ++i) {
    auto l = std::make_shared<LlamaDecoderLayer>(c);
    if (on_layer) on_layer(i, *l);
    layers->push_back(l);
    layers_.push_back(l);
  }
  inner->register_module("layers", layers.ptr());
  norm = inner->register_module(
      "norm", std::make_shared<RMSNorm>(c.hidden_size(), c.rms_norm_eps(), o));
  if (c.tie_word_embeddings()) {  // one tensor, listed once (as embed_tokens)
    lm_head = embed_tokens;
    return;
  }
  auto head = register_module(
      "lm_head",
      std::make_shared<WeightOnly>(
          c.vocab_size(), c.hidden_size(), c.initializer_range(), o));
  lm_head = head->weight;
}

at::Tensor Llama::forward(const at::Tensor& idx) {
  return forward(idx, PackedLayout{});
}

at::Tensor Llama::forward(const at::Tensor& idx, const PackedLayout& layout) {
  LOWMEM_CHECK(
      idx.dim() == 2 && idx.scalar_type() == at::kLong,
      "[llama] expected int64 tokens [B, T], got ",
      idx.sizes(),
      " ",
      idx.scalar_type());
  LOWMEM_CHECK(
      idx.size(1) <= config_.max_position_embeddings(),
      "[llama] sequence length ",
      idx.size(1),
      " exceeds max_position_embeddings ",
      config_.max_position_embeddings());
  at::Tensor x = at::embedding(embed_tokens, idx);
  const AttentionInputs in = attention_inputs(
      config_, idx.size(0), idx.size(1), layout, x.scalar_type(), x.device());
  const std::vector<at::Tensor> context = {in.cos, in.sin, in.mask};
  for (auto& l : layers_)
    x = run_block(*l, x, config_.activation_checkpointing(), context);
  return at::linear(norm->forward(x), lm_head);
}

LlamaKVCache Llama::make_cache(int64_t batch, int64_t max_length) const {
  LOWMEM_CHECK(batch > 0 && max_length > 0 &&
                   max_length <= config_.max_position_embeddings(),
               "[llama] a KV cache needs batch > 0 and 0 < max_length <= "
               "max_position_embeddings ",
               config_.max_position_embeddings(), ", got batch ", batch,
               " and max_length ", max_length);
  const auto o = embed_tokens.options();
  const int64_t KV = resolved_kv_heads(config_), D = resolved_head_dim(config_);
  LlamaKVCache cache;
  for (size_t i = 0; i < layers_.size(); ++i) {
    cache.keys.push_back(at::zeros({batch, KV, max_length, D}, o));
    cache.values.push_back(at::zeros({batch, KV, max_length, D}, o));
  }
  return cache;
}

at::Tensor Llama::forward(const at::Tensor& idx, LlamaKVCache& cache) {
  LOWMEM_CHECK(
      idx.dim() == 2 && idx.scalar_type() == at::kLong && idx.size(1) > 0,
      "[llama] expected int64 tokens [B, T] with T > 0, got ", idx.sizes(), " ",
      idx.scalar_type());
  LOWMEM_CHECK(cache.keys.size() == layers_.size() &&
                   cache.values.size() == layers_.size(),
               "[llama] the KV cache has ", cache.keys.size(),
               " layers, the model ", layers_.size(),
               " (build it with make_cache)");
  LOWMEM_CHECK(idx.size(0) == cache.batch(), "[llama] the KV cache holds ",
               cache.batch(), " rows, the input has ", idx.size(0));
  const int64_t start = cache.length, T = idx.size(1);
  LOWMEM_CHECK(start + T <= cache.max_length(), "[llama] the KV cache holds ",
               cache.max_length(), " positions; ", start, " are filled and ", T,
               " more do not fit");
  at::Tensor x = at::embedding(embed_tokens, idx);
  const AttentionInputs in =
      cached_attention_inputs(config_, start, T, x.scalar_type(), x.device());
  for (size_t i = 0; i < layers_.size(); ++i)
    x = layers_[i]->forward(x, in, cache.keys[i], cache.values[i], start);
  cache.length = start + T;
  return at::linear(norm->forward(x), lm_head);
}

at::Tensor Llama::loss(const at::Tensor& idx, const at::Tensor& target) {
  return loss(idx, target, PackedLayout{});
}

at::Tensor Llama::loss(const at::Tensor& idx, const at::Tensor& target,
                       const PackedLayout& layout) {
  LOWMEM_CHECK(
      target.sizes() == idx.sizes(),
      "[llama] target shape ",
      target.sizes(),
      " != input shape ",
      idx.sizes());
  at::Tensor logits = loss_precision(forward(idx, layout));
  return at::cross_entropy_loss(logits.view({-1, logits.size(-1)}),
                                target.reshape(-1), {}, at::Reduction::Mean,
                                kIgnoreIndex);
}

EvalStats Llama::evaluate(const at::Tensor& idx, const at::Tensor& target) {
  return evaluate(idx, target, PackedLayout{});
}

EvalStats Llama::evaluate(const at::Tensor& idx, const at::Tensor& target,
                          const PackedLayout& layout) {
  at::NoGradGuard no_grad;
  return cross_entropy_stats(forward(idx, layout), target);
}

int64_t Llama::matrix_parameters() {
  return count_slot_weights(*this) + lm_head.numel();
}

double Llama::flops_per_token(int64_t seq_len) {
  const int64_t HD = config_.num_attention_heads() * resolved_head_dim(config_);
  return 6.0 * static_cast<double>(matrix_parameters()) +
         12.0 * static_cast<double>(config_.num_hidden_layers() * HD * seq_len);
}

int64_t llama_parameter_count(const LlamaConfig& c) {
  const int64_t V = c.vocab_size(), C = c.hidden_size(),
                I = c.intermediate_size(), L = c.num_hidden_layers(),
                D = resolved_head_dim(c), Q = c.num_attention_heads() * D,
                KV = resolved_kv_heads(c) * D;
  int64_t layer = 2 * C * Q + 2 * C * KV + 3 * C * I + 2 * C;
  if (c.attention_bias() || c.qkv_bias()) layer += Q + 2 * KV;
  if (c.attention_bias()) layer += C;
  if (c.mlp_bias()) layer += 2 * I + C;
  if (c.qk_norm()) layer += 2 * D;
  return (c.tie_word_embeddings() ? 1 : 2) * V * C + L * layer + C;
}

namespace {

// What RMSNorm::forward keeps for backward on `rows` x `n` inputs of element
// size e (compute size f): pow saves x in fp32, mean saves x^2, the weight's
// mul the normalised x in x's dtype, rsqrt its [rows, 1] result; `output_kept`
// when the next op saves the output (a matmul does, a rotary mul does not).
// Without casts (e == f) the fp32 x is x itself, and so is the normalised x
// before its no-op cast.
int64_t norm_saved(int64_t rows, int64_t n, int64_t e, int64_t f,
                   bool output_kept) {
  const int64_t out = output_kept ? rows * n * e : 0;
  if (e == f) return 3 * rows * n * f + rows * f + out;
  return 2 * rows * n * f + rows * n * e + rows * f + out;
}

}  // namespace

LlamaActivationBytes llama_activation_bytes(const LlamaConfig& c, int64_t batch,
                                            int64_t seq) {
  validate(c);
  LOWMEM_CHECK(batch > 0 && seq > 0, "[llama] batch and seq must be > 0, got ",
               batch, " and ", seq);
  const int64_t e = static_cast<int64_t>(c10::elementSize(c.dtype()));
  // compute_type(): normalisation and softmax run in fp32 (fp64 for fp64).
  const int64_t f = c.dtype() == at::kDouble ? 8 : 4;
  const bool same = e == f;  // then every .to(compute type) is a no-op
  const int64_t N = batch * seq, C = c.hidden_size(), I = c.intermediate_size(),
                H = c.num_attention_heads(), KV = resolved_kv_heads(c),
                D = resolved_head_dim(c), V = c.vocab_size();
  const int64_t scores = batch * H * seq * seq;
  // Attention: rotated q, and k and v repeated to H heads (baddbmm, matmul),
  // the merged heads (o_proj's input): 4 N H D; softmax's fp32 output and
  // (if cast) the probabilities matmul multiplies. x * cos saves cos only, so
  // the projections' raw outputs are not kept. Qwen3's q/k norms keep their
  // inputs but not their outputs (the rotary mul does not need them).
  int64_t attention = 4 * N * H * D * e + scores * (same ? f : f + e);
  if (c.qk_norm()) {
    attention +=
        norm_saved(N * H, D, e, f, false) + norm_saved(N * KV, D, e, f, false);
  }
  // SwiGLU: gate output (silu), silu output and up output (mul), their
  // product (down_proj's input).
  const int64_t mlp = 4 * N * I * e;
  LlamaActivationBytes a;
  // The layer's input is the first norm's x (kept when e == f; its fp32 copy
  // otherwise); the second norm's input is the residual sum.
  a.layer = 2 * norm_saved(N, C, e, f, true) + attention + mlp;
  // run_block saves x and, on the CPU, the generator's state for the re-run
  // (CPUGeneratorImpl::get_state: a 5056-byte tensor in LibTorch 1.13).
  a.checkpoint = N * C * e + (c.device().is_cpu() ? 5056 : 0);
  a.layer_backward = std::max(3 * N * I * e + 2 * N * C * f,
                              scores * (2 * f + e) + 3 * N * H * D * e);
  // Once per forward: cos and sin [T, D] (saved by every layer's rotary
  // mul); under checkpointing also the [T, T] mask, which run_block keeps as
  // the layers' context. Then the final norm and cross_entropy's fp32
  // log-probabilities [N, V].
  a.head = 2 * seq * D * e +
           (c.activation_checkpointing() ? seq * seq * e : 0) +
           norm_saved(N, C, e, f, true) + N * V * f;
  a.head_forward = N * V * f;
  a.head_backward = 2 * N * V * f;
  a.log_probs = N * V * f;
  a.logits_grad = N * V * e;
  return a;
}

}  // namespace lowmem::models
