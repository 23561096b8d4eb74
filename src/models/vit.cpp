#include "lowmem/models/vit.h"

#include "lowmem/core/check.h"

#include <ATen/ATen.h>

namespace lowmem::models {

void validate(const ViTConfig& c) {
  LOWMEM_CHECK(
      c.image_size() > 0 && c.patch_size() > 0 &&
          c.image_size() % c.patch_size() == 0,
      "[vit] image_size ",
      c.image_size(),
      " must be a positive multiple of patch_size ",
      c.patch_size());
  LOWMEM_CHECK(
      c.channels() > 0, "[vit] channels must be > 0, got ", c.channels());
  LOWMEM_CHECK(c.n_layer() > 0, "[vit] n_layer must be > 0, got ", c.n_layer());
  LOWMEM_CHECK(
      c.n_head() > 0 && c.n_embd() > 0 && c.n_embd() % c.n_head() == 0,
      "[vit] n_embd ",
      c.n_embd(),
      " is not a positive multiple of n_head ",
      c.n_head());
  LOWMEM_CHECK(
      c.mlp_ratio() > 0, "[vit] mlp_ratio must be > 0, got ", c.mlp_ratio());
  LOWMEM_CHECK(
      c.n_classes() > 0, "[vit] n_classes must be > 0, got ", c.n_classes());
  LOWMEM_CHECK(
      c.dropout() >= 0.0 && c.dropout() < 1.0,
      "[vit] dropout must be in [0, 1), got ",
      c.dropout());
}

ViT::ViT(ViTConfig config) : config_(std::move(config)) {
  validate(config_);
  const auto& c = config_;
  const int64_t patch_dim = c.channels() * c.patch_size() * c.patch_size();
  register_slot("patch_embed",
                std::make_shared<nn::Linear>(patch_dim, c.n_embd(), c.bias()));
  cls_token = register_parameter("cls_token", at::zeros({1, 1, c.n_embd()}));
  pos_embed = register_parameter(
      "pos_embed", at::zeros({1, n_patches() + 1, c.n_embd()}));
  register_module(
      "h",
      make_blocks(c.n_layer(), c.n_embd(), c.n_head(), c.bias(), /*causal=*/false,
                  c.dropout(), c.mlp_ratio() * c.n_embd(), blocks_));
  ln_f = register_module(
      "ln_f", std::make_shared<LayerNorm>(c.n_embd(), c.bias()));
  register_slot("head", std::make_shared<nn::Linear>(c.n_embd(), c.n_classes(),
                                                     c.bias()));

  // N(0, 0.02) weights and zero biases everywhere (timm uses a truncated
  // normal with the same std; the truncation at 2 std is dropped here).
  at::NoGradGuard no_grad;
  pos_embed.normal_(0.0, 0.02);
  cls_token.normal_(0.0, 0.02);
  init_slots_normal(*this, [](const std::string&) { return 0.02; });
  if (!c.fused_qkv()) {
    config_.fused_qkv(true);
    unfuse_qkv();  // the same initial function as the fused model
  }
}

void ViT::unfuse_qkv() {
  LOWMEM_CHECK(config_.fused_qkv(), "[vit] q, k, v are already separate");
  for (auto& b : blocks_) b->attn->unfuse_qkv();
  config_.fused_qkv(false);
}

int64_t ViT::n_patches() const {
  const int64_t g = config_.image_size() / config_.patch_size();
  return g * g;
}

at::Tensor ViT::patchify(const at::Tensor& images) const {
  const auto& c = config_;
  LOWMEM_CHECK(
      images.dim() == 4 && images.size(1) == c.channels() &&
          images.size(2) == c.image_size() && images.size(3) == c.image_size(),
      "[vit] expected images [B, ",
      c.channels(),
      ", ",
      c.image_size(),
      ", ",
      c.image_size(),
      "], got ",
      images.sizes());
  const int64_t B = images.size(0), C = c.channels(), p = c.patch_size(),
                g = c.image_size() / p;
  return images.reshape({B, C, g, p, g, p})
      .permute({0, 2, 4, 1, 3, 5})
      .reshape({B, g * g, C * p * p});
}

at::Tensor ViT::forward(const at::Tensor& images) {
  at::Tensor x = linear("patch_embed").forward(patchify(images));  // [B, N, D]
  const int64_t B = x.size(0);
  x = at::cat(
          {cls_token.expand({B, 1, config_.n_embd()}).to(x.scalar_type()), x},
          1) +
      pos_embed;
  if (config_.dropout() > 0.0 && is_training()) {
    x = at::dropout(x, config_.dropout(), true);
  }
  for (auto& b : blocks_) {
    x = run_block(*b, x, config_.activation_checkpointing());
  }
  x = ln_f->forward(x.select(1, 0));  // class token
  return linear("head").forward(x);
}

at::Tensor ViT::loss(const at::Tensor& images, const at::Tensor& target) {
  return at::cross_entropy_loss(loss_precision(forward(images)), target);
}

EvalStats ViT::evaluate(const at::Tensor& images, const at::Tensor& target) {
  at::NoGradGuard no_grad;
  return cross_entropy_stats(forward(images), target);
}

void ViT::reset_head(int64_t n_classes) {
  LOWMEM_CHECK(n_classes > 0, "[vit] n_classes must be > 0, got ", n_classes);
  auto head =
      std::make_shared<nn::Linear>(config_.n_embd(), n_classes, config_.bias());
  at::NoGradGuard no_grad;
  head->base_weight().normal_(0.0, 0.02);
  if (head->bias().defined())
    head->bias().zero_();
  auto dev = cls_token.device();
  head->to(dev, cls_token.scalar_type());
  replace_slot("head", head);
  config_.n_classes(n_classes);
}

int64_t vit_parameter_count(const ViTConfig& c) {
  const int64_t D = c.n_embd(), r = c.mlp_ratio(), b = c.bias() ? 1 : 0;
  const int64_t patch_dim = c.channels() * c.patch_size() * c.patch_size();
  const int64_t g = c.image_size() / c.patch_size();
  const int64_t block =
      (4 + 2 * r) * D * D + b * (3 * D + D + r * D + D) + 2 * D * (1 + b);
  return patch_dim * D + b * D + D + (g * g + 1) * D + c.n_layer() * block +
         D * (1 + b) + D * c.n_classes() + b * c.n_classes();
}

}  // namespace lowmem::models
