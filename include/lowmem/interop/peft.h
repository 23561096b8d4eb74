// An adapter in Hugging Face PEFT's layout for a causal LM loaded from a
// Hugging Face directory (peft/peft_model.py save_pretrained,
// peft/utils/save_and_load.py get_peft_model_state_dict): the tensors of
// adapters::save_adapter under PEFT's module paths
// ("base_model.model.model.layers.<i>.self_attn.q_proj.lora_A.weight": the
// PeftModelForCausalLM prefix "base_model.model." + the transformers module
// path, adapter name "default" removed), and adapter_config.json with
// task_type "CAUSAL_LM", base_model_name_or_path and, for a model adapted
// with `all-linear`, target_modules resolved to the adapted modules' names
// (as PEFT's _maybe_include_all_linear_layers stores them). LoRA files load
// in PEFT; LoTR and SNELL files use the same scheme with lowmem's own
// peft_type, which only lowmem reads (docs/adapters.md).
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/Optional.h>

#include <string>
#include <vector>

namespace lowmem::adapters {
class AdapterModel;
}

namespace lowmem::interop {

/// adapter_config.json for `adapter` on the causal LM `base_model` (its
/// name or path, as from_pretrained takes it).
std::string peft_adapter_config(const adapters::AdapterModel& adapter,
                                const std::string& base_model);

/// Writes adapter_model.safetensors ({"format": "pt"}; tensors converted to
/// `dtype` when given) and adapter_config.json into `dir` (created if
/// absent), each atomically. Returns the file names written.
std::vector<std::string> save_peft_adapter(
    const adapters::AdapterModel& adapter, const std::string& dir,
    const std::string& base_model,
    c10::optional<c10::ScalarType> dtype = c10::nullopt);

}  // namespace lowmem::interop
