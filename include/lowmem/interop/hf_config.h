// Hugging Face model directories, the configuration: config.json of
// LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM and Qwen3ForCausalLM
// (transformers' configuration_{llama,mistral,qwen2,qwen3}.py: field names,
// and the defaults used where a key is absent) read into models::LlamaConfig,
// and written back for transformers' from_pretrained. Both spellings of RoPE
// settings are read: rope_theta + rope_scaling (transformers 4.x, "type" or
// "rope_type") and rope_parameters (5.x). Refused, each with one error naming
// the value: another architecture, hidden_act other than silu, a rope type
// other than default/linear/llama3, partial_rotary_factor != 1, Qwen's
// use_sliding_window (per-layer windows are not implemented).
#pragma once

#include <c10/core/ScalarType.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lowmem/models/llama.h"

namespace lowmem::interop {

/// The architectures read, as config.json's "architectures" names them.
const std::vector<std::string>& hf_architectures();

/// A parsed config.json.
struct HfConfig {
  std::string architecture;  // "LlamaForCausalLM", ...
  std::string model_type;    // "llama", "mistral", "qwen2", "qwen3"
  /// torch_dtype (5.x: dtype) of the stored weights; float32 when absent.
  c10::ScalarType torch_dtype = c10::kFloat;
  /// The model (dtype and device left at their defaults).
  models::LlamaConfig llama;
  /// The whole document: keys lowmem does not use (token ids, ...) are
  /// written back unchanged by hf_config_json.
  nlohmann::json raw = nlohmann::json::object();
};

/// Reads `j` (named `source` in errors). Throws c10::Error "[hf] <source>:
/// ..." naming the key and value at fault.
HfConfig parse_hf_config(const nlohmann::json& j, const std::string& source);
/// `dir`/config.json, size- and depth-bounded (core/json.h).
HfConfig read_hf_config(const std::string& dir);

/// The configuration of a model built in lowmem: the architecture follows
/// from its options (qk_norm: Qwen3; qkv_bias: Qwen2; sliding_window:
/// Mistral; otherwise Llama). Throws when the options fit none (e.g. qk_norm
/// with mlp_bias).
HfConfig hf_config_for(const models::LlamaConfig& c);

/// config.json for `c` with the weights stored in `dtype`: `raw` with the
/// architecture's fields set from `c.llama` (transformers 4.x spelling).
nlohmann::json hf_config_json(const HfConfig& c, c10::ScalarType dtype);

/// "float32", "float16", "bfloat16" (also "float64") as torch_dtype spells
/// them; throws for other types.
std::string hf_dtype_name(c10::ScalarType t);
/// Inverse of hf_dtype_name (also accepts "fp32", "fp16", "bf16"); throws
/// naming the string.
c10::ScalarType hf_dtype_from_name(const std::string& name);

}  // namespace lowmem::interop
