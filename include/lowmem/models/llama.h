// Llama: the LLaMA decoder (Touvron et al. 2023, arXiv 2302.13971) as Hugging
// Face transformers computes it in LlamaForCausalLM, and with the options of
// MistralForCausalLM, Qwen2ForCausalLM and Qwen3ForCausalLM (transformers'
// models/{llama,mistral,qwen2,qwen3}/modeling_*.py, modeling_rope_utils.py and
// masking_utils.py, read on its main branch in 2025): RMSNorm (in fp32), rotary
// position embeddings (rotate_half convention; default, "linear" and "llama3"
// scaling), grouped-query attention (repeat_kv), an optional head_dim other
// than hidden/heads, optional q/k/v(/o) biases, Qwen3's per-head q_norm/k_norm,
// Mistral's sliding window, SwiGLU MLP, tied or untied lm_head. GaLore (arXiv
// 2403.03507) pretrains the default (untied, no biases). Parameter names are
// HF's (model.embed_tokens, model.layers.<i>.self_attn.q_proj, ...,
// model.norm, lm_head). Deviations: masked scores are -inf (HF: the dtype's
// minimum; equal after softmax since no row is fully masked), rotary tables
// are computed per forward in the compute precision (fp64 for fp64 models,
// where HF stays fp32), no padding mask (packed rows instead). The KV cache
// (LlamaKVCache) is preallocated to a maximum length, like HF's StaticCache
// (cache_utils.py), rather than grown per step as its DynamicCache; grouped
// query heads read their shared K/V head in place (no repeat_kv copy).
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <torch/arg.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "lowmem/models/layers.h"

namespace lowmem::models {

/// HF's rope_scaling (modeling_rope_utils.py ROPE_INIT_FUNCTIONS): rope_type
/// "default" (none), "linear" (inv_freq / factor) or "llama3"
/// (_compute_llama3_parameters: low frequencies / factor, high ones kept,
/// smooth interpolation between). Other types are rejected by validate().
struct RopeScaling {
  TORCH_ARG(std::string, rope_type) = "default";
  TORCH_ARG(double, factor) = 1.0;
  /// llama3 only (Llama 3.1's config.json: 1, 4, 8192).
  TORCH_ARG(double, low_freq_factor) = 1.0;
  TORCH_ARG(double, high_freq_factor) = 4.0;
  TORCH_ARG(int64_t, original_max_position_embeddings) = 8192;
};

/// HF LlamaConfig field names. Defaults: a small byte-level model (vocab 256)
/// that trains on two cores; llama_preset() gives GaLore's sizes.
struct LlamaConfig {
  TORCH_ARG(int64_t, vocab_size) = 256;
  TORCH_ARG(int64_t, hidden_size) = 128;
  /// SwiGLU width (gate_proj / up_proj out, down_proj in).
  TORCH_ARG(int64_t, intermediate_size) = 344;
  TORCH_ARG(int64_t, num_hidden_layers) = 4;
  TORCH_ARG(int64_t, num_attention_heads) = 4;
  /// Longest sequence accepted (RoPE itself has no table to outgrow).
  TORCH_ARG(int64_t, max_position_embeddings) = 1024;
  /// GaLore configs/llama_*.json: 1e-06.
  TORCH_ARG(double, rms_norm_eps) = 1e-6;
  /// HF LlamaRotaryEmbedding base (10000).
  TORCH_ARG(double, rope_theta) = 10000.0;
  TORCH_ARG(RopeScaling, rope_scaling) = {};
  /// Grouped-query attention: key/value heads, a divisor of
  /// num_attention_heads (0: num_attention_heads, HF's default when unset).
  TORCH_ARG(int64_t, num_key_value_heads) = 0;
  /// Width of one head (0: hidden_size / num_attention_heads, HF's default;
  /// Qwen3 and Mistral-Nemo set it explicitly).
  TORCH_ARG(int64_t, head_dim) = 0;
  /// LlamaConfig.attention_bias / Qwen3Config.attention_bias: biases on
  /// q_proj, k_proj, v_proj and o_proj.
  TORCH_ARG(bool, attention_bias) = false;
  /// Qwen2: biases on q_proj, k_proj and v_proj only (o_proj has none).
  TORCH_ARG(bool, qkv_bias) = false;
  /// LlamaConfig.mlp_bias: biases on gate_proj, up_proj and down_proj.
  TORCH_ARG(bool, mlp_bias) = false;
  /// Qwen3: RMSNorm over head_dim on each head of q and k, before RoPE
  /// (self_attn.q_norm / self_attn.k_norm, weight [head_dim]).
  TORCH_ARG(bool, qk_norm) = false;
  /// lm_head shares model.embed_tokens.weight (no "lm_head.weight" parameter).
  TORCH_ARG(bool, tie_word_embeddings) = false;
  /// Mistral: a token attends to itself and the sliding_window - 1 tokens
  /// before it (masking_utils sliding_window_overlay: kv > q - window); 0: no
  /// window.
  TORCH_ARG(int64_t, sliding_window) = 0;
  /// HF _init_weights: N(0, initializer_range) for linears and embeddings
  /// (GaLore configs: 0.02), RMSNorm weights 1.
  TORCH_ARG(double, initializer_range) = 0.02;
  /// Recompute each decoder layer in backward instead of storing it.
  TORCH_ARG(bool, activation_checkpointing) = false;
  /// Parameters are created (and initialised tensor by tensor) in this dtype
  /// and on this device: a 7B model in bf16 never exists in fp32.
  TORCH_ARG(c10::ScalarType, dtype) = c10::kFloat;
  TORCH_ARG(c10::Device, device) = c10::Device(c10::kCPU);
};

/// head_dim, or hidden_size / num_attention_heads when it is 0.
int64_t resolved_head_dim(const LlamaConfig& c);
/// num_key_value_heads, or num_attention_heads when it is 0.
int64_t resolved_kv_heads(const LlamaConfig& c);

/// Throws "[llama] ..." on non-positive sizes, hidden_size % heads != 0 (when
/// head_dim is derived), an odd head dimension (RoPE rotates pairs), heads not
/// a multiple of num_key_value_heads, an unknown rope_type or bad factors.
void validate(const LlamaConfig& c);

/// GaLore's model sizes (jiaweizzhao/GaLore configs/llama_<name>.json:
/// hidden_size, intermediate_size, num_attention_heads, num_hidden_layers,
/// vocab 32000, rms_norm_eps 1e-6, max_position_embeddings from their
/// max_sequence_length). name: 60m, 130m, 350m, 1b or 7b (a "llama_" prefix is
/// accepted). Throws "[llama] unknown preset ..." otherwise.
LlamaConfig llama_preset(const std::string& name);
/// The names llama_preset() accepts, smallest first.
std::vector<std::string> llama_preset_names();

/// y = weight * (x / sqrt(mean(x^2) + eps)), normalised in fp32 (fp64 stays
/// fp64) and cast back to x's dtype before the weight (HF LlamaRMSNorm).
class RMSNorm : public torch::nn::Module {
 public:
  RMSNorm(int64_t n, double eps, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);
  at::Tensor weight;  // [n], ones

 private:
  double eps_;
};

/// Inverse frequencies [head_dim / 2] of HF's rotary embedding: theta^(-2i/d)
/// for i < d/2, then `scaling` applied; in fp32 (fp64 for fp64 `dtype`).
at::Tensor rope_inv_freq(int64_t head_dim, double theta,
                         const RopeScaling& scaling, c10::ScalarType dtype,
                         c10::Device device);
/// cos and sin tables [T, head_dim] of HF's rotary embedding (frequencies
/// theta^(-2i/d) for i < d/2, repeated twice), computed in fp32 (fp64 for
/// fp64) and returned in `dtype`.
std::pair<at::Tensor, at::Tensor> rotary_tables(
    int64_t seq_len,
    int64_t head_dim,
    double theta,
    c10::ScalarType dtype,
    c10::Device device);
/// The same at given positions [B, T] (int64), with `scaling`: tables
/// [B, 1, T, head_dim] that broadcast over heads.
std::pair<at::Tensor, at::Tensor> rotary_tables(const at::Tensor& positions,
                                                int64_t head_dim, double theta,
                                                const RopeScaling& scaling,
                                                c10::ScalarType dtype);
/// x * cos + rotate_half(x) * sin with rotate_half(x) = cat(-x2, x1) over the
/// last dim (x [..., T, head_dim]; cos, sin [T, head_dim]).
at::Tensor apply_rotary(
    const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

/// What one forward shares across its decoder layers: rotary cos and sin
/// ([T, D], or [B, 1, T, D] at packed positions) and the additive attention
/// mask (0 where allowed, -inf elsewhere; [T, T], or [B, 1, T, T] for packed
/// rows). None of them takes a gradient.
struct AttentionInputs {
  at::Tensor cos, sin, mask;
};

/// The inputs for a batch of `batch` rows of `seq_len` tokens: causal, within
/// c.sliding_window() when set, within each segment of a packed `layout`
/// (block-diagonal), rotary positions 0..T-1 or layout.positions. Tables in
/// `dtype`.
AttentionInputs attention_inputs(const LlamaConfig& c, int64_t batch,
                                 int64_t seq_len, const PackedLayout& layout,
                                 c10::ScalarType dtype, c10::Device device);

/// Keys and values of the positions a cached forward has seen, per decoder
/// layer [B, KV, max_length, head_dim] (KV = num_key_value_heads; keys after
/// q/k norm and RoPE, as HF's cache stores them), in the weights' dtype and on
/// their device; positions [0, length) are filled. Llama::make_cache builds
/// one; Llama::forward(idx, cache) appends.
struct LlamaKVCache {
  std::vector<at::Tensor> keys, values;
  int64_t length = 0;
  int64_t batch() const { return keys.empty() ? 0 : keys[0].size(0); }
  int64_t max_length() const { return keys.empty() ? 0 : keys[0].size(2); }
  /// Bytes of all the preallocated tensors.
  int64_t bytes() const;
  /// Forget every position (the tensors stay allocated).
  void reset() { length = 0; }
};

/// Rotary tables ([T, D]) at positions start..start+T-1 and the additive mask
/// [T, start + T] of `seq_len` new tokens attending to the `start` cached
/// ones and to each other: causal, within c.sliding_window() when set.
AttentionInputs cached_attention_inputs(const LlamaConfig& c, int64_t start,
                                        int64_t seq_len, c10::ScalarType dtype,
                                        c10::Device device);

/// Causal attention with slots q_proj (C -> H D), k_proj and v_proj
/// (C -> KV D), o_proj (H D -> C), biases as configured, optional q_norm /
/// k_norm (Qwen3), rotary embeddings on q and k, and K/V heads shared by
/// H / KV query heads each (HF repeat_kv).
class LlamaAttention : public nn::SlotModule {
 public:
  LlamaAttention(const LlamaConfig& c);
  /// x [B, T, C] -> [B, T, C] (plain causal rows at positions 0..T-1).
  at::Tensor forward(const at::Tensor& x);
  /// The same with the forward's shared inputs.
  at::Tensor forward(const at::Tensor& x, const AttentionInputs& in);
  /// x [B, T, C] at positions start..start+T-1 (in: cached_attention_inputs):
  /// writes this step's keys and values into key_cache / value_cache
  /// ([B, KV, max_length, D]) at [start, start + T) and attends over
  /// [0, start + T).
  at::Tensor forward(const at::Tensor& x, const AttentionInputs& in,
                     const at::Tensor& key_cache, const at::Tensor& value_cache,
                     int64_t start);

  std::shared_ptr<RMSNorm> q_norm, k_norm;  // qk_norm only, else null

 private:
  LlamaConfig config_;
  int64_t hidden_, heads_, kv_heads_, head_dim_;
};

/// SwiGLU: down_proj(silu(gate_proj(x)) * up_proj(x)).
class LlamaMLP : public nn::SlotModule {
 public:
  LlamaMLP(const LlamaConfig& c);
  at::Tensor forward(const at::Tensor& x);
};

/// x + self_attn(input_layernorm(x)), then + mlp(post_attention_layernorm(.)).
class LlamaDecoderLayer : public CheckpointableBlock {
 public:
  LlamaDecoderLayer(const LlamaConfig& c);
  at::Tensor forward(const at::Tensor& x) override;
  /// context: {cos, sin, mask} of AttentionInputs.
  at::Tensor forward_with(const at::Tensor& x,
                          const std::vector<at::Tensor>& context) override;
  /// With a KV cache (LlamaAttention's cached forward).
  at::Tensor forward(const at::Tensor& x, const AttentionInputs& in,
                     const at::Tensor& key_cache, const at::Tensor& value_cache,
                     int64_t start);

  std::shared_ptr<RMSNorm> input_layernorm;
  std::shared_ptr<LlamaAttention> self_attn;
  std::shared_ptr<RMSNorm> post_attention_layernorm;
  std::shared_ptr<LlamaMLP> mlp;
};

/// Called by Llama's constructor once per decoder layer (its index and the
/// layer), right after the layer is built and before the next one is: e.g.
/// nn::quantize_linears_nf4 on the layer, so that the dense weights of two
/// layers never exist at once (a 33B model built straight into NF4). The
/// hook must not draw from the global generator if the model is to equal
/// one built without it.
using LlamaLayerHook = std::function<void(int64_t, LlamaDecoderLayer&)>;

class Llama : public Model {
 public:
  /// Builds and initialises the weights tensor by tensor (embedding, layer
  /// 0, ..., layer L-1, norm, lm_head), calling `on_layer` after each layer.
  explicit Llama(LlamaConfig config = {}, const LlamaLayerHook& on_layer = {});

  using Model::evaluate;
  using Model::loss;

  /// idx [B, T] int64 (T <= max_position_embeddings) -> logits [B, T, vocab]
  /// in the weights' dtype.
  at::Tensor forward(const at::Tensor& idx) override;
  /// The same on packed rows (layout.segments / layout.positions [B, T]).
  at::Tensor forward(const at::Tensor& idx, const PackedLayout& layout);
  /// An empty KV cache for `batch` rows of up to `max_length` positions
  /// (<= max_position_embeddings), in the dtype and on the device of the
  /// weights (as they are now: build it after moving the model).
  LlamaKVCache make_cache(int64_t batch, int64_t max_length) const;
  /// Incremental decoding: idx [B, T] holds the tokens at positions
  /// cache.length .. cache.length + T - 1 (B = cache.batch(), cache.length +
  /// T <= cache.max_length()); their keys and values are appended to `cache`
  /// (cache.length grows by T) and their logits [B, T, vocab] returned, equal
  /// (to rounding) to the last T rows of forward() on the whole sequence.
  /// Adapters in the slots take part as in forward(). No activation
  /// checkpointing (meant for no_grad inference).
  at::Tensor forward(const at::Tensor& idx, LlamaKVCache& cache);
  /// Mean next-token cross-entropy (nats) over the positions whose target is
  /// not kIgnoreIndex; `target` is already shifted (as GPT::loss); logits
  /// upcast to fp32 for the loss.
  at::Tensor loss(const at::Tensor& idx, const at::Tensor& target) override;
  EvalStats evaluate(const at::Tensor& idx, const at::Tensor& target) override;
  at::Tensor loss(const at::Tensor& idx, const at::Tensor& target,
                  const PackedLayout& layout) override;
  EvalStats evaluate(const at::Tensor& idx, const at::Tensor& target,
                     const PackedLayout& layout) override;
  std::string kind() const override {
    return "llama";
  }

  const LlamaConfig& config() const {
    return config_;
  }
  int64_t n_layer() const {
    return static_cast<int64_t>(layers_.size());
  }
  LlamaDecoderLayer& layer(int64_t i) {
    return *layers_.at(static_cast<size_t>(i));
  }
  /// Slot weights plus lm_head (the matrices in matmuls; the embedding is a
  /// lookup; a tied head still counts, as its matmul runs).
  int64_t matrix_parameters();
  /// Training FLOPs per token as GPT::flops_per_token (6 N_matrix +
  /// 12 L H D T; checkpointing's recomputation not counted).
  double flops_per_token(int64_t seq_len);

  at::Tensor embed_tokens;  // "model.embed_tokens.weight" [vocab, C]
  /// "lm_head.weight" [vocab, C]; with tie_word_embeddings the same tensor as
  /// embed_tokens (and not a parameter of its own).
  at::Tensor lm_head;
  std::shared_ptr<RMSNorm> norm;  // "model.norm"

 private:
  LlamaConfig config_;
  std::vector<std::shared_ptr<LlamaDecoderLayer>> layers_;
};

/// Closed-form parameter count; for the default options (untied, no biases,
/// KV = H, H D = C) 2 V C + L (4 C^2 + 3 C I + 2 C) + C.
int64_t llama_parameter_count(const LlamaConfig& c);

/// Tensor bytes a training forward/backward of Llama keeps or makes, by
/// place, for `batch` rows of `seq` tokens with weights (and so activations)
/// in c.dtype(): what autograd saves for backward, counted op by op from the
/// code above as LibTorch 1.13 saves it (an op saves only what the gradients
/// of its inputs that require grad need), and the largest short-lived
/// buffers around the loss and inside a layer's backward. docs/memory.md
/// ("lowmem plan") derives every term. Frozen inputs (a frozen embedding
/// under an adapter) save slightly less than counted here.
struct LlamaActivationBytes {
  /// One LlamaDecoderLayer without checkpointing, its input included.
  int64_t layer = 0;
  /// One checkpointed layer: only its input (and on the CPU the generator
  /// state) is kept until backward re-runs it. c.device() says which.
  int64_t checkpoint = 0;
  /// Gradients alive at once inside one layer's backward (estimate: the
  /// SwiGLU's three [N, I] gradients and two [N, C] fp32 ones, or the
  /// attention scores' gradients, whichever is larger).
  int64_t layer_backward = 0;
  /// Once per forward: the rotary tables (and, under checkpointing, the
  /// mask the layers' context keeps), the final norm's saved tensors and the
  /// fp32 log-probabilities cross_entropy keeps for backward.
  int64_t head = 0;
  /// Beyond `head`, at the loss: the fp32 logits next to their log-softmax
  /// ([N, V] fp32).
  int64_t head_forward = 0;
  /// Beyond `head`, in the loss's backward: the nll and log-softmax
  /// gradients ([N, V] fp32 each) next to the saved log-probabilities.
  int64_t head_backward = 0;
  /// The part of `head` that the loss's backward frees: cross_entropy's
  /// fp32 log-probabilities [N, V].
  int64_t log_probs = 0;
  /// In the backward of the output projection (lm_head), after the loss's:
  /// the logits' gradient [N, V] in the weights' dtype, alive next to the
  /// weight's new gradient until that matmul's backward returns.
  int64_t logits_grad = 0;
};
LlamaActivationBytes llama_activation_bytes(const LlamaConfig& c, int64_t batch,
                                            int64_t seq);

}  // namespace lowmem::models
