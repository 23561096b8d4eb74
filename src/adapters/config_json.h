// Internal: JSON helpers shared by the adapters' adapter_config.json code.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <type_traits>

#include "lowmem/adapters/inject.h"
#include "lowmem/core/check.h"
#include "lowmem/core/json.h"

namespace lowmem::adapters::detail {

using json = nlohmann::json;

/// Parses adapter_config.json text within core/json.h's limits (16 MiB,
/// 128 levels); throws unless it is an object.
json parse_config(const std::string& text, const char* component);

/// The text of an adapter_config.json file, at most kMaxJsonBytes.
std::string read_config_file(const std::string& path);

/// target_modules / exclude_modules / modules_to_save as PEFT writes them.
void put_targets(json& j, const TargetOptions& t);
TargetOptions get_targets(const json& j, const char* component);

/// j[key] as T, or `fallback` if absent/null; throws naming the key on a type
/// mismatch.
template <class T>
T get_or(const json& j, const char* key, T fallback, const char* component) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    // A float (or a too large unsigned) into an integer is checked first:
    // the JSON library's conversion of 1e300 to an integer is undefined.
    if (it->is_number_float()) {
      const double d = it->template get<double>();
      LOWMEM_CHECK(
          std::isfinite(d) &&
              d >= static_cast<double>(std::numeric_limits<T>::min()) &&
              d < static_cast<double>(std::numeric_limits<T>::max()),
          "[", component, "] adapter_config.json field '", key,
          "' is out of range: ", clip_json(*it));
    } else if (it->is_number_unsigned()) {
      LOWMEM_CHECK(it->template get<uint64_t>() <=
                       static_cast<uint64_t>(std::numeric_limits<T>::max()),
                   "[", component, "] adapter_config.json field '", key,
                   "' is out of range: ", clip_json(*it));
    }
  }
  try {
    return it->get<T>();
  } catch (const json::exception&) {
    LOWMEM_CHECK(false, "[", component, "] adapter_config.json field '", key,
                 "' has the wrong type: ", clip_json(*it));
  }
  return fallback;
}

/// A number written as an integer when it is one (PEFT stores lora_alpha as int).
json number(double v);

}  // namespace lowmem::adapters::detail
