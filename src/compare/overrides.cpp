// `lowmem compare --set section.field=value`: the keys are those of `lowmem
// train`'s option sections (train::Config), checked here before any work and
// applied over each method's own keys (method_config, methods.cpp).
#include <string>
#include <utility>
#include <vector>

#include "internal.h"
#include "lowmem/adapters/registry.h"
#include "lowmem/optim/registry.h"
#include "lowmem/train/config.h"

namespace lowmem::compare {
namespace {

std::pair<std::string, std::string> split(const std::string& item) {
  const auto eq = item.find('=');
  if (eq == std::string::npos || eq == 0) {
    throw ConfigError("--set '" + item +
                      "': expected KEY=VALUE (e.g. came.beta3=0.999)");
  }
  return {item.substr(0, eq), item.substr(eq + 1)};
}

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

}  // namespace

std::vector<std::string> override_sections() {
  // The components compare's methods build: every registered optimizer and
  // adapter, and the two projection methods.
  std::vector<std::string> out;
  for (const auto& o : optim::optimizers()) out.push_back(o.name);
  out.push_back("galore");
  out.push_back("projected_adapter");
  for (const auto& a : adapters::adapter_kinds()) out.push_back(a.method);
  return out;
}

void validate_overrides(const std::vector<std::string>& overrides) {
  const auto sections = override_sections();
  for (const auto& item : overrides) {
    const auto [key, value] = split(item);
    train::Config config;
    try {
      config.set(key, value);  // unknown key, unparsable value
    } catch (const ConfigError& e) {
      throw ConfigError(std::string("--set ") + item + ": " + e.what());
    }
    const auto dot = key.find('.');
    if (dot == std::string::npos) {
      throw ConfigError("--set " + item + ": '" + key +
                        "' is a top-level key of lowmem train; compare takes "
                        "option-section keys (section.field, e.g. came.beta3) "
                        "and has its own flags for the rest (--lr, --clip-norm, "
                        "--seed, --steps, ...)");
    }
    const std::string section = key.substr(0, dot);
    if (std::find(sections.begin(), sections.end(), section) == sections.end()) {
      throw ConfigError("--set " + item + ": section '" + section +
                        "' is not used by compare (it applies " +
                        joined(sections) +
                        "; the models and data are set by compare's own "
                        "flags, e.g. --gpt-width, --text)");
    }
  }
}

}  // namespace lowmem::compare
