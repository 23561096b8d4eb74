// Llama: the LLaMA decoder (Touvron et al. 2023, arXiv 2302.13971) as Hugging
// Face transformers' LlamaForCausalLM computes it and GaLore (arXiv 2403.03507)
// pretrains it: RMSNorm (in fp32), rotary position embeddings (rotate_half
// convention), SwiGLU MLP, no biases, untied lm_head. Parameter names are HF's
// (model.embed_tokens, model.layers.<i>.self_attn.q_proj, ..., model.norm,
// lm_head). Deviations: the causal mask is -inf (HF: dtype minimum), rotary
// tables are computed per forward rather than cached, no KV cache / padding.
#pragma once

#include "lowmem/models/layers.h"

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <torch/arg.h>

#include <string>
#include <vector>

namespace lowmem::models {

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

/// Throws "[llama] ..." on non-positive sizes, hidden_size % heads != 0 or an
/// odd head dimension (RoPE rotates pairs).
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

/// cos and sin tables [T, head_dim] of HF's rotary embedding (frequencies
/// theta^(-2i/d) for i < d/2, repeated twice), computed in fp32 (fp64 for
/// fp64) and returned in `dtype`.
std::pair<at::Tensor, at::Tensor> rotary_tables(
    int64_t seq_len,
    int64_t head_dim,
    double theta,
    c10::ScalarType dtype,
    c10::Device device);
/// x * cos + rotate_half(x) * sin with rotate_half(x) = cat(-x2, x1) over the
/// last dim (x [..., T, head_dim]; cos, sin [T, head_dim]).
at::Tensor apply_rotary(
    const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

/// Causal multi-head attention with slots q_proj, k_proj, v_proj, o_proj
/// (all C -> C, no bias) and rotary embeddings on q and k.
class LlamaAttention : public adapters::SlotModule {
 public:
  LlamaAttention(const LlamaConfig& c);
  /// x [B, T, C] -> [B, T, C].
  at::Tensor forward(const at::Tensor& x);

 private:
  int64_t hidden_, heads_;
  double theta_;
};

/// SwiGLU: down_proj(silu(gate_proj(x)) * up_proj(x)).
class LlamaMLP : public adapters::SlotModule {
 public:
  LlamaMLP(const LlamaConfig& c);
  at::Tensor forward(const at::Tensor& x);
};

/// x + self_attn(input_layernorm(x)), then + mlp(post_attention_layernorm(.)).
class LlamaDecoderLayer : public CheckpointableBlock {
 public:
  LlamaDecoderLayer(const LlamaConfig& c);
  at::Tensor forward(const at::Tensor& x) override;

  std::shared_ptr<RMSNorm> input_layernorm;
  std::shared_ptr<LlamaAttention> self_attn;
  std::shared_ptr<RMSNorm> post_attention_layernorm;
  std::shared_ptr<LlamaMLP> mlp;
};

class Llama : public Model {
 public:
  explicit Llama(LlamaConfig config = {});

  /// idx [B, T] int64 (T <= max_position_embeddings) -> logits [B, T, vocab]
  /// in the weights' dtype.
  at::Tensor forward(const at::Tensor& idx) override;
  /// Mean next-token cross-entropy (nats) over all B*T positions; `target`
  /// is already shifted (as GPT::loss); logits upcast to fp32 for the loss.
  at::Tensor loss(const at::Tensor& idx, const at::Tensor& target) override;
  EvalStats evaluate(const at::Tensor& idx, const at::Tensor& target) override;
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
  /// lookup).
  int64_t matrix_parameters();
  /// Training FLOPs per token as GPT::flops_per_token (6 N_matrix + 12 L C T;
  /// checkpointing's recomputation not counted).
  double flops_per_token(int64_t seq_len);

  at::Tensor embed_tokens;  // "model.embed_tokens.weight" [vocab, C]
  at::Tensor lm_head;       // "lm_head.weight" [vocab, C]
  std::shared_ptr<RMSNorm> norm;  // "model.norm"

 private:
  LlamaConfig config_;
  std::vector<std::shared_ptr<LlamaDecoderLayer>> layers_;
};

/// Closed-form parameter count: 2 V C + L (4 C^2 + 3 C I + 2 C) + C.
int64_t llama_parameter_count(const LlamaConfig& c);

}  // namespace lowmem::models
