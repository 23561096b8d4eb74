#include "lowmem/models/llama.h"

#include "lowmem/core/check.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

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

// A bias-free linear slot drawn N(0, std) directly in the target dtype and
// device: no fp32 transient and no Kaiming draw that would be overwritten.
std::shared_ptr<adapters::Linear> make_linear(
    int64_t in, int64_t out, const LlamaConfig& c) {
  at::NoGradGuard no_grad;
  const auto o = at::TensorOptions().dtype(c.dtype()).device(c.device());
  return std::make_shared<adapters::Linear>(
      at::empty({out, in}, o).normal_(0.0, c.initializer_range()));
}

}  // namespace

void validate(const LlamaConfig& c) {
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
      c.hidden_size() % c.num_attention_heads() == 0,
      "[llama] hidden_size ",
      c.hidden_size(),
      " is not a multiple of num_attention_heads ",
      c.num_attention_heads());
  LOWMEM_CHECK(
      (c.hidden_size() / c.num_attention_heads()) % 2 == 0,
      "[llama] head dimension ",
      c.hidden_size() / c.num_attention_heads(),
      " must be even (rotary embeddings rotate pairs)");
  LOWMEM_CHECK(
      c.max_position_embeddings() > 0,
      "[llama] max_position_embeddings must be > 0, got ",
      c.max_position_embeddings());
  LOWMEM_CHECK(
      c.rms_norm_eps() > 0.0,
      "[llama] rms_norm_eps must be > 0, got ",
      c.rms_norm_eps());
  LOWMEM_CHECK(
      c.rope_theta() > 0.0, "[llama] rope_theta must be > 0, got ", c.rope_theta());
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

std::pair<at::Tensor, at::Tensor> rotary_tables(
    int64_t seq_len,
    int64_t head_dim,
    double theta,
    c10::ScalarType dtype,
    c10::Device device) {
  const auto ct = compute_type(dtype);
  auto o = at::TensorOptions().dtype(ct).device(device);
  // inv_freq_i = theta^(-2i/d), i < d/2 (HF: 1 / base^(arange(0, d, 2)/d)).
  at::Tensor inv_freq =
      at::pow(theta, at::arange(0, head_dim, 2, o) / static_cast<double>(head_dim))
          .reciprocal();
  at::Tensor freqs = at::outer(at::arange(seq_len, o), inv_freq);  // [T, d/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1);                     // [T, d]
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

LlamaAttention::LlamaAttention(const LlamaConfig& c)
    : hidden_(c.hidden_size()),
      heads_(c.num_attention_heads()),
      theta_(c.rope_theta()) {
  const int64_t C = c.hidden_size();
  for (const char* name : {"q_proj", "k_proj", "v_proj", "o_proj"})
    register_slot(name, make_linear(C, C, c));
}

at::Tensor LlamaAttention::forward(const at::Tensor& x) {
  LOWMEM_CHECK(
      x.dim() == 3 && x.size(2) == hidden_,
      "[llama] attention expected input [B, T, ",
      hidden_,
      "], got ",
      x.sizes());
  const int64_t B = x.size(0), T = x.size(1), H = heads_, D = hidden_ / H;
  auto heads = [&](const char* slot) {  // [B, T, C] -> [B, H, T, D]
    return linear(slot).forward(x).view({B, T, H, D}).transpose(1, 2);
  };
  auto [cos, sin] = rotary_tables(T, D, theta_, x.scalar_type(), x.device());
  at::Tensor q = apply_rotary(heads("q_proj"), cos, sin).reshape({B * H, T, D});
  at::Tensor k = apply_rotary(heads("k_proj"), cos, sin).reshape({B * H, T, D});
  at::Tensor v = heads("v_proj").reshape({B * H, T, D});
  at::Tensor mask =
      at::full(
          {T, T},
          -std::numeric_limits<double>::infinity(),
          q.options().requires_grad(false))
          .triu_(1);
  at::Tensor scores = at::baddbmm(
      mask,
      q,
      k.transpose(1, 2),
      /*beta=*/1.0,
      /*alpha=*/1.0 / std::sqrt(static_cast<double>(D)));
  // HF: softmax in fp32, then back to the activations' dtype.
  at::Tensor att = at::softmax(scores, -1, compute_type(scores.scalar_type()))
                       .to(q.scalar_type());
  at::Tensor y = at::bmm(att, v)
                     .view({B, H, T, D})
                     .transpose(1, 2)
                     .reshape({B, T, hidden_});
  return linear("o_proj").forward(y);
}

LlamaMLP::LlamaMLP(const LlamaConfig& c) {
  const int64_t C = c.hidden_size(), I = c.intermediate_size();
  register_slot("gate_proj", make_linear(C, I, c));
  register_slot("up_proj", make_linear(C, I, c));
  register_slot("down_proj", make_linear(I, C, c));
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

Llama::Llama(LlamaConfig config) : config_(std::move(config)) {
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
    layers->push_back(l);
    layers_.push_back(l);
  }
  inner->register_module("layers", layers.ptr());
  norm = inner->register_module(
      "norm", std::make_shared<RMSNorm>(c.hidden_size(), c.rms_norm_eps(), o));
  auto head = register_module(
      "lm_head",
      std::make_shared<WeightOnly>(
          c.vocab_size(), c.hidden_size(), c.initializer_range(), o));
  lm_head = head->weight;
}

at::Tensor Llama::forward(const at::Tensor& idx) {
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
  for (auto& l : layers_)
    x = run_block(*l, x, config_.activation_checkpointing());
  return at::linear(norm->forward(x), lm_head);
}

at::Tensor Llama::loss(const at::Tensor& idx, const at::Tensor& target) {
  LOWMEM_CHECK(
      target.sizes() == idx.sizes(),
      "[llama] target shape ",
      target.sizes(),
      " != input shape ",
      idx.sizes());
  at::Tensor logits = loss_precision(forward(idx));
  return at::cross_entropy_loss(
      logits.view({-1, logits.size(-1)}), target.reshape(-1));
}

EvalStats Llama::evaluate(const at::Tensor& idx, const at::Tensor& target) {
  at::NoGradGuard no_grad;
  return cross_entropy_stats(forward(idx), target);
}

int64_t Llama::matrix_parameters() {
  return count_slot_weights(*this) + lm_head.numel();
}

double Llama::flops_per_token(int64_t seq_len) {
  return 6.0 * static_cast<double>(matrix_parameters()) +
         12.0 * static_cast<double>(
                    config_.num_hidden_layers() * config_.hidden_size() *
                    seq_len);
}

int64_t llama_parameter_count(const LlamaConfig& c) {
  const int64_t V = c.vocab_size(), C = c.hidden_size(),
                I = c.intermediate_size(), L = c.num_hidden_layers();
  return 2 * V * C + L * (4 * C * C + 3 * C * I + 2 * C) + C;
}

}  // namespace lowmem::models
