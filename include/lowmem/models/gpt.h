// GPT: a byte-level decoder-only transformer (GPT-2 layout, Radford et al.
// 2019; nanoGPT's initialisation). Token + position embeddings "wte"/"wpe",
// pre-LayerNorm blocks "h.<i>" with adapter slots h.<i>.attn.qkv,
// h.<i>.attn.proj, h.<i>.mlp.fc, h.<i>.mlp.proj, final "ln_f", output head tied
// to wte. Deviation from GPT-2: the qkv/fc names (GPT-2 says c_attn/c_fc) and
// weights stored [out, in] as torch::nn::Linear (GPT-2's Conv1D is [in, out]).
#pragma once

#include "lowmem/models/layers.h"

#include <torch/arg.h>

namespace lowmem::models {

struct GPTConfig {
  TORCH_ARG(int64_t, n_layer) = 4;
  TORCH_ARG(int64_t, n_head) = 4;
  TORCH_ARG(int64_t, n_embd) = 256;
  /// Context length (maximum sequence length; size of wpe).
  TORCH_ARG(int64_t, block_size) = 128;
  /// 256: byte-level.
  TORCH_ARG(int64_t, vocab_size) = 256;
  /// nanoGPT default 0.0 (dropout off).
  TORCH_ARG(double, dropout) = 0.0;
  /// Biases in linear layers and LayerNorms (GPT-2: true).
  TORCH_ARG(bool, bias) = true;
  /// Recompute each block in backward instead of storing its activations.
  TORCH_ARG(bool, activation_checkpointing) = false;
};

/// Throws "[gpt] ..." on non-positive sizes or n_embd % n_head != 0.
void validate(const GPTConfig& c);

/// Keys and values of the positions a cached forward has seen, per block
/// [B * n_head, max_length, n_embd / n_head], in the weights' dtype and on
/// their device; positions [0, length) are filled. GPT::make_cache builds
/// one; GPT::forward(idx, cache) appends.
struct GPTKVCache {
  std::vector<at::Tensor> keys, values;
  int64_t length = 0;
  int64_t max_length() const { return keys.empty() ? 0 : keys[0].size(1); }
  /// Forget every position (the tensors stay allocated).
  void reset() { length = 0; }
};

class GPT : public Model {
 public:
  explicit GPT(GPTConfig config = {});

  /// idx [B, T] int64 (T <= block_size) -> logits [B, T, vocab_size].
  at::Tensor forward(const at::Tensor& idx) override;
  /// Mean next-token cross-entropy over all B*T positions (nats); logits are
  /// upcast to fp32 for the loss whatever the weights' dtype.
  at::Tensor loss(const at::Tensor& idx, const at::Tensor& target) override;
  EvalStats evaluate(const at::Tensor& idx, const at::Tensor& target) override;
  /// Packed rows: attention stays within each segment (a block-diagonal
  /// causal mask) and wpe reads layout.positions, so each sample's logits are
  /// those it has alone. Unpacked layouts take the plain path.
  at::Tensor loss(const at::Tensor& idx, const at::Tensor& target,
                  const PackedLayout& layout) override;
  EvalStats evaluate(const at::Tensor& idx, const at::Tensor& target,
                     const PackedLayout& layout) override;
  /// forward() on packed rows (layout as in loss).
  at::Tensor forward(const at::Tensor& idx, const PackedLayout& layout);
  /// An empty KV cache for `batch` rows of up to `max_length` positions
  /// (<= block_size: wpe has no more).
  GPTKVCache make_cache(int64_t batch, int64_t max_length) const;
  /// Incremental decoding (inference: no dropout): idx [B, T] at positions
  /// cache.length .. cache.length + T - 1 (B rows as the cache was made,
  /// cache.length + T <= cache.max_length()); their keys and values are
  /// appended to `cache` and their logits [B, T, vocab] returned, equal to
  /// forward() on the whole sequence at those positions.
  at::Tensor forward(const at::Tensor& idx, GPTKVCache& cache);
  std::string kind() const override {
    return "gpt";
  }

  const GPTConfig& config() const {
    return config_;
  }
  /// Matrix parameters that take part in matmuls: every slot weight plus the
  /// tied head (vocab x n_embd).
  int64_t matrix_parameters();
  /// Training FLOPs per token: 6 * matrix_parameters() + 12 * n_layer *
  /// n_embd * T (attention scores and values, forward + backward, counted
  /// without the causal half-saving; PaLM appendix B convention).
  double flops_per_token(int64_t seq_len);
  /// The block count (h.<i>).
  int64_t n_layer() const {
    return static_cast<int64_t>(blocks_.size());
  }
  Block& block(int64_t i) {
    return *blocks_.at(static_cast<size_t>(i));
  }

  std::shared_ptr<Embedding> wte, wpe;
  std::shared_ptr<LayerNorm> ln_f;

 private:
  GPTConfig config_;
  std::vector<std::shared_ptr<Block>> blocks_;
};

/// Closed-form parameter count of GPT(c) (weights tied, so wte counted once):
/// V*C + T*C + L*(12*C^2 + (bias ? 13 : 4)*C... ) — see the .cpp.
int64_t gpt_parameter_count(const GPTConfig& c);

}  // namespace lowmem::models
