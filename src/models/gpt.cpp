#include "lowmem/models/gpt.h"

#include "lowmem/core/check.h"

#include <ATen/ATen.h>

#include <cmath>

namespace lowmem::models {

void validate(const GPTConfig& c) {
  LOWMEM_CHECK(c.n_layer() > 0, "[gpt] n_layer must be > 0, got ", c.n_layer());
  LOWMEM_CHECK(c.n_head() > 0, "[gpt] n_head must be > 0, got ", c.n_head());
  LOWMEM_CHECK(c.n_embd() > 0, "[gpt] n_embd must be > 0, got ", c.n_embd());
  LOWMEM_CHECK(
      c.n_embd() % c.n_head() == 0,
      "[gpt] n_embd ",
      c.n_embd(),
      " is not a multiple of n_head ",
      c.n_head());
  LOWMEM_CHECK(
      c.block_size() > 0, "[gpt] block_size must be > 0, got ", c.block_size());
  LOWMEM_CHECK(
      c.vocab_size() > 0, "[gpt] vocab_size must be > 0, got ", c.vocab_size());
  LOWMEM_CHECK(
      c.dropout() >= 0.0 && c.dropout() < 1.0,
      "[gpt] dropout must be in [0, 1), got ",
      c.dropout());
}

GPT::GPT(GPTConfig config) : config_(std::move(config)) {
  validate(config_);
  const auto& c = config_;
  wte = register_module(
      "wte", std::make_shared<Embedding>(c.vocab_size(), c.n_embd()));
  wpe = register_module(
      "wpe", std::make_shared<Embedding>(c.block_size(), c.n_embd()));
  register_module(
      "h",
      make_blocks(c.n_layer(), c.n_embd(), c.n_head(), c.bias(), /*causal=*/true,
                  c.dropout(), /*hidden=*/0, blocks_));
  ln_f = register_module(
      "ln_f", std::make_shared<LayerNorm>(c.n_embd(), c.bias()));

  // nanoGPT initialisation: N(0, 0.02) for embeddings and linear weights,
  // zero biases, residual projections N(0, 0.02 / sqrt(2 * n_layer)).
  at::NoGradGuard no_grad;
  wte->weight.normal_(0.0, 0.02);
  wpe->weight.normal_(0.0, 0.02);
  const double proj_std =
      0.02 / std::sqrt(2.0 * static_cast<double>(c.n_layer()));
  init_slots_normal(*this, [&](const std::string& name) {
    return name == "proj" ? proj_std : 0.02;
  });
}

at::Tensor GPT::forward(const at::Tensor& idx) {
  return forward(idx, PackedLayout());
}

at::Tensor GPT::forward(const at::Tensor& idx, const PackedLayout& layout) {
  LOWMEM_CHECK(
      idx.dim() == 2 && idx.scalar_type() == at::kLong,
      "[gpt] expected int64 tokens [B, T], got ",
      idx.sizes(),
      " ",
      idx.scalar_type());
  const int64_t T = idx.size(1);
  LOWMEM_CHECK(
      T <= config_.block_size(),
      "[gpt] sequence length ",
      T,
      " exceeds block_size ",
      config_.block_size());
  at::Tensor pos, mask;
  if (layout.packed()) {
    LOWMEM_CHECK(layout.segments.sizes() == idx.sizes() &&
                     layout.positions.defined() &&
                     layout.positions.sizes() == idx.sizes(),
                 "[gpt] packed layout: segments ", layout.segments.sizes(),
                 " and positions ",
                 layout.positions.defined() ? layout.positions.sizes()
                                            : at::IntArrayRef{},
                 " must both be ", idx.sizes());
    pos = layout.positions;
    mask = packed_causal_mask(layout.segments, wte->weight.scalar_type());
  } else {
    pos = at::arange(T, idx.options());
  }
  // Every forward sets (or clears) the blocks' mask; it stays for a
  // checkpointed block's recompute in backward.
  for (auto& b : blocks_) b->attn->set_mask(mask);
  at::Tensor x = wte->forward(idx) + wpe->forward(pos);
  if (config_.dropout() > 0.0 && is_training()) {
    x = at::dropout(x, config_.dropout(), true);
  }
  for (auto& b : blocks_) {
    x = run_block(*b, x, config_.activation_checkpointing());
  }
  x = ln_f->forward(x);
  return at::linear(x, wte->weight);  // tied head
}

GPTKVCache GPT::make_cache(int64_t batch, int64_t max_length) const {
  LOWMEM_CHECK(
      batch > 0 && max_length > 0 && max_length <= config_.block_size(),
      "[gpt] a KV cache needs batch > 0 and 0 < max_length <= "
      "block_size ",
      config_.block_size(), ", got batch ", batch, " and max_length ",
      max_length);
  const auto o = wte->weight.options().requires_grad(false);
  const int64_t H = config_.n_head(), D = config_.n_embd() / H;
  GPTKVCache cache;
  for (size_t i = 0; i < blocks_.size(); ++i) {
    cache.keys.push_back(at::zeros({batch * H, max_length, D}, o));
    cache.values.push_back(at::zeros({batch * H, max_length, D}, o));
  }
  return cache;
}

at::Tensor GPT::forward(const at::Tensor& idx, GPTKVCache& cache) {
  LOWMEM_CHECK(
      idx.dim() == 2 && idx.scalar_type() == at::kLong && idx.size(1) > 0,
      "[gpt] expected int64 tokens [B, T] with T > 0, got ", idx.sizes(), " ",
      idx.scalar_type());
  LOWMEM_CHECK(cache.keys.size() == blocks_.size() &&
                   cache.values.size() == blocks_.size(),
               "[gpt] the KV cache has ", cache.keys.size(),
               " blocks, the model ", blocks_.size(),
               " (build it with make_cache)");
  const int64_t rows = cache.keys[0].size(0) / config_.n_head();
  LOWMEM_CHECK(idx.size(0) == rows, "[gpt] the KV cache holds ", rows,
               " rows, the input has ", idx.size(0));
  const int64_t start = cache.length, T = idx.size(1);
  LOWMEM_CHECK(start + T <= cache.max_length(), "[gpt] the KV cache holds ",
               cache.max_length(), " positions; ", start, " are filled and ", T,
               " more do not fit");
  at::Tensor x = wte->forward(idx) +
                 wpe->forward(at::arange(start, start + T, idx.options()));
  for (size_t i = 0; i < blocks_.size(); ++i)
    x = blocks_[i]->forward_cached(x, cache.keys[i], cache.values[i], start);
  cache.length = start + T;
  return at::linear(ln_f->forward(x), wte->weight);
}

at::Tensor GPT::loss(const at::Tensor& idx, const at::Tensor& target) {
  return loss(idx, target, PackedLayout());
}

at::Tensor GPT::loss(const at::Tensor& idx, const at::Tensor& target,
                     const PackedLayout& layout) {
  LOWMEM_CHECK(
      target.sizes() == idx.sizes(),
      "[gpt] target shape ",
      target.sizes(),
      " != input shape ",
      idx.sizes());
  at::Tensor logits = loss_precision(forward(idx, layout));
  // Targets equal to kIgnoreIndex (cross_entropy's default) are excluded.
  return at::cross_entropy_loss(
      logits.view({-1, logits.size(-1)}), target.reshape(-1));
}

EvalStats GPT::evaluate(const at::Tensor& idx, const at::Tensor& target) {
  return evaluate(idx, target, PackedLayout());
}

EvalStats GPT::evaluate(const at::Tensor& idx, const at::Tensor& target,
                        const PackedLayout& layout) {
  at::NoGradGuard no_grad;
  return cross_entropy_stats(forward(idx, layout), target);
}

int64_t GPT::matrix_parameters() {
  return count_slot_weights(*this) + wte->weight.numel();
}

double GPT::flops_per_token(int64_t seq_len) {
  return 6.0 * static_cast<double>(matrix_parameters()) +
         12.0 * static_cast<double>(
                    config_.n_layer() * config_.n_embd() * seq_len);
}

int64_t gpt_parameter_count(const GPTConfig& c) {
  const int64_t C = c.n_embd();
  // Per block: qkv 3C^2 (+3C), proj C^2 (+C), fc 4C^2 (+4C), proj 4C^2 (+C),
  // two LayerNorms 2C (+2C).
  const int64_t block = 12 * C * C + (c.bias() ? 13 * C : 2 * C);
  const int64_t ln_f = c.bias() ? 2 * C : C;
  return c.vocab_size() * C + c.block_size() * C + c.n_layer() * block + ln_f;
}

}  // namespace lowmem::models
