#include "lowmem/models/layers.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <limits>
#include <unordered_set>

#include "lowmem/core/check.h"
#include "lowmem/core/profile.h"

namespace lowmem::models {

using nn::Linear;

LayerNorm::LayerNorm(int64_t n, bool bias, double eps) : n_(n), eps_(eps) {
  weight = register_parameter("weight", at::ones({n}));
  if (bias)
    this->bias = register_parameter("bias", at::zeros({n}));
}

at::Tensor LayerNorm::forward(const at::Tensor& x) {
  return at::layer_norm(x, {n_}, weight, bias, eps_);
}

Embedding::Embedding(int64_t num, int64_t dim) {
  weight = register_parameter("weight", at::empty({num, dim}).normal_(0, 1));
}

at::Tensor Embedding::forward(const at::Tensor& idx) {
  return at::embedding(weight, idx);
}

SelfAttention::SelfAttention(
    int64_t n_embd, int64_t n_head, bool bias, bool causal, double dropout)
    : n_embd_(n_embd), n_head_(n_head), causal_(causal), dropout_(dropout) {
  LOWMEM_CHECK(
      n_head > 0 && n_embd % n_head == 0,
      "[attention] n_embd ",
      n_embd,
      " is not a multiple of n_head ",
      n_head);
  register_slot("qkv", std::make_shared<Linear>(n_embd, 3 * n_embd, bias));
  register_slot("proj", std::make_shared<Linear>(n_embd, n_embd, bias));
}

std::vector<at::Tensor> SelfAttention::project_heads(const at::Tensor& x) {
  const int64_t B = x.size(0), T = x.size(1), H = n_head_, D = n_embd_ / H;
  if (!fused_qkv_) {
    std::vector<at::Tensor> out;
    for (const char* name : {"q", "k", "v"})
      out.push_back(linear(name)
                        .forward(x)
                        .view({B, T, H, D})
                        .transpose(1, 2)
                        .reshape({B * H, T, D}));
    return out;
  }
  // One fused projection, then one copy into [3, B*H, T, D] (q, k, v).
  // unbind, not heads[i]: three select()s would each back-propagate through a
  // zero-filled copy of the whole [3, ...] tensor; unbind's backward is one
  // stack.
  return linear("qkv")
      .forward(x)
      .view({B, T, 3, H, D})
      .permute({2, 0, 3, 1, 4})
      .contiguous()
      .view({3, B * H, T, D})
      .unbind(0);
}

void SelfAttention::unfuse_qkv() {
  LOWMEM_CHECK(fused_qkv_, "[attention] q, k, v are already separate slots");
  auto qkv = std::dynamic_pointer_cast<Linear>(slot("qkv"));
  LOWMEM_CHECK(qkv != nullptr,
               "[attention] unfuse_qkv needs a plain Linear in slot qkv "
               "(split before injecting adapters)");
  at::NoGradGuard no_grad;
  const at::Tensor w = qkv->base_weight(), b = qkv->bias();
  const bool trainable = w.requires_grad();
  remove_slot("qkv");
  int64_t i = 0;
  for (const char* name : {"q", "k", "v"}) {
    at::Tensor wi = w.narrow(0, i * n_embd_, n_embd_).clone();
    at::Tensor bi =
        b.defined() ? b.narrow(0, i * n_embd_, n_embd_).clone() : at::Tensor();
    wi.set_requires_grad(trainable);
    if (bi.defined()) bi.set_requires_grad(b.requires_grad());
    register_slot(name, std::make_shared<Linear>(wi, bi));
    ++i;
  }
  fused_qkv_ = false;
}

at::Tensor SelfAttention::forward(const at::Tensor& x) {
  LOWMEM_CHECK(
      x.dim() == 3 && x.size(2) == n_embd_,
      "[attention] expected input [B, T, ",
      n_embd_,
      "], got ",
      x.sizes());
  const int64_t B = x.size(0), T = x.size(1), H = n_head_, D = n_embd_ / H;
  const std::vector<at::Tensor> heads = project_heads(x);
  const at::Tensor& q = heads[0];
  const at::Tensor& k = heads[1];
  const at::Tensor& v = heads[2];
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  at::Tensor scores;
  if (causal_ && mask_.defined()) {
    LOWMEM_CHECK(mask_.dim() == 3 && mask_.size(0) == B && mask_.size(1) == T &&
                     mask_.size(2) == T,
                 "[attention] mask ", mask_.sizes(), " does not fit [", B, ", ",
                 T, ", ", T, "]");
    // One mask per row, shared by its H heads.
    scores = at::baddbmm(mask_.to(q.scalar_type())
                             .unsqueeze(1)
                             .expand({B, H, T, T})
                             .reshape({B * H, T, T}),
                         q, k.transpose(1, 2), /*beta=*/1.0, /*alpha=*/scale);
  } else if (causal_) {
    // Additive mask (0 on and below the diagonal, -inf above), broadcast over
    // the B*H batch by baddbmm: scale and mask cost no extra pass.
    at::Tensor mask = at::full(
                          {T, T},
                          -std::numeric_limits<double>::infinity(),
                          q.options().requires_grad(false))
                          .triu_(1);
    scores = at::baddbmm(
        mask,
        q,
        k.transpose(1, 2),
        /*beta=*/1.0,
        /*alpha=*/scale);
  } else {
    scores = at::bmm(q, k.transpose(1, 2)).mul_(scale);
  }
  at::Tensor att = at::softmax(scores, -1);
  if (dropout_ > 0.0 && is_training())
    att = at::dropout(att, dropout_, true);
  at::Tensor y = at::bmm(att, v)  // [B*H, T, D]
                     .view({B, H, T, D})
                     .transpose(1, 2)
                     .reshape({B, T, n_embd_});
  y = linear("proj").forward(y);
  if (dropout_ > 0.0 && is_training())
    y = at::dropout(y, dropout_, true);
  return y;
}

at::Tensor SelfAttention::forward_cached(const at::Tensor& x,
                                         const at::Tensor& key_cache,
                                         const at::Tensor& value_cache,
                                         int64_t start) {
  const int64_t H = n_head_, D = n_embd_ / H;
  LOWMEM_CHECK(causal_, "[attention] a KV cache needs causal attention");
  LOWMEM_CHECK(x.dim() == 3 && x.size(2) == n_embd_ && x.size(1) > 0,
               "[attention] expected input [B, T > 0, ", n_embd_, "], got ",
               x.sizes());
  const int64_t B = x.size(0), T = x.size(1), end = start + T;
  LOWMEM_CHECK(
      key_cache.dim() == 3 && key_cache.size(0) == B * H &&
          key_cache.size(2) == D && value_cache.sizes() == key_cache.sizes() &&
          start >= 0 && end <= key_cache.size(1),
      "[attention] ", T, " positions from ", start, " do not fit the KV cache ",
      key_cache.sizes(), " (want [", B * H, ", >= ", end, ", ", D, "])");
  const std::vector<at::Tensor> heads = project_heads(x);
  key_cache.narrow(1, start, T).copy_(heads[1]);
  value_cache.narrow(1, start, T).copy_(heads[2]);
  // Query i (position start + i) sees keys 0 .. start + i.
  const at::Tensor mask =
      at::full({T, end}, -std::numeric_limits<double>::infinity(),
               heads[0].options())
          .triu_(start + 1);
  const at::Tensor scores =
      at::baddbmm(mask, heads[0], key_cache.narrow(1, 0, end).transpose(1, 2),
                  /*beta=*/1.0,
                  /*alpha=*/1.0 / std::sqrt(static_cast<double>(D)));
  const at::Tensor y =
      at::bmm(at::softmax(scores, -1), value_cache.narrow(1, 0, end))
          .view({B, H, T, D})
          .transpose(1, 2)
          .reshape({B, T, n_embd_});
  return linear("proj").forward(y);
}

at::Tensor packed_causal_mask(const at::Tensor& segments,
                              at::ScalarType dtype) {
  LOWMEM_CHECK(segments.dim() == 2 && segments.scalar_type() == at::kLong,
               "[attention] segments must be int64 [B, T], got ",
               segments.sizes(), " ", segments.scalar_type());
  const int64_t T = segments.size(1);
  const at::Tensor same = segments.unsqueeze(2).eq(segments.unsqueeze(1));
  const at::Tensor causal =
      at::ones({T, T}, segments.options().dtype(at::kBool)).tril_();
  return at::zeros(same.sizes(), segments.options().dtype(dtype))
      .masked_fill_(same.logical_and(causal).logical_not(),
                    -std::numeric_limits<double>::infinity());
}

FeedForward::FeedForward(
    int64_t n_embd, int64_t hidden, bool bias, double dropout)
    : dropout_(dropout) {
  register_slot("fc", std::make_shared<Linear>(n_embd, hidden, bias));
  register_slot("proj", std::make_shared<Linear>(hidden, n_embd, bias));
}

at::Tensor FeedForward::forward(const at::Tensor& x) {
  at::Tensor h = at::gelu(linear("fc").forward(x), "tanh");
  h = linear("proj").forward(h);
  if (dropout_ > 0.0 && is_training())
    h = at::dropout(h, dropout_, true);
  return h;
}

Block::Block(
    int64_t n_embd,
    int64_t n_head,
    bool bias,
    bool causal,
    double dropout,
    int64_t hidden) {
  ln_1 = register_module("ln_1", std::make_shared<LayerNorm>(n_embd, bias));
  attn = register_module(
      "attn",
      std::make_shared<SelfAttention>(n_embd, n_head, bias, causal, dropout));
  ln_2 = register_module("ln_2", std::make_shared<LayerNorm>(n_embd, bias));
  mlp = register_module(
      "mlp",
      std::make_shared<FeedForward>(
          n_embd, hidden > 0 ? hidden : 4 * n_embd, bias, dropout));
}

torch::nn::ModuleList make_blocks(
    int64_t n_layer,
    int64_t n_embd,
    int64_t n_head,
    bool bias,
    bool causal,
    double dropout,
    int64_t hidden,
    std::vector<std::shared_ptr<Block>>& blocks) {
  torch::nn::ModuleList h;
  for (int64_t i = 0; i < n_layer; ++i) {
    auto b = std::make_shared<Block>(n_embd, n_head, bias, causal, dropout, hidden);
    h->push_back(b);
    blocks.push_back(b);
  }
  return h;
}

void init_slots_normal(
    torch::nn::Module& m, const std::function<double(const std::string&)>& std_of) {
  at::NoGradGuard no_grad;
  for (const auto& ref : nn::find_slots(m)) {
    auto layer = ref.layer();
    layer->base_weight().normal_(0.0, std_of(ref.name));
    at::Tensor bias = layer->bias();
    if (bias.defined()) bias.zero_();
  }
}

at::Tensor Block::forward(const at::Tensor& x) {
  at::Tensor h = x + attn->forward(ln_1->forward(x));
  return h + mlp->forward(ln_2->forward(h));
}

at::Tensor Block::forward_cached(const at::Tensor& x,
                                 const at::Tensor& key_cache,
                                 const at::Tensor& value_cache, int64_t start) {
  at::Tensor h =
      x + attn->forward_cached(ln_1->forward(x), key_cache, value_cache, start);
  return h + mlp->forward(ln_2->forward(h));
}

namespace {

// Reentrant activation checkpointing for one block: forward runs without a
// graph and saves only the input; backward re-runs the block with grad
// enabled and back-propagates through it (accumulating parameter .grad).
struct CheckpointBlock : torch::autograd::Function<CheckpointBlock> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx,
                            const at::Tensor& x, const at::Tensor& /*dummy*/,
                            int64_t block_address,
                            const std::vector<at::Tensor>& context) {
    ctx->saved_data["block"] = block_address;
    if (x.device().is_cpu()) {
      ctx->saved_data["rng"] = at::detail::getDefaultCPUGenerator().get_state();
    }
    ctx->save_for_backward({x});
    ctx->saved_data["context"] = context;
    auto* block = reinterpret_cast<CheckpointableBlock*>(block_address);  // NOLINT
    return block->forward_with(x, context);
  }

  static torch::autograd::variable_list backward(
      torch::autograd::AutogradContext* ctx,
      torch::autograd::variable_list grads) {
    auto* block =
        reinterpret_cast<CheckpointableBlock*>(ctx->saved_data["block"].toInt());  // NOLINT
    at::Tensor x = ctx->get_saved_variables()[0];
    const std::vector<at::Tensor> context =
        ctx->saved_data["context"].toTensorVector();
    at::Tensor input = x.detach().requires_grad_(true);
    at::Tensor out;
    {
      at::AutoGradMode enable(true);
      {
        profile::Scope recompute(profile::Phase::kRecompute);
        if (ctx->saved_data.count("rng")) {
          auto gen = at::detail::getDefaultCPUGenerator();
          std::lock_guard<std::mutex> lock(gen.mutex());
          at::Tensor now = gen.get_state();
          gen.set_state(ctx->saved_data["rng"].toTensor());
          out = block->forward_with(input, context);
          gen.set_state(now);
        } else {
          out = block->forward_with(input, context);
        }
      }
      torch::autograd::backward({out}, {grads[0]});
    }
    // x, dummy, address, context: undefined beyond x. Extra undefined entries
    // are dropped by autograd, so this also holds where a LibTorch version
    // counts each context tensor as an input of its own.
    torch::autograd::variable_list out_grads(4 + context.size());
    out_grads[0] = input.grad();
    return out_grads;
  }
};

}  // namespace

at::Tensor run_block(CheckpointableBlock& block, const at::Tensor& x,
                     bool checkpoint, const std::vector<at::Tensor>& context) {
  if (!checkpoint || !at::GradMode::is_enabled())
    return block.forward_with(x, context);
  // The dummy makes the output require grad even when x does not (frozen
  // embeddings), so backward still reaches the block's parameters.
  at::Tensor dummy =
      at::empty({0}, x.options().dtype(at::kFloat)).requires_grad_(true);
  return CheckpointBlock::apply(x, dummy,
                                reinterpret_cast<int64_t>(&block),  // NOLINT
                                context);
}

at::Tensor loss_precision(const at::Tensor& t) {
  const auto st = t.scalar_type();
  return (st == at::kBFloat16 || st == at::kHalf) ? t.to(at::kFloat) : t;
}

EvalStats cross_entropy_stats(const at::Tensor& logits, const at::Tensor& target) {
  const at::Tensor l = loss_precision(logits).reshape({-1, logits.size(-1)});
  const at::Tensor t = target.reshape(-1);
  EvalStats s;
  // cross_entropy's default ignore_index is kIgnoreIndex (-100): those
  // targets add nothing to the sum and are neither counted nor scored.
  s.loss_sum =
      at::cross_entropy_loss(l, t, {}, at::Reduction::Sum, kIgnoreIndex)
          .item<double>();
  const at::Tensor kept = t.ne(kIgnoreIndex);
  s.count = kept.sum().item<int64_t>();
  s.correct = l.argmax(-1).eq(t).logical_and(kept).sum().item<int64_t>();
  return s;
}

int64_t count_parameters(const torch::nn::Module& m, bool trainable_only) {
  int64_t n = 0;
  std::unordered_set<const void*> seen;
  for (const auto& p : m.parameters()) {
    if (trainable_only && !p.requires_grad())
      continue;
    if (!seen.insert(p.unsafeGetTensorImpl()).second)
      continue;
    n += p.numel();
  }
  return n;
}

int64_t count_slot_weights(torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& ref : nn::find_slots(m)) {
    // From the shapes: an NF4 base has no dense weight to ask.
    n += ref.layer()->in_features() * ref.layer()->out_features();
  }
  return n;
}

}  // namespace lowmem::models
