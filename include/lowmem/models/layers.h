// Building blocks of the reference models: LayerNorm and Embedding with
// PyTorch's parameter names, the pre-LayerNorm transformer block whose four
// projections sit in adapter slots (attn.qkv, attn.proj, mlp.fc, mlp.proj),
// and parameter-count helpers. Layout follows GPT-2 / nanoGPT (Radford et al.
// 2019); attention is one fused qkv matmul + baddbmm with an additive mask.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "lowmem/nn/slot_module.h"

namespace lowmem::models {

/// y = (x - mean) / sqrt(var + eps) * weight + bias over the last dim
/// (parameters "weight" [n], "bias" [n]; as torch::nn::LayerNorm).
class LayerNorm : public torch::nn::Module {
 public:
  explicit LayerNorm(int64_t n, bool bias = true, double eps = 1e-5);
  at::Tensor forward(const at::Tensor& x);
  at::Tensor weight;  // [n], ones
  at::Tensor bias;    // [n], zeros or undefined

 private:
  int64_t n_;
  double eps_;
};

/// Lookup table with parameter "weight" [num, dim] (as torch::nn::Embedding).
class Embedding : public torch::nn::Module {
 public:
  Embedding(int64_t num, int64_t dim);
  at::Tensor forward(const at::Tensor& idx);  // [...] int64 -> [..., dim]
  at::Tensor weight;                          // [num, dim]
};

/// Multi-head self-attention with slots "qkv" (C -> 3C) and "proj" (C -> C);
/// after unfuse_qkv(), slots "q", "k", "v" (each C -> C) instead of "qkv".
class SelfAttention : public nn::SlotModule {
 public:
  SelfAttention(
      int64_t n_embd, int64_t n_head, bool bias, bool causal, double dropout);
  /// x [B, T, C] -> [B, T, C].
  at::Tensor forward(const at::Tensor& x);
  int64_t n_head() const {
    return n_head_;
  }
  /// An additive mask [B, T, T] (0 where a query may attend to a key, -inf
  /// elsewhere) used by the following forwards instead of the plain causal
  /// one; undefined: the plain mask. Packed rows set it from their segments
  /// (packed_causal_mask); it stays set so a checkpointed block's recompute
  /// in backward sees the same mask.
  void set_mask(at::Tensor mask) { mask_ = std::move(mask); }
  /// Splits the fused "qkv" slot into slots "q", "k", "v" holding its row
  /// blocks (copies of the weight and bias rows 0..C, C..2C, 2C..3C): the same
  /// function, three linears an adapter can target one by one (as SNELL's
  /// and timm's separate q/k/v layers load a fused checkpoint). Throws if
  /// already split or if "qkv" holds an adapter (split before injecting).
  void unfuse_qkv();
  bool fused_qkv() const { return fused_qkv_; }
  /// Incremental decoding (causal only; no dropout, no mask_): x [B, T, C]
  /// holds positions start..start+T-1. Their keys and values are written
  /// into key_cache / value_cache [B*H, L, D] at [start, start+T), and each
  /// query attends to the cached positions up to its own. Equals forward()
  /// on the whole sequence at the new positions.
  at::Tensor forward_cached(const at::Tensor& x, const at::Tensor& key_cache,
                            const at::Tensor& value_cache, int64_t start);

 private:
  /// q, k, v as [B*H, T, D] each (from "qkv" or from "q", "k", "v").
  std::vector<at::Tensor> project_heads(const at::Tensor& x);

  int64_t n_embd_, n_head_;
  bool causal_;
  double dropout_;
  bool fused_qkv_ = true;
  at::Tensor mask_;
};

/// The additive attention mask of packed rows: 0 where key j is not after
/// query i and both belong to the same segment, -inf elsewhere; segments
/// [B, T] int64 -> [B, T, T] of `dtype`.
at::Tensor packed_causal_mask(const at::Tensor& segments, at::ScalarType dtype);

/// Feed-forward: slots "fc" (C -> 4C) and "proj" (4C -> C), GELU between
/// (tanh approximation, as GPT-2's "gelu_new").
class FeedForward : public nn::SlotModule {
 public:
  FeedForward(int64_t n_embd, int64_t hidden, bool bias, double dropout);
  at::Tensor forward(const at::Tensor& x);

 private:
  double dropout_;
};

/// A residual block that run_block can checkpoint: forward maps x to a tensor
/// of the same shape and reads nothing but x and the block's parameters.
class CheckpointableBlock : public torch::nn::Module {
 public:
  virtual at::Tensor forward(const at::Tensor& x) = 0;
  /// The same with tensors one forward shares across its blocks (rotary
  /// tables, an attention mask; none takes a gradient). Default: forward(x).
  virtual at::Tensor forward_with(const at::Tensor& x,
                                  const std::vector<at::Tensor>& context) {
    (void)context;
    return forward(x);
  }
};

/// Pre-LayerNorm block: x + attn(ln_1(x)), then + mlp(ln_2(x)).
class Block : public CheckpointableBlock {
 public:
  /// hidden: the MLP width (0: 4 * n_embd).
  Block(
      int64_t n_embd,
      int64_t n_head,
      bool bias,
      bool causal,
      double dropout,
      int64_t hidden = 0);
  at::Tensor forward(const at::Tensor& x) override;
  /// forward() with SelfAttention::forward_cached.
  at::Tensor forward_cached(const at::Tensor& x, const at::Tensor& key_cache,
                            const at::Tensor& value_cache, int64_t start);

  std::shared_ptr<LayerNorm> ln_1;
  std::shared_ptr<SelfAttention> attn;
  std::shared_ptr<LayerNorm> ln_2;
  std::shared_ptr<FeedForward> mlp;
};

/// `n_layer` blocks in a ModuleList for the owner to register as "h" (HF and
/// nanoGPT names h.0, h.1, ...); `blocks` receives them in order.
torch::nn::ModuleList make_blocks(
    int64_t n_layer,
    int64_t n_embd,
    int64_t n_head,
    bool bias,
    bool causal,
    double dropout,
    int64_t hidden,
    std::vector<std::shared_ptr<Block>>& blocks);

/// Initialises every adapter slot under `m`, in find_slots order: base weight
/// N(0, std_of(slot name)), bias zero (GPT-2 / nanoGPT / timm-style init).
void init_slots_normal(
    torch::nn::Module& m, const std::function<double(const std::string&)>& std_of);

/// Runs `block` on x; with `checkpoint` the block's activations are not kept:
/// only x is saved and the block is re-run in backward (a custom autograd
/// function, like torch.utils.checkpoint's reentrant variant: parameter
/// gradients are accumulated into .grad during the recomputation, so only
/// .backward() — not torch::autograd::grad w.r.t. block parameters — sees
/// them). The CPU RNG state is restored for the re-run, so dropout matches.
/// `context` goes to block.forward_with (kept for the re-run).
at::Tensor run_block(CheckpointableBlock& block, const at::Tensor& x,
                     bool checkpoint,
                     const std::vector<at::Tensor>& context = {});

/// Sum of numel over parameters (only requires_grad ones if trainable_only).
int64_t count_parameters(
    const torch::nn::Module& m, bool trainable_only = false);

/// Sum of numel of the base weights of every adapter slot under `m` (the
/// matrices whose matmuls dominate the FLOPs).
int64_t count_slot_weights(torch::nn::Module& m);

/// `t` in at least fp32: bf16/fp16 logits are upcast before a loss, fp32 and
/// fp64 pass through (so float64 gradient checks stay float64).
at::Tensor loss_precision(const at::Tensor& t);

/// Per-batch evaluation figures a trainer sums over batches.
struct EvalStats {
  double loss_sum = 0.0;  // summed per-example (per-token) loss
  int64_t count = 0;      // examples (tokens) counted
  int64_t correct = 0;    // argmax hits (classification / next byte)
};

/// Summed cross-entropy, count and argmax hits of `logits` [..., C] against
/// class indices `target` [...] (leading dims flattened: tokens of a language
/// model, examples of a classifier); bf16/fp16 logits are upcast first. The
/// caller holds no_grad.
EvalStats cross_entropy_stats(const at::Tensor& logits, const at::Tensor& target);

/// What the trainer needs from a model: forward, a scalar training loss and
/// evaluation figures. All models here derive from it; it is a SlotModule so
/// top-level linear layers (ViT's head, the MLP's layers) are slots too.
/// Target value excluded from losses and evaluation counts (PyTorch's and
/// Hugging Face's ignore_index): prompt tokens, padding, the last token of a
/// packed sample.
constexpr int64_t kIgnoreIndex = -100;

/// How the samples of a language-model batch [B, T] sit in its rows when
/// several are packed into one. segments [B, T] int64: the sample number of
/// each token within its row (nondecreasing along T); a token attends only to
/// earlier tokens of its own segment. positions [B, T] int64: rotary/learned
/// position of each token, restarting at 0 with each segment. Both undefined:
/// one sample per row at positions 0..T-1 (the plain causal case).
struct PackedLayout {
  at::Tensor segments;
  at::Tensor positions;
  bool packed() const { return segments.defined(); }
};

class Model : public nn::SlotModule {
 public:
  virtual at::Tensor forward(const at::Tensor& input) = 0;
  /// Mean loss over the batch (tokens for language models); targets equal to
  /// kIgnoreIndex are excluded from the mean.
  virtual at::Tensor loss(
      const at::Tensor& input, const at::Tensor& target) = 0;
  /// Loss sum, count and argmax accuracy, computed under no_grad; targets
  /// equal to kIgnoreIndex are not counted.
  virtual EvalStats evaluate(
      const at::Tensor& input, const at::Tensor& target) = 0;
  /// The same on packed rows. Models that cannot keep packed samples apart
  /// throw when layout.packed(); the defaults forward unpacked batches.
  virtual at::Tensor loss(const at::Tensor& input, const at::Tensor& target,
                          const PackedLayout& layout) {
    TORCH_CHECK(!layout.packed(), "[model] ", kind(),
                " does not support packed samples (use padding instead)");
    return loss(input, target);
  }
  virtual EvalStats evaluate(const at::Tensor& input, const at::Tensor& target,
                             const PackedLayout& layout) {
    TORCH_CHECK(!layout.packed(), "[model] ", kind(),
                " does not support packed samples (use padding instead)");
    return evaluate(input, target);
  }
  /// "gpt", "vit" or "mlp".
  virtual std::string kind() const = 0;
};

}  // namespace lowmem::models
