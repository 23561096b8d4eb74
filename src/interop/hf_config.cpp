#include "lowmem/interop/hf_config.h"

#include <cmath>
#include <cstdint>

#include "lowmem/core/check.h"
#include "lowmem/core/dtype.h"
#include "lowmem/core/input.h"
#include "lowmem/core/json.h"

namespace lowmem::interop {

using nlohmann::json;

namespace {

struct Arch {
  const char* architecture;
  const char* model_type;
  // configuration_<model>.py defaults where a key is absent.
  int64_t max_position_embeddings;
  int64_t head_dim;  // 0: hidden_size / num_attention_heads
};

// transformers' configuration classes: LlamaConfig (max_position_embeddings
// 2048), MistralConfig (4096 * 32), Qwen2Config (32768), Qwen3Config (32768,
// head_dim 128).
const Arch kArchs[] = {
    {"LlamaForCausalLM", "llama", 2048, 0},
    {"MistralForCausalLM", "mistral", 4096 * 32, 0},
    {"Qwen2ForCausalLM", "qwen2", 32768, 0},
    {"Qwen3ForCausalLM", "qwen3", 32768, 128},
};

std::string supported_list() {
  std::string s;
  for (const auto& a : kArchs)
    s += (s.empty() ? "" : ", ") + std::string(a.architecture);
  return s;
}

// Reads keys of one JSON object with messages naming source, key and value.
class Reader {
 public:
  Reader(const json& j, std::string source)
      : j_(j), source_(std::move(source)) {}

  bool has(const char* key) const {
    return j_.contains(key) && !j_.at(key).is_null();
  }
  int64_t integer(const char* key) const {
    LOWMEM_CHECK(has(key), "[hf] ", source_, ": missing \"", key, "\"");
    return integer_value(key);
  }
  // Absent or null: `fallback`.
  int64_t integer_or(const char* key, int64_t fallback) const {
    return has(key) ? integer_value(key) : fallback;
  }
  double number_or(const char* key, double fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    LOWMEM_CHECK(v.is_number() && std::isfinite(v.get<double>()), "[hf] ",
                 source_, ": \"", key, "\" must be a number, got ",
                 clip_json(v));
    return v.get<double>();
  }
  bool boolean_or(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    LOWMEM_CHECK(v.is_boolean(), "[hf] ", source_, ": \"", key,
                 "\" must be true or false, got ", clip_json(v));
    return v.get<bool>();
  }
  std::string string_or(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    LOWMEM_CHECK(v.is_string(), "[hf] ", source_, ": \"", key,
                 "\" must be a string, got ", clip_json(v));
    return v.get<std::string>();
  }
  const std::string& source() const { return source_; }

 private:
  int64_t integer_value(const char* key) const {
    const json& v = j_.at(key);
    LOWMEM_CHECK(v.is_number_integer() &&
                     (!v.is_number_unsigned() ||
                      v.get<uint64_t>() <= static_cast<uint64_t>(INT64_MAX)),
                 "[hf] ", source_, ": \"", key, "\" must be an integer, got ",
                 clip_json(v));
    return v.get<int64_t>();
  }
  const json& j_;
  std::string source_;
};

const Arch& find_arch(const json& j, const std::string& source) {
  std::string name;
  if (j.contains("architectures") && !j.at("architectures").is_null()) {
    const json& a = j.at("architectures");
    LOWMEM_CHECK(a.is_array() && !a.empty() && a.at(0).is_string(), "[hf] ",
                 source, ": \"architectures\" must be a list of names, got ",
                 clip_json(a));
    name = a.at(0).get<std::string>();
    for (const auto& arch : kArchs)
      if (name == arch.architecture) return arch;
    LOWMEM_CHECK(false, "[hf] ", source, ": unsupported architecture ",
                 quote(name), " (supported: ", supported_list(), ")");
  }
  const std::string type = Reader(j, source).string_or("model_type", "");
  for (const auto& arch : kArchs)
    if (type == arch.model_type) return arch;
  LOWMEM_CHECK(false, "[hf] ", source, ": unsupported model_type ", quote(type),
               " and no \"architectures\" (supported: ", supported_list(), ")");
  return kArchs[0];
}

// rope_scaling (4.x) or rope_parameters (5.x; it also holds rope_theta).
void read_rope(const json& j, const std::string& source,
               models::LlamaConfig& c) {
  const Reader top(j, source);
  c.rope_theta(top.number_or("rope_theta", 10000.0));
  const char* key =
      top.has("rope_parameters") ? "rope_parameters" : "rope_scaling";
  if (!top.has(key)) return;
  const json& r = j.at(key);
  LOWMEM_CHECK(r.is_object(), "[hf] ", source, ": \"", key,
               "\" must be an object, got ", clip_json(r));
  const Reader s(r, source + " " + key);
  c.rope_theta(s.number_or("rope_theta", c.rope_theta()));
  const std::string type =
      s.string_or("rope_type", s.string_or("type", "default"));
  LOWMEM_CHECK(type == "default" || type == "linear" || type == "llama3",
               "[hf] ", source, ": unsupported rope_scaling type ", quote(type),
               " (supported: default, linear, llama3)");
  models::RopeScaling rope;
  rope.rope_type(type);
  if (type != "default") {
    LOWMEM_CHECK(s.has("factor"), "[hf] ", source, ": rope_scaling ", type,
                 " needs \"factor\"");
    rope.factor(s.number_or("factor", 1.0));
  }
  if (type == "llama3") {
    for (const char* k : {"low_freq_factor", "high_freq_factor",
                          "original_max_position_embeddings"})
      LOWMEM_CHECK(s.has(k), "[hf] ", source, ": rope_scaling llama3 needs \"",
                   k, "\"");
    rope.low_freq_factor(s.number_or("low_freq_factor", 1.0))
        .high_freq_factor(s.number_or("high_freq_factor", 4.0))
        .original_max_position_embeddings(
            s.integer("original_max_position_embeddings"));
  }
  c.rope_scaling(rope);
}

void read_sizes(const Reader& r, const Arch& arch, models::LlamaConfig& c) {
  c.vocab_size(r.integer("vocab_size"))
      .hidden_size(r.integer("hidden_size"))
      .intermediate_size(r.integer("intermediate_size"))
      .num_hidden_layers(r.integer("num_hidden_layers"))
      .num_attention_heads(r.integer("num_attention_heads"))
      .num_key_value_heads(r.integer_or("num_key_value_heads", 0))
      .head_dim(r.integer_or("head_dim", arch.head_dim))
      .max_position_embeddings(
          r.integer_or("max_position_embeddings", arch.max_position_embeddings))
      .rms_norm_eps(r.number_or("rms_norm_eps", 1e-6))
      .initializer_range(r.number_or("initializer_range", 0.02))
      .tie_word_embeddings(r.boolean_or("tie_word_embeddings", false));
}

// Biases, q/k norms and windows: what distinguishes the four.
void read_variant(const Reader& r, const Arch& arch, models::LlamaConfig& c) {
  const std::string type = arch.model_type;
  if (type == "llama" || type == "qwen3")
    c.attention_bias(r.boolean_or("attention_bias", false));
  if (type == "llama") c.mlp_bias(r.boolean_or("mlp_bias", false));
  c.qkv_bias(type == "qwen2");
  c.qk_norm(type == "qwen3");
  if (type == "mistral") {
    c.sliding_window(r.integer_or("sliding_window", 0));
  } else if (type == "qwen2" || type == "qwen3") {
    LOWMEM_CHECK(
        !r.boolean_or("use_sliding_window", false), "[hf] ", r.source(),
        ": use_sliding_window true is not supported (per-layer windows)");
  }
}

}  // namespace

const std::vector<std::string>& hf_architectures() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& a : kArchs) out.push_back(a.architecture);
    return out;
  }();
  return names;
}

std::string hf_dtype_name(c10::ScalarType t) {
  const char* name = dtype_long_name(t);
  LOWMEM_CHECK(name != nullptr, "[hf] no torch_dtype name for ", t);
  return name;
}

c10::ScalarType hf_dtype_from_name(const std::string& name) {
  const auto t = dtype_from_name(name);
  LOWMEM_CHECK(t.has_value(), "[hf] unknown dtype ", quote(name),
               " (expected float32, float16, bfloat16 or float64)");
  return *t;
}

HfConfig parse_hf_config(const json& j, const std::string& source) {
  LOWMEM_CHECK(j.is_object(), "[hf] ", source, ": expected a JSON object, got ",
               clip_json(j));
  const Arch& arch = find_arch(j, source);
  const Reader r(j, source);
  const std::string act =
      r.string_or("hidden_act", r.string_or("hidden_activation", "silu"));
  LOWMEM_CHECK(act == "silu", "[hf] ", source, ": hidden_act ", quote(act),
               " is not supported (the LLaMA family uses silu)");
  const double partial = r.number_or("partial_rotary_factor", 1.0);
  LOWMEM_CHECK(partial == 1.0, "[hf] ", source, ": partial_rotary_factor ",
               partial, " is not supported (only 1)");
  HfConfig out;
  out.architecture = arch.architecture;
  out.model_type = arch.model_type;
  out.raw = j;
  read_sizes(r, arch, out.llama);
  read_variant(r, arch, out.llama);
  read_rope(j, source, out.llama);
  const std::string dtype =
      r.string_or("torch_dtype", r.string_or("dtype", "float32"));
  try {
    out.torch_dtype = hf_dtype_from_name(dtype);
  } catch (const c10::Error&) {
    LOWMEM_CHECK(false, "[hf] ", source, ": unsupported torch_dtype ",
                 quote(dtype));
  }
  try {
    models::validate(out.llama);
  } catch (const c10::Error& e) {
    LOWMEM_CHECK(false, "[hf] ", source, ": ", e.what_without_backtrace());
  }
  return out;
}

HfConfig read_hf_config(const std::string& dir) {
  const std::string path = dir + "/config.json";
  return parse_hf_config(read_json_file(path), path);
}

HfConfig hf_config_for(const models::LlamaConfig& c) {
  HfConfig out;
  out.llama = c;
  const char* type = c.qk_norm()              ? "qwen3"
                     : c.qkv_bias()           ? "qwen2"
                     : c.sliding_window() > 0 ? "mistral"
                                              : "llama";
  for (const auto& a : kArchs) {
    if (std::string(type) == a.model_type) {
      out.architecture = a.architecture;
      out.model_type = a.model_type;
    }
  }
  const std::string t = type;
  const bool fits = (t == "llama" || !c.mlp_bias()) &&
                    (t == "llama" || t == "qwen3" || !c.attention_bias()) &&
                    (t == "mistral" || c.sliding_window() == 0) &&
                    (t == "qwen3" || !c.qk_norm()) &&
                    (t == "qwen2" || !c.qkv_bias());
  LOWMEM_CHECK(fits, "[hf] the model's options (qk_norm ", c.qk_norm(),
               ", qkv_bias ", c.qkv_bias(), ", attention_bias ",
               c.attention_bias(), ", mlp_bias ", c.mlp_bias(),
               ", sliding_window ", c.sliding_window(), ") match none of ",
               supported_list());
  return out;
}

namespace {

json rope_scaling_json(const models::RopeScaling& s) {
  if (s.rope_type() == "default") return nullptr;
  json r = {{"rope_type", s.rope_type()}, {"factor", s.factor()}};
  if (s.rope_type() == "llama3") {
    r["low_freq_factor"] = s.low_freq_factor();
    r["high_freq_factor"] = s.high_freq_factor();
    r["original_max_position_embeddings"] =
        s.original_max_position_embeddings();
  }
  return r;
}

}  // namespace

json hf_config_json(const HfConfig& c, c10::ScalarType dtype) {
  const auto& l = c.llama;
  json j = c.raw.is_object() ? c.raw : json::object();
  j.erase("rope_parameters");  // written in the 4.x spelling below
  j.erase("dtype");
  j["architectures"] = json::array({c.architecture});
  j["model_type"] = c.model_type;
  j["vocab_size"] = l.vocab_size();
  j["hidden_size"] = l.hidden_size();
  j["intermediate_size"] = l.intermediate_size();
  j["num_hidden_layers"] = l.num_hidden_layers();
  j["num_attention_heads"] = l.num_attention_heads();
  j["num_key_value_heads"] = models::resolved_kv_heads(l);
  j["head_dim"] = models::resolved_head_dim(l);
  j["max_position_embeddings"] = l.max_position_embeddings();
  j["rms_norm_eps"] = l.rms_norm_eps();
  j["rope_theta"] = l.rope_theta();
  j["rope_scaling"] = rope_scaling_json(l.rope_scaling());
  j["initializer_range"] = l.initializer_range();
  j["tie_word_embeddings"] = l.tie_word_embeddings();
  j["hidden_act"] = "silu";
  j["torch_dtype"] = hf_dtype_name(dtype);
  if (c.model_type == "llama" || c.model_type == "qwen3")
    j["attention_bias"] = l.attention_bias();
  if (c.model_type == "llama") j["mlp_bias"] = l.mlp_bias();
  if (c.model_type == "mistral") {
    j["sliding_window"] =
        l.sliding_window() > 0 ? json(l.sliding_window()) : json(nullptr);
  }
  if (c.model_type == "qwen2" || c.model_type == "qwen3")
    j["use_sliding_window"] = false;
  return j;
}

}  // namespace lowmem::interop
