#include "config_json.h"

#include <cmath>

namespace lowmem::adapters::detail {

json parse_config(const std::string& text, const char* component) {
  // Size and nesting are checked before parsing (core/json.h).
  json j = parse_json(text, "adapter_config.json");
  LOWMEM_CHECK(j.is_object(), "[", component,
               "] adapter_config.json must hold a JSON object, got ",
               clip_json(j));
  return j;
}

std::string read_config_file(const std::string& path) {
  return read_file_limited(path, kMaxJsonBytes, "[adapter_file] config");
}

void put_targets(json& j, const TargetOptions& t) {
  if (!t.target_regex().empty()) {
    j["target_modules"] = t.target_regex();
  } else {
    j["target_modules"] = t.target_modules();
  }
  if (!t.exclude_regex().empty()) {
    j["exclude_modules"] = t.exclude_regex();
  } else if (!t.exclude_modules().empty()) {
    j["exclude_modules"] = t.exclude_modules();
  } else {
    j["exclude_modules"] = nullptr;
  }
  if (t.modules_to_save().empty()) {
    j["modules_to_save"] = nullptr;
  } else {
    j["modules_to_save"] = t.modules_to_save();
  }
}

TargetOptions get_targets(const json& j, const char* component) {
  TargetOptions t;
  auto tm = j.find("target_modules");
  LOWMEM_CHECK(tm != j.end() && !tm->is_null(), "[", component,
               "] adapter_config.json has no target_modules (per-architecture "
               "defaults are not supported)");
  if (tm->is_string()) {
    t.target_regex(tm->get<std::string>());
  } else {
    t.target_modules(get_or<std::vector<std::string>>(j, "target_modules", {}, component));
  }
  auto ex = j.find("exclude_modules");
  if (ex != j.end() && ex->is_string()) {
    t.exclude_regex(ex->get<std::string>());
  } else {
    t.exclude_modules(get_or<std::vector<std::string>>(j, "exclude_modules", {}, component));
  }
  t.modules_to_save(get_or<std::vector<std::string>>(j, "modules_to_save", {}, component));
  return t;
}

json number(double v) {
  if (std::floor(v) == v && std::abs(v) < 9e15) return static_cast<int64_t>(v);
  return v;
}

}  // namespace lowmem::adapters::detail
