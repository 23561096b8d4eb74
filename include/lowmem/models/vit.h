// ViT: Vision Transformer (Dosovitskiy et al. 2020, arXiv:2010.11929) for
// small single-channel images (default 28x28 Fashion-MNIST). Patch embedding
// is a Linear slot "patch_embed" on flattened patches (equivalent to the
// reference's stride-p convolution), then "cls_token", "pos_embed", blocks
// h.<i> named as in GPT (attn.qkv, attn.proj, mlp.fc, mlp.proj; not causal),
// final LayerNorm "ln_f" and the classifier slot "head" on the class token.
// With fused_qkv false the attention has slots attn.q, attn.k, attn.v instead
// of attn.qkv (same function; SNELL's official code adapts q, k, v apart).
#pragma once

#include "lowmem/models/layers.h"

#include <torch/arg.h>

namespace lowmem::models {

struct ViTConfig {
  TORCH_ARG(int64_t, image_size) = 28;
  TORCH_ARG(int64_t, patch_size) = 7;
  TORCH_ARG(int64_t, channels) = 1;
  TORCH_ARG(int64_t, n_layer) = 4;
  TORCH_ARG(int64_t, n_head) = 4;
  TORCH_ARG(int64_t, n_embd) = 128;
  /// MLP hidden width = mlp_ratio * n_embd (ViT: 4).
  TORCH_ARG(int64_t, mlp_ratio) = 4;
  TORCH_ARG(int64_t, n_classes) = 10;
  TORCH_ARG(double, dropout) = 0.0;
  TORCH_ARG(bool, bias) = true;
  TORCH_ARG(bool, activation_checkpointing) = false;
  /// One attn.qkv slot (true) or three, attn.q / attn.k / attn.v (false).
  TORCH_ARG(bool, fused_qkv) = true;
};

/// Throws "[vit] ..." on bad sizes (image_size % patch_size != 0, ...).
void validate(const ViTConfig& c);

class ViT : public Model {
 public:
  explicit ViT(ViTConfig config = {});
  /// images [B, C, H, W] float -> logits [B, n_classes].
  at::Tensor forward(const at::Tensor& images) override;
  /// Mean classification cross-entropy; target [B] int64.
  at::Tensor loss(const at::Tensor& images, const at::Tensor& target) override;
  EvalStats evaluate(
      const at::Tensor& images, const at::Tensor& target) override;
  std::string kind() const override {
    return "vit";
  }

  /// [B, C, H, W] -> [B, N, C*p*p], patches in row-major order, each
  /// flattened channel-major (c, dy, dx) like a conv kernel's weight.
  at::Tensor patchify(const at::Tensor& images) const;
  /// Swaps the classifier for a fresh one with n classes (fine-tuning on a
  /// new label set); uses the global RNG.
  void reset_head(int64_t n_classes);
  /// Splits every block's attn.qkv into attn.q, attn.k, attn.v (row blocks
  /// of the fused weight: the function is unchanged), e.g. after loading a
  /// fused checkpoint; sets config().fused_qkv() false. Before adapters.
  void unfuse_qkv();
  int64_t n_patches() const;
  const ViTConfig& config() const {
    return config_;
  }
  int64_t n_layer() const {
    return static_cast<int64_t>(blocks_.size());
  }

  at::Tensor cls_token;  // [1, 1, C]
  at::Tensor pos_embed;  // [1, N + 1, C]
  std::shared_ptr<LayerNorm> ln_f;

 private:
  ViTConfig config_;
  std::vector<std::shared_ptr<Block>> blocks_;
};

/// Closed-form parameter count of ViT(c).
int64_t vit_parameter_count(const ViTConfig& c);

}  // namespace lowmem::models
