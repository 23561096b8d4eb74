#include "lowmem/adapters/adapter_file.h"

#include <ATen/ATen.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "config_json.h"
#include "lowmem/adapters/registry.h"
#include "lowmem/core/check.h"
#include "lowmem/io/atomic_file.h"
#include "lowmem/io/safetensors.h"

namespace lowmem::adapters {
namespace {

void make_dirs(const std::string& dir) {
  LOWMEM_CHECK(!dir.empty(), "[adapter_file] empty directory name");
  std::string cur;
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = dir.find('/', pos + 1);
    cur = dir.substr(0, pos);
    if (cur.empty()) continue;
    if (::mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST) {
      LOWMEM_CHECK(false, "[adapter_file] cannot create directory '", cur,
                   "': ", std::strerror(errno));
    }
  }
}

std::string shape_str(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

}  // namespace

void save_adapter(const AdapterModel& adapter, const std::string& dir) {
  LOWMEM_CHECK(!adapter.unloaded(), "[adapter_file] the adapter was unloaded");
  make_dirs(dir);
  io::save_safetensors(dir + "/" + kAdapterWeightsFile, adapter.state_tensors(),
                       {{"format", "pt"}});
  io::atomic_write_file(dir + "/" + kAdapterConfigFile, adapter.config_json() + "\n");
}

void load_adapter(AdapterModel& adapter, const std::string& dir) {
  LOWMEM_CHECK(!adapter.unloaded(), "[adapter_file] the adapter was unloaded");
  LOWMEM_CHECK(!adapter.merged(), "[adapter_file] unmerge the adapter before loading");
  const std::string cfg_path = dir + "/" + kAdapterConfigFile;
  const std::string st_path = dir + "/" + kAdapterWeightsFile;
  adapter.check_config(detail::read_config_file(cfg_path));
  io::SafetensorsFile file = io::load_safetensors(st_path);
  std::map<std::string, at::Tensor> live = adapter.state_tensors();
  // Check everything before copying anything.
  std::string missing, unexpected;
  for (const auto& kv : live) {
    if (!file.tensors.count(kv.first)) missing += (missing.empty() ? "" : ", ") + kv.first;
  }
  for (const auto& kv : file.tensors) {
    if (!live.count(kv.first))
      unexpected += (unexpected.empty() ? "" : ", ") + kv.first;
  }
  LOWMEM_CHECK(missing.empty() && unexpected.empty(), "[adapter_file] ", st_path,
               " does not match the model:",
               missing.empty() ? "" : " missing tensors {" + missing + "}",
               unexpected.empty() ? "" : " unexpected tensors {" + unexpected + "}");
  for (const auto& kv : live) {
    const at::Tensor& t = file.tensors.at(kv.first);
    LOWMEM_CHECK(t.sizes() == kv.second.sizes(), "[adapter_file] ", st_path,
                 ": tensor '", kv.first, "' has shape ", shape_str(t.sizes()),
                 " but the model needs ", shape_str(kv.second.sizes()));
    LOWMEM_CHECK(at::isFloatingType(t.scalar_type()), "[adapter_file] ", st_path,
                 ": tensor '", kv.first, "' has non-float dtype ",
                 c10::toString(t.scalar_type()));
  }
  at::NoGradGuard g;
  for (auto& kv : live) kv.second.copy_(file.tensors.at(kv.first));
}

std::shared_ptr<AdapterModel> load_adapter(std::shared_ptr<torch::nn::Module> model,
                                           const std::string& dir) {
  const std::string text =
      detail::read_config_file(dir + "/" + kAdapterConfigFile);
  detail::json j = detail::parse_config(text, "adapter_file");
  const std::string type = detail::get_or<std::string>(j, "peft_type", "", "adapter_file");
  const AdapterKind* kind = find_adapter_by_peft_type(type);
  if (kind == nullptr) {
    std::string known;
    for (const auto& k : adapter_kinds())
      known += (known.empty() ? "" : ", ") + k.peft_type;
    LOWMEM_CHECK(false, "[adapter_file] ", dir, "/", kAdapterConfigFile,
                 ": unsupported peft_type ", quote(type), " (", known, ")");
  }
  auto [targets, options] = kind->from_json(text);
  std::shared_ptr<AdapterModel> adapter = kind->inject(model, targets, options);
  if (auto* b = j.find("base_model_name_or_path") != j.end() &&
                        j["base_model_name_or_path"].is_string()
                    ? &j["base_model_name_or_path"]
                    : nullptr) {
    adapter->base_model_name_or_path = b->get<std::string>();
  }
  try {
    load_adapter(*adapter, dir);
  } catch (...) {
    adapter->unload();
    throw;
  }
  return adapter;
}

}  // namespace lowmem::adapters
