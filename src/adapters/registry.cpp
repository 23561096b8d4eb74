// The built-in rows of the adapter registry (adapters/registry.h).
#include "lowmem/adapters/registry.h"

#include <mutex>

#include "lowmem/adapters/lora.h"
#include "lowmem/adapters/lotr.h"
#include "lowmem/adapters/snell.h"

namespace lowmem::adapters {
namespace {

std::vector<AdapterKind>& table() {
  // One row per adapter: method, PEFT type, help, defaults, inject, reader.
  static std::vector<AdapterKind> rows = {
      adapter_kind("lora", "LORA", "LoRA (adapters/lora.h)", LoraOptions(),
                   inject_lora, lora_config_from_json),
      adapter_kind("lotr", "LOTR", "LoTR (adapters/lotr.h)", LotrOptions(),
                   inject_lotr, lotr_config_from_json),
      adapter_kind("snell", "SNELL", "SNELL (adapters/snell.h)", SnellOptions(),
                   inject_snell, snell_config_from_json),
  };
  return rows;
}

}  // namespace

const std::vector<AdapterKind>& adapter_kinds() { return table(); }

const AdapterKind* find_adapter(const std::string& method) {
  for (const auto& k : table())
    if (k.method == method) return &k;
  return nullptr;
}

const AdapterKind* find_adapter_by_peft_type(const std::string& peft_type) {
  for (const auto& k : table())
    if (k.peft_type == peft_type) return &k;
  return nullptr;
}

void register_adapter(AdapterKind kind) {
  static std::mutex m;
  std::lock_guard<std::mutex> lock(m);
  if (kind.method.empty() || find_adapter(kind.method) != nullptr ||
      find_adapter_by_peft_type(kind.peft_type) != nullptr) {
    throw ConfigError("register_adapter: method '" + kind.method +
                      "' or PEFT type '" + kind.peft_type +
                      "' is empty or taken");
  }
  if (!kind.options || !kind.inject || !kind.from_json) {
    throw ConfigError("register_adapter: '" + kind.method +
                      "' needs options, inject and from_json");
  }
  table().push_back(std::move(kind));
}

}  // namespace lowmem::adapters
