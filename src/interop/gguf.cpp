#include "lowmem/interop/gguf.h"

#include <ATen/ATen.h>

#include <cctype>
#include <optional>

#include "lowmem/core/check.h"
#include "lowmem/core/input.h"
#include "lowmem/models/llama.h"

namespace lowmem::interop {
namespace {

using io::GgmlType;
using io::GgufValue;

enum class Rope { kNone, kQuery, kKey };

struct Target {
  std::string name;
  Rope rope = Rope::kNone;
};

// Hugging Face parameter name -> llama.cpp tensor name
// (gguf-py/gguf/tensor_mapping.py, MODEL_ARCH.LLAMA).
std::optional<Target> gguf_name(const std::string& hf) {
  static const std::pair<const char*, const char*> kTop[] = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"}};
  for (const auto& [from, to] : kTop) {
    if (hf == from) return Target{to};
  }
  const std::string prefix = "model.layers.";
  if (hf.rfind(prefix, 0) != 0) return std::nullopt;
  const size_t dot = hf.find('.', prefix.size());
  if (dot == std::string::npos || dot == prefix.size()) return std::nullopt;
  const std::string index = hf.substr(prefix.size(), dot - prefix.size());
  for (char c : index) {
    if (!std::isdigit(static_cast<unsigned char>(c))) return std::nullopt;
  }
  struct Row {
    const char* from;
    const char* to;
    Rope rope;
  };
  static const Row kLayer[] = {
      {"input_layernorm.weight", "attn_norm.weight", Rope::kNone},
      {"self_attn.q_proj.weight", "attn_q.weight", Rope::kQuery},
      {"self_attn.k_proj.weight", "attn_k.weight", Rope::kKey},
      {"self_attn.v_proj.weight", "attn_v.weight", Rope::kNone},
      {"self_attn.o_proj.weight", "attn_output.weight", Rope::kNone},
      {"post_attention_layernorm.weight", "ffn_norm.weight", Rope::kNone},
      {"mlp.gate_proj.weight", "ffn_gate.weight", Rope::kNone},
      {"mlp.up_proj.weight", "ffn_up.weight", Rope::kNone},
      {"mlp.down_proj.weight", "ffn_down.weight", Rope::kNone},
      // Attention biases (Qwen2's q/k/v, LLaMA's attention_bias: q/k/v/o),
      // LLaMA's mlp_bias, Qwen3's per-head norms.
      {"self_attn.q_proj.bias", "attn_q.bias", Rope::kQuery},
      {"self_attn.k_proj.bias", "attn_k.bias", Rope::kKey},
      {"self_attn.v_proj.bias", "attn_v.bias", Rope::kNone},
      {"self_attn.o_proj.bias", "attn_output.bias", Rope::kNone},
      {"mlp.gate_proj.bias", "ffn_gate.bias", Rope::kNone},
      {"mlp.up_proj.bias", "ffn_up.bias", Rope::kNone},
      {"mlp.down_proj.bias", "ffn_down.bias", Rope::kNone},
      {"self_attn.q_norm.weight", "attn_q_norm.weight", Rope::kNone},
      {"self_attn.k_norm.weight", "attn_k_norm.weight", Rope::kNone}};
  const std::string rest = hf.substr(dot + 1);
  for (const auto& r : kLayer) {
    if (rest == r.from) return Target{"blk." + index + "." + r.to, r.rope};
  }
  return std::nullopt;
}

// Head geometry read from layer 0's projections, so grouped-query attention
// and a head_dim other than hidden / heads come out right.
struct Heads {
  int64_t n_head = 0, n_head_kv = 0, head_dim = 0;
};

Heads heads_of(models::Llama& model) {
  Heads h;
  h.n_head = model.config().num_attention_heads();
  at::Tensor q, k;
  for (const auto& p : model.named_parameters(true)) {
    if (p.key() == "model.layers.0.self_attn.q_proj.weight") q = p.value();
    if (p.key() == "model.layers.0.self_attn.k_proj.weight") k = p.value();
  }
  LOWMEM_CHECK(q.defined() && k.defined(),
               "[interop] GGUF export: the model has no layer-0 q_proj/k_proj "
               "weights (adapters must be merged first: lowmem merge)");
  LOWMEM_CHECK(q.size(0) % h.n_head == 0, "[interop] q_proj has ", q.size(0),
               " rows, not a multiple of ", h.n_head, " heads");
  h.head_dim = q.size(0) / h.n_head;
  LOWMEM_CHECK(k.size(0) % h.head_dim == 0, "[interop] k_proj has ", k.size(0),
               " rows, not a multiple of head_dim ", h.head_dim);
  h.n_head_kv = k.size(0) / h.head_dim;
  return h;
}

GgmlType tensor_type(const at::Tensor& t, GgmlType asked) {
  if (t.dim() == 1) return GgmlType::kF32;
  if (asked == GgmlType::kQ8_0 && t.size(-1) % 32 != 0) return GgmlType::kF16;
  return asked;
}

GgufValue u32(int64_t v) {
  return GgufValue::integer(io::GgufValueType::kUint32, v);
}

}  // namespace

uint32_t gguf_file_type(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
      return 0;
    case GgmlType::kF16:
      return 1;
    case GgmlType::kQ8_0:
      return 7;
    case GgmlType::kBF16:
      return 32;
  }
  LOWMEM_CHECK(false, "[interop] no file type for ", io::ggml_type_name(type));
  return 0;
}

at::Tensor permute_for_gguf_rope(const at::Tensor& weight, int64_t n_head) {
  LOWMEM_CHECK(
      weight.dim() >= 1 && n_head > 0 && weight.size(0) % (2 * n_head) == 0,
      "[interop] cannot permute ", weight.sizes(), " for ", n_head,
      " rope heads");
  std::vector<int64_t> split = {n_head, 2, weight.size(0) / n_head / 2};
  for (int64_t d = 1; d < weight.dim(); ++d) split.push_back(weight.size(d));
  return weight.reshape(split).transpose(1, 2).reshape(weight.sizes());
}

std::string gguf_architecture(const models::LlamaConfig& c) {
  // llama.cpp (node-llama-cpp 3.21.1's, src/models/*.cpp): llama loads
  // optional q/k/v/o and MLP biases; qwen2 q/k/v biases only; qwen3 none.
  if (c.qk_norm()) {
    LOWMEM_CHECK(!c.attention_bias() && !c.qkv_bias() && !c.mlp_bias(),
                 "[interop] GGUF export: q/k norms with attention or MLP "
                 "biases fit no llama.cpp architecture (qwen3 has no "
                 "biases)");
    return "qwen3";
  }
  if (c.qkv_bias()) {
    LOWMEM_CHECK(!c.attention_bias() && !c.mlp_bias(),
                 "[interop] GGUF export: q/k/v biases (qkv_bias) together "
                 "with attention_bias or mlp_bias fit no llama.cpp "
                 "architecture (qwen2 has q/k/v biases only)");
    return "qwen2";
  }
  return "llama";  // attention_bias and mlp_bias included
}

io::GgufMetadata gguf_llama_metadata(models::Llama& model,
                                     const GgufExportOptions& options) {
  const models::LlamaConfig& c = model.config();
  const Heads h = heads_of(model);
  const std::string arch = gguf_architecture(c);
  const std::string a = arch + ".";
  io::GgufMetadata m = {
      {"general.architecture", GgufValue::string(arch)},
      {"general.name", GgufValue::string(options.name())},
      {"general.file_type", GgufValue::uint32(gguf_file_type(options.type()))},
      {"general.quantization_version", GgufValue::uint32(2)},
      {a + "vocab_size", u32(c.vocab_size())},
      {a + "context_length", u32(c.max_position_embeddings())},
      {a + "embedding_length", u32(c.hidden_size())},
      {a + "block_count", u32(c.num_hidden_layers())},
      {a + "feed_forward_length", u32(c.intermediate_size())},
      {a + "attention.head_count", u32(h.n_head)},
      {a + "attention.head_count_kv", u32(h.n_head_kv)},
      {a + "rope.freq_base",
       GgufValue::float32(static_cast<float>(c.rope_theta()))},
      {a + "attention.layer_norm_rms_epsilon",
       GgufValue::float32(static_cast<float>(c.rms_norm_eps()))},
      {a + "rope.dimension_count", u32(h.head_dim)},
  };
  const models::RopeScaling& rs = c.rope_scaling();
  LOWMEM_CHECK(rs.rope_type() == "default" || rs.rope_type() == "linear" ||
                   (rs.rope_type() == "llama3" && arch == "llama"),
               "[interop] GGUF export of rope_scaling ", quote(rs.rope_type()),
               " for architecture ", arch,
               " is not supported (default and linear are; llama3 for "
               "architecture llama)");
  if (rs.rope_type() == "linear") {
    m.emplace_back(a + "rope.scaling.type", GgufValue::string("linear"));
    m.emplace_back(a + "rope.scaling.factor",
                   GgufValue::float32(static_cast<float>(rs.factor())));
  }
  if (h.head_dim * h.n_head != c.hidden_size()) {
    m.emplace_back(a + "attention.key_length", u32(h.head_dim));
    m.emplace_back(a + "attention.value_length", u32(h.head_dim));
  }
  return m;
}

at::Tensor gguf_rope_freqs(const models::LlamaConfig& c) {
  const int64_t d = models::resolved_head_dim(c);
  const auto cpu = c10::Device(c10::kCPU);
  const at::Tensor plain = models::rope_inv_freq(
      d, c.rope_theta(), models::RopeScaling(), c10::kDouble, cpu);
  const at::Tensor scaled = models::rope_inv_freq(
      d, c.rope_theta(), c.rope_scaling(), c10::kDouble, cpu);
  return (plain / scaled).to(c10::kFloat);
}

std::vector<io::GgufTensor> gguf_llama_tensors(
    models::Llama& model, const GgufExportOptions& options) {
  const Heads h = heads_of(model);
  const std::string arch = gguf_architecture(model.config());
  std::vector<io::GgufTensor> out;
  if (model.config().rope_scaling().rope_type() == "llama3") {
    out.push_back(
        {"rope_freqs.weight", gguf_rope_freqs(model.config()), GgmlType::kF32});
  }
  // llama.cpp rotates llama's q/k in adjacent pairs (rows permuted here);
  // qwen2/qwen3 use NEOX rope, Hugging Face's rotate-half layout as is.
  const bool permute = arch == "llama";
  for (const auto& p : model.named_parameters(true)) {
    const auto target = gguf_name(p.key());
    LOWMEM_CHECK(target.has_value(), "[interop] GGUF export: parameter ",
                 quote(p.key()), " has no llama.cpp name in architecture ",
                 arch, " (adapters must be merged first: lowmem merge)");
    at::Tensor t = p.value().detach();
    if (permute && target->rope == Rope::kQuery)
      t = permute_for_gguf_rope(t, h.n_head);
    if (permute && target->rope == Rope::kKey)
      t = permute_for_gguf_rope(t, h.n_head_kv);
    out.push_back({target->name, t, tensor_type(t, options.type())});
  }
  return out;
}

void export_gguf(const std::string& path, models::Llama& model,
                 const text::Tokenizer& tokenizer,
                 const GgufExportOptions& options) {
  io::GgufMetadata m = gguf_llama_metadata(model, options);
  for (auto& kv : gguf_tokenizer_metadata(
           tokenizer, model.config().vocab_size(), options)) {
    m.push_back(std::move(kv));
  }
  io::save_gguf(path, m, gguf_llama_tensors(model, options));
}

}  // namespace lowmem::interop
