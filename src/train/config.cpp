#include "lowmem/train/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "components.h"
#include "lowmem/core/input.h"
#include "lowmem/train/device.h"

namespace lowmem::train {
namespace {

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) {
    s += (s.empty() ? "" : ", ") + x;
  }
  return s;
}

void check_choice(const std::string& key, const std::string& value,
                  const std::vector<std::string>& allowed) {
  if (std::find(allowed.begin(), allowed.end(), value) == allowed.end()) {
    throw ConfigError("unknown " + key + " " + quote(value) +
                      " (expected one of: " + join(allowed) + ")");
  }
}

void check(bool ok, const std::string& message) {
  if (!ok) {
    throw ConfigError(message);
  }
}

}  // namespace

Config::Config() : sections(detail::make_sections()) {}
Config::Config(const Config& other) = default;
Config& Config::operator=(const Config& other) = default;

std::vector<Field> Config::top_fields() {
  std::vector<Field> out;
  for_each_field([&out](const char* name, auto& ref) {
    detail::add_field(out, "", name, ref);
  });
  return out;
}

std::optional<Field> Config::top_field(const std::string& key) {
  std::optional<Field> out;
  for_each_field([&out, &key](const char* name, auto& ref) {
    if (out || key != name) return;
    std::vector<Field> one;
    detail::add_field(one, "", name, ref);
    if (!one.empty()) out = std::move(one.front());
  });
  return out;
}

const Section* Config::section(const std::string& name) const {
  for (const auto& s : sections) {
    if (s.name() == name) {
      return &s;
    }
  }
  return nullptr;
}

void Config::set(const std::string& key, const std::string& value) {
  const auto dot = key.find('.');
  if (dot == std::string::npos) {
    const auto f = top_field(key);
    if (!f) throw ConfigError("unknown key " + quote(key));
    f->set(value);
    return;
  }
  const std::string sec = key.substr(0, dot);
  const std::string field = key.substr(dot + 1);
  const Section* s = section(sec);
  if (s == nullptr) {
    throw ConfigError("unknown key " + quote(key) + " (no section " +
                      quote(sec) + ")");
  }
  const Field* f = s->find(field);
  if (f == nullptr) {
    throw ConfigError("unknown key " + quote(key));
  }
  f->set(value);
}

std::string Config::get(const std::string& key) {
  const auto dot = key.find('.');
  if (dot == std::string::npos) {
    if (const auto f = top_field(key)) return f->get();
  } else if (const Section* s = section(key.substr(0, dot))) {
    if (const Field* f = s->find(key.substr(dot + 1))) {
      return f->get();
    }
  }
  throw ConfigError("unknown key '" + key + "'");
}

std::vector<std::string> Config::keys() {
  std::vector<std::string> out;
  for (const auto& f : top_fields()) {
    out.push_back(f.name);
  }
  for (const auto& s : sections) {
    for (const auto& f : s.fields()) {
      out.push_back(s.name() + "." + f.name);
    }
  }
  return out;
}

void Config::apply_yaml_file(const std::string& path) {
  std::string text;
  try {
    // A recipe is a few dozen lines; /dev/zero or a huge file stops at the
    // limit instead of exhausting memory.
    text = read_file_limited(path, kMaxRecipeBytes, "recipe");
  } catch (const c10::Error& e) {
    throw ConfigError(e.what_without_backtrace());
  }
  apply_yaml(text, path);
}

void Config::apply_yaml(const std::string& text, const std::string& source) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw ConfigError(source + ": invalid YAML: " + clip(e.what()));
  }
  if (root.IsNull()) {
    return;
  }
  if (!root.IsMap()) {
    throw ConfigError(source + ": a recipe must be a map of keys");
  }
  auto scalar = [&](const YAML::Node& n, const std::string& key) {
    if (n.IsNull()) {
      return std::string();
    }
    if (!n.IsScalar()) {
      throw ConfigError(source + ": key " + quote(key) +
                        " must be a single value");
    }
    return n.Scalar();
  };
  try {
    for (const auto& item : root) {
      const std::string key = item.first.as<std::string>();
      if (item.second.IsMap()) {
        if (section(key) == nullptr) {
          throw ConfigError("unknown section " + quote(key));
        }
        for (const auto& sub : item.second) {
          const std::string k = key + "." + sub.first.as<std::string>();
          set(k, scalar(sub.second, k));
        }
      } else {
        set(key, scalar(item.second, key));
      }
    }
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    if (msg.rfind(source + ":", 0) == 0) {
      throw;
    }
    throw ConfigError(source + ": " + msg);
  } catch (const YAML::Exception& e) {
    throw ConfigError(source + ": invalid YAML: " + clip(e.what()));
  }
}

void Config::validate() const {
  check_choice("model", model, known_models());
  check_choice("data", data, known_data());
  check_choice("method", method, known_methods());
  check_choice("optimizer", optimizer, known_optimizers());
  check_choice("aux_optimizer", aux_optimizer, known_optimizers());
  check_choice("route", route, {"auto", "all", "matrices"});
  check(!detail::is_curvature_optimizer(aux_optimizer),
        "aux_optimizer cannot be " + aux_optimizer +
            " (it preconditions whole layers: main optimizer only)");
  check(!detail::is_curvature_optimizer(optimizer) ||
            (method != "galore" && method != "projected-adapter"),
        "method " + method + " needs an elementwise inner optimizer (adamw, "
        "sgd, came, adafactor), got " + optimizer);
  check(steps >= 1, "steps must be >= 1, got " + std::to_string(steps));
  check(batch_size >= 1,
        "batch_size must be >= 1, got " + std::to_string(batch_size));
  check(accum_steps >= 1,
        "accum_steps must be >= 1, got " + std::to_string(accum_steps));
  check(warmup_steps >= 0 && warmup_steps <= steps,
        "warmup_steps must be in [0, steps=" + std::to_string(steps) +
            "], got " + std::to_string(warmup_steps));
  check(min_lr_ratio >= 0.0 && min_lr_ratio <= 1.0,
        "min_lr_ratio must be in [0, 1], got " + format_float(min_lr_ratio));
  check(std::isfinite(clip_norm) && clip_norm >= 0.0,
        "clip_norm must be >= 0 (0 disables clipping), got " +
            format_float(clip_norm));
  check(eval_every >= 0,
        "eval_every must be >= 0, got " + std::to_string(eval_every));
  check(eval_batches >= 1,
        "eval_batches must be >= 1, got " + std::to_string(eval_batches));
  check(max_skips >= 1,
        "max_skips must be >= 1, got " + std::to_string(max_skips));
  check(seed >= 0, "seed must be >= 0, got " + std::to_string(seed));
  check(threads >= 0 && threads <= kMaxThreads,
        "threads must be in [0, " + std::to_string(kMaxThreads) + "], got " +
            std::to_string(threads));
  resolve_device(device);
  check(std::isfinite(dist_timeout_s) && dist_timeout_s > 0.0,
        "dist_timeout_s must be > 0, got " + format_float(dist_timeout_s));
  const int64_t zero = detail::zero_stage(*this);
  check(zero >= 0 && zero <= 2,
        "dist.zero_stage must be 0, 1 or 2, got " + std::to_string(zero));
  check(log_every >= 1,
        "log_every must be >= 1, got " + std::to_string(log_every));
  check(save_every >= 0,
        "save_every must be >= 0, got " + std::to_string(save_every));
  check(keep_checkpoints >= 0, "keep_checkpoints must be >= 0, got " +
                                   std::to_string(keep_checkpoints));
  check(resume != "auto" || !out_dir.empty(),
        "resume=auto needs out_dir (where the checkpoints are)");
  check(!overwrite || resume.empty(),
        "overwrite and resume exclude each other (overwrite starts a new run "
        "in out_dir; resume continues one)");
  check_choice("base_dtype", base_dtype, {"auto", "nf4"});
  check(base_dtype != "nf4" || (method != "full" && method != "galore"),
        "base_dtype nf4 keeps the base weights frozen in 4 bits: it needs an "
        "adapter method (lora, lotr, snell, projected-adapter), got method " +
            method);
  check(optim_bits == 0 || optim_bits == 8 || optim_bits == 32,
        "optim_bits must be 0 (each optimizer's own), 8 or 32, got " +
            std::to_string(optim_bits));
  with_optim_bits();
}

Config Config::with_optim_bits() const {
  Config c(*this);
  if (optim_bits == 0) return c;
  const std::string bits = std::to_string(optim_bits);
  bool main = false;
  for (const auto& name : {optimizer, aux_optimizer}) {
    const Section* s = c.section(detail::section_of("optimizer", name));
    if (s == nullptr || s->find("optim_bits") == nullptr) continue;
    c.set(s->name() + ".optim_bits", bits);
    main = main || name == optimizer;
  }
  check(main, "optim_bits " + bits + ": optimizer " + optimizer +
                  " has no 8-bit state (adamw, galore_adamw and came have)");
  return c;
}

bool Config::optimizer_has_optim_bits() const {
  const Section* s = section(detail::section_of("optimizer", optimizer));
  return s != nullptr && s->find("optim_bits") != nullptr;
}

std::vector<std::string> Config::active_sections() const {
  std::vector<std::string> out;
  auto add = [&](const std::string& kind, const std::string& name) {
    const std::string s = detail::section_of(kind, name);
    if (!s.empty() && std::find(out.begin(), out.end(), s) == out.end()) {
      out.push_back(s);
    }
  };
  add("model", model);
  add("data", data);
  add("method", method);
  add("optimizer", optimizer);
  add("optimizer", aux_optimizer);
  out.push_back("dist");
  return out;
}

std::string Config::to_yaml(bool all) const {
  Config copy(*this);
  YAML::Emitter out;
  out << YAML::BeginMap;
  for (const auto& f : copy.top_fields()) {
    out << YAML::Key << f.name << YAML::Value;
    if (f.type == "string") {
      out << YAML::DoubleQuoted << f.get();
    } else {
      out << f.get();
    }
  }
  const auto active = active_sections();
  for (const auto& s : copy.sections) {
    if (!all &&
        std::find(active.begin(), active.end(), s.name()) == active.end()) {
      continue;
    }
    if (s.fields().empty()) {
      continue;
    }
    out << YAML::Key << s.name() << YAML::Value << YAML::BeginMap;
    for (const auto& f : s.fields()) {
      out << YAML::Key << f.name << YAML::Value;
      if (f.type == "string") {
        out << YAML::DoubleQuoted << f.get();
      } else {
        out << f.get();
      }
    }
    out << YAML::EndMap;
  }
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

std::vector<std::string> known_models() {
  return detail::names_of("model");
}
std::vector<std::string> known_data() {
  return detail::names_of("data");
}
std::vector<std::string> known_methods() {
  return detail::names_of("method");
}
std::vector<std::string> known_optimizers() {
  return detail::names_of("optimizer");
}

}  // namespace lowmem::train
