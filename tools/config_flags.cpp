#include <algorithm>
#include <iostream>

#include "command.h"
#include "lowmem/core/input.h"

namespace lowmem::tools {

std::vector<Command>& command_registry() {
  static std::vector<Command> registry;
  return registry;
}

std::vector<std::string>& program_args() {
  static std::vector<std::string> args;
  return args;
}

void print_error(const std::string& what) {
  // One line, bounded whatever a library message echoes.
  const std::string line = what.substr(0, what.find('\n'));
  std::cerr << "lowmem: error: " << clip(line, kMaxErrorLineBytes) << std::endl;
}

namespace {

std::string describe(const train::Field& f) {
  std::string d = f.type;
  const std::string v = f.get();
  d += " (default: " + (f.type == "string" && v.empty() ? "\"\"" : v) + ")";
  // The choices of the component keys, from the registries.
  std::vector<std::string> choices;
  if (f.name == "model") choices = train::known_models();
  if (f.name == "data") choices = train::known_data();
  if (f.name == "method") choices = train::known_methods();
  if (f.name == "optimizer" || f.name == "aux_optimizer")
    choices = train::known_optimizers();
  for (size_t i = 0; i < choices.size(); ++i)
    d += (i == 0 ? ": " : " | ") + choices[i];
  return d;
}

}  // namespace

ConfigFlags::ConfigFlags(CLI::App& sub) {
  sub.add_option("--recipe", recipe_,
                 "YAML recipe (recipes/*.yaml); flags override its values")
      ->check(CLI::ExistingFile);
  train::Config defaults;
  auto add = [&](const std::string& key, const std::string& names,
                 const train::Field& f, const std::string& group) {
    auto flag = std::make_unique<Flag>();
    flag->key = key;
    flag->option = sub.add_option(names, flag->value, describe(f));
    flag->option->group(group);
    // A flag given twice: the last value wins (as for most CLIs).
    flag->option->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    if (f.type == "bool") {
      // `--overwrite` alone means true; `--overwrite false` still parses.
      flag->option->expected(0, 1);
      flag->is_bool = true;
    }
    flag->option->type_name(f.type == "float" ? "FLOAT"
                            : f.type == "int" ? "INT"
                            : f.type == "bool" ? "BOOL"
                                               : "TEXT");
    flags_.push_back(std::move(flag));
  };
  for (const auto& f : defaults.top_fields()) {
    std::string names = "--" + f.name;
    std::string kebab = f.name;
    std::replace(kebab.begin(), kebab.end(), '_', '-');
    if (kebab != f.name) {
      names += ",--" + kebab;
    }
    add(f.name, names, f, "Training");
  }
  for (const auto& s : defaults.sections) {
    for (const auto& f : s.fields()) {
      const std::string key = s.name() + "." + f.name;
      // Short spellings of a few keys (torchrun/DeepSpeed users' habits).
      const std::string alias = key == "dist.zero_stage" ? ",--zero" : "";
      add(key, "--" + key + alias, f, s.help());
    }
  }
}

train::Config ConfigFlags::resolve() const {
  train::Config c;
  if (!recipe_.empty()) {
    c.apply_yaml_file(recipe_);
  }
  for (const auto& f : flags_) {
    if (f->option->count() > 0) {
      c.set(f->key, f->is_bool && f->value.empty() ? "true" : f->value);
    }
  }
  c.validate();
  return c;
}

}  // namespace lowmem::tools
