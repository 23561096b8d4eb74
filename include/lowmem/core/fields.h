// Type-erased option sections for configuration files and command lines. A
// Section owns one options object (CameOptions, LoraOptions, ...) and exposes
// the scalar fields its `for_each_field` visitor lists as string-settable
// Fields, so CLI flags (--came.beta3), YAML keys and the printed configuration
// all come from that one list. Unknown keys and unparsable values throw
// ConfigError (the CLI maps it to exit code 2).
#pragma once

#include <c10/util/Optional.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

namespace lowmem {

/// A usage error: unknown key, unparsable or out-of-range value.
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Strict parsers: the whole string must be consumed. `what` names the key in
/// the error ("bad value 'x' for --steps: expected an integer").
double parse_float(const std::string& s, const std::string& what);
int64_t parse_int(const std::string& s, const std::string& what);
bool parse_bool(const std::string& s, const std::string& what);
/// Shortest text that parses back to the same double ("0.001", "1e-30").
std::string format_float(double v);

/// One settable scalar field.
struct Field {
  std::string name;  // "beta3"
  std::string type;  // "float", "int", "bool" or "string"
  std::function<std::string()> get;
  std::function<void(const std::string&)> set;  // throws ConfigError
};

namespace detail {

template <class T>
struct is_optional : std::false_type {};
template <class T>
struct is_optional<c10::optional<T>> : std::true_type {};

/// Appends a Field for `ref` when its type is supported; other field types
/// (tensors, vectors) are not settable from text and are skipped.
template <class T>
void add_field(std::vector<Field>& out, const std::string& section,
               const char* name, T& ref) {
  using U = std::decay_t<T>;
  const std::string key =
      section.empty() ? std::string(name) : section + "." + name;
  T* p = &ref;
  Field f;
  f.name = name;
  if constexpr (std::is_same_v<U, bool>) {
    f.type = "bool";
    f.get = [p] { return std::string(*p ? "true" : "false"); };
    f.set = [p, key](const std::string& s) { *p = parse_bool(s, key); };
  } else if constexpr (std::is_integral_v<U>) {
    f.type = "int";
    f.get = [p] { return std::to_string(*p); };
    f.set = [p, key](const std::string& s) {
      const int64_t v = parse_int(s, key);
      if (static_cast<int64_t>(static_cast<U>(v)) != v) {
        throw ConfigError("value " + s + " for " + key + " is out of range");
      }
      *p = static_cast<U>(v);
    };
  } else if constexpr (std::is_floating_point_v<U>) {
    f.type = "float";
    f.get = [p] { return format_float(static_cast<double>(*p)); };
    f.set = [p, key](const std::string& s) {
      *p = static_cast<U>(parse_float(s, key));
    };
  } else if constexpr (is_optional<U>::value &&
                       std::is_floating_point_v<typename U::value_type>) {
    // An optional number: "none" (or empty) leaves it unset.
    f.type = "float";
    f.get = [p] { return *p ? format_float(**p) : std::string("none"); };
    f.set = [p, key](const std::string& s) {
      if (s.empty() || s == "none" || s == "null" || s == "~") {
        *p = c10::nullopt;
      } else {
        *p = parse_float(s, key);
      }
    };
  } else if constexpr (std::is_same_v<U, std::string>) {
    f.type = "string";
    f.get = [p] { return *p; };
    f.set = [p](const std::string& s) { *p = s; };
  } else {
    return;
  }
  out.push_back(std::move(f));
}

}  // namespace detail

/// The fields of one options object, collected from its for_each_field when
/// first asked for (fields(), find()): a train::Config holds every
/// component's section, and most uses touch a few of them, so building all
/// of them up front was most of the cost of constructing one (the recipe fuzz
/// target: a few thousand allocations per input).
class Section {
 public:
  Section() = default;
  Section(const Section& other) { *this = other; }
  Section& operator=(const Section& other) {
    if (this != &other) {
      *this = other.clone_ ? other.clone_(other) : Section();
    }
    return *this;
  }
  Section(Section&&) = default;
  Section& operator=(Section&&) = default;

  /// A section named `name` holding a copy of `initial`.
  template <class T>
  static Section of(std::string name, std::string help, T initial = T{}) {
    Section s;
    s.name_ = std::move(name);
    s.help_ = std::move(help);
    s.type_ = &typeid(T);
    s.object_ = std::make_shared<T>(std::move(initial));
    s.fill_ = [](const std::string& section, void* o, std::vector<Field>& out) {
      static_cast<T*>(o)->for_each_field(
          [&out, &section](const char* field, auto& ref) {
            detail::add_field(out, section, field, ref);
          });
    };
    s.clone_ = [](const Section& from) {
      return Section::of<T>(from.name_, from.help_,
                            *static_cast<const T*>(from.object_.get()));
    };
    return s;
  }

  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  /// Built on the first call (thread-safe); the fields read and write the
  /// options object, which the section shares with its moved-to copies.
  const std::vector<Field>& fields() const {
    if (fill_ != nullptr && built_ != nullptr) {
      std::call_once(*built_, [this] { fill_(name_, object_.get(), fields_); });
    }
    return fields_;
  }
  /// The field called `key`, or nullptr.
  const Field* find(const std::string& key) const;
  /// The options object (throws std::bad_cast if T is not its type).
  template <class T>
  const T& get() const {
    if (type_ == nullptr || *type_ != typeid(T)) {
      throw std::bad_cast();
    }
    return *static_cast<const T*>(object_.get());
  }

 private:
  std::string name_, help_;
  std::shared_ptr<void> object_;
  const std::type_info* type_ = nullptr;
  mutable std::vector<Field> fields_;
  std::unique_ptr<std::once_flag> built_ = std::make_unique<std::once_flag>();
  void (*fill_)(const std::string&, void*, std::vector<Field>&) = nullptr;
  Section (*clone_)(const Section&) = nullptr;
};

}  // namespace lowmem
