// Adapter files in the Hugging Face PEFT layout (peft/utils/save_and_load.py,
// peft/config.py): <dir>/adapter_model.safetensors (metadata {"format": "pt"})
// and <dir>/adapter_config.json. LoRA files load in PEFT for a model with the
// same module names; LoTR and SNELL use the same scheme (docs/adapters.md).
#pragma once

#include <memory>
#include <string>

#include "lowmem/adapters/inject.h"

namespace lowmem::adapters {

inline constexpr const char* kAdapterWeightsFile = "adapter_model.safetensors";
inline constexpr const char* kAdapterConfigFile = "adapter_config.json";

/// Writes the adapter's tensors and config into `dir` (created if missing),
/// each file atomically.
void save_adapter(const AdapterModel& adapter, const std::string& dir);

/// Loads saved tensors into an injected adapter. Everything is checked first
/// (config matches, every tensor present with the right shape, no unknown
/// tensor); on any mismatch a c10::Error names it and nothing is modified.
void load_adapter(AdapterModel& adapter, const std::string& dir);

/// PeftModel.from_pretrained: reads adapter_config.json, injects the method it
/// names ("LORA", "LOTR", "SNELL") into `model`, then loads the tensors. On
/// failure the injection is undone and the model is left as it was.
std::shared_ptr<AdapterModel> load_adapter(std::shared_ptr<torch::nn::Module> model,
                                           const std::string& dir);

}  // namespace lowmem::adapters
