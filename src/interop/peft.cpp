#include "lowmem/interop/peft.h"

#include <ATen/ATen.h>

#include <filesystem>
#include <map>
#include <set>

#include "lowmem/adapters/adapter_file.h"
#include "lowmem/adapters/inject.h"
#include "lowmem/core/check.h"
#include "lowmem/core/input.h"
#include "lowmem/core/json.h"
#include "lowmem/io/atomic_file.h"
#include "lowmem/io/safetensors.h"

namespace lowmem::interop {

std::string peft_adapter_config(const adapters::AdapterModel& adapter,
                                const std::string& base_model) {
  nlohmann::json j = parse_json(adapter.config_json(), "adapter_config.json");
  j["task_type"] = "CAUSAL_LM";
  j["base_model_name_or_path"] =
      base_model.empty() ? nlohmann::json(nullptr) : nlohmann::json(base_model);
  // PEFT replaces "all-linear" by the names of the linear layers it wraps
  // (the last component of each module path) before saving.
  if (adapter.targets().target_modules() ==
      std::vector<std::string>{"all-linear"}) {
    std::set<std::string> names;
    for (const auto& l : adapter.layers()) {
      const size_t dot = l.path.rfind('.');
      names.insert(dot == std::string::npos ? l.path : l.path.substr(dot + 1));
    }
    j["target_modules"] = std::vector<std::string>(names.begin(), names.end());
  }
  return j.dump(2);
}

std::vector<std::string> save_peft_adapter(
    const adapters::AdapterModel& adapter, const std::string& dir,
    const std::string& base_model, c10::optional<c10::ScalarType> dtype) {
  LOWMEM_CHECK(!adapter.unloaded(), "[peft] the adapter was unloaded");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  LOWMEM_CHECK(!ec, "[peft] cannot create ", quote(dir), ": ", ec.message());
  std::map<std::string, at::Tensor> tensors;
  for (const auto& [name, t] : adapter.state_tensors()) {
    at::Tensor v = t.detach().to(at::kCPU);
    tensors.emplace(name, dtype ? v.to(*dtype) : v);
  }
  io::save_safetensors(dir + "/" + adapters::kAdapterWeightsFile, tensors,
                       {{"format", "pt"}});
  io::atomic_write_file(dir + "/" + adapters::kAdapterConfigFile,
                        peft_adapter_config(adapter, base_model) + "\n");
  return {adapters::kAdapterWeightsFile, adapters::kAdapterConfigFile};
}

}  // namespace lowmem::interop
