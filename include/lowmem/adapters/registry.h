// The adapter registry: one row per adapter method (LoRA, LoTR, SNELL). A row
// holds the method name (lowmem train's `method` value and the name of its
// option section, whose fields are the CLI flags and YAML keys
// "<method>.<field>"), the PEFT type written to and read from
// adapter_config.json, the options with their defaults, the injection, and
// the reader of a saved config. lowmem train's sections and method list,
// load_adapter's dispatch on peft_type and lowmem compare's `--set` keys all
// read this table.
//
// Adding an adapter: its own files, one row in src/adapters/registry.cpp (or
// register_adapter() from outside the library), its tests and docs.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "lowmem/adapters/inject.h"
#include "lowmem/core/fields.h"

namespace lowmem::adapters {

struct AdapterKind {
  /// "lora": the config value of `method` and the option section's name.
  std::string method;
  /// "LORA": adapter_config.json's peft_type.
  std::string peft_type;
  /// One line for --help: "LoRA (adapters/lora.h)".
  std::string help;
  /// A section named `method` holding the default options.
  std::function<Section()> options;
  /// Injects the adapter into `model`'s slots selected by `targets`, with the
  /// options of a section made by `options`.
  std::function<std::shared_ptr<AdapterModel>(
      std::shared_ptr<torch::nn::Module> model, const TargetOptions& targets,
      const Section& options)>
      inject;
  /// Reads adapter_config.json text into targets and a section of options.
  std::function<std::pair<TargetOptions, Section>(const std::string& json)>
      from_json;
};

/// Every registered adapter, built-in rows first.
const std::vector<AdapterKind>& adapter_kinds();
/// The row of method `method` / of PEFT type `peft_type`, or nullptr.
const AdapterKind* find_adapter(const std::string& method);
const AdapterKind* find_adapter_by_peft_type(const std::string& peft_type);
/// Adds a row; throws lowmem::ConfigError when the method or PEFT type is
/// taken or a function is missing.
void register_adapter(AdapterKind kind);

/// A row for an adapter with options type Options, injected by
/// inject(model, targets, options) and read by from_json(text).
template <class Options, class Inject, class FromJson>
AdapterKind adapter_kind(std::string method, std::string peft_type,
                         std::string help, Options defaults, Inject inject,
                         FromJson from_json) {
  AdapterKind k;
  k.method = method;
  k.peft_type = std::move(peft_type);
  k.help = help;
  k.options = [method, help, defaults] {
    return Section::of<Options>(method, help, defaults);
  };
  k.inject = [inject](std::shared_ptr<torch::nn::Module> model,
                      const TargetOptions& targets, const Section& s) {
    return std::shared_ptr<AdapterModel>(
        inject(std::move(model), targets, s.get<Options>()));
  };
  k.from_json = [from_json, method, help](const std::string& json) {
    auto [targets, options] = from_json(json);
    return std::make_pair(targets, Section::of<Options>(method, help, options));
  };
  return k;
}

}  // namespace lowmem::adapters
