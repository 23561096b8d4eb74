#include "lowmem/core/fields.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "lowmem/core/input.h"

namespace lowmem {
namespace {

std::string trimmed(const std::string& s) {
  const auto b = s.find_first_not_of(" \t");
  if (b == std::string::npos) {
    return "";
  }
  const auto e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}

}  // namespace

double parse_float(const std::string& raw, const std::string& what) {
  const std::string s = trimmed(raw);
  if (s.empty()) {
    throw ConfigError("empty value for " + what + ": expected a number");
  }
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size()) {
    throw ConfigError("bad value " + quote(raw) + " for " + what +
                      ": expected a number");
  }
  if (errno == ERANGE && std::isinf(v)) {
    throw ConfigError("value " + clip(raw) + " for " + what +
                      " is out of range");
  }
  if (std::isnan(v)) {
    throw ConfigError("bad value " + quote(raw) + " for " + what +
                      ": NaN is not allowed");
  }
  return v;
}

int64_t parse_int(const std::string& raw, const std::string& what) {
  const std::string s = trimmed(raw);
  if (s.empty()) {
    throw ConfigError("empty value for " + what + ": expected an integer");
  }
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (end != s.c_str() + s.size()) {
    throw ConfigError("bad value " + quote(raw) + " for " + what +
                      ": expected an integer");
  }
  if (errno == ERANGE) {
    throw ConfigError("value " + clip(raw) + " for " + what +
                      " is out of range");
  }
  return static_cast<int64_t>(v);
}

bool parse_bool(const std::string& raw, const std::string& what) {
  const std::string s = trimmed(raw);
  if (s == "true" || s == "1" || s == "yes" || s == "on") {
    return true;
  }
  if (s == "false" || s == "0" || s == "no" || s == "off") {
    return false;
  }
  throw ConfigError("bad value " + quote(raw) + " for " + what +
                    ": expected true or false");
}

std::string format_float(double v) {
  char buf[64];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) {
      break;
    }
  }
  std::string s(buf);
  // Keep a float-looking form for YAML readers ("1" -> "1.0").
  if (s.find_first_of(".eEn") == std::string::npos) {
    s += ".0";
  }
  return s;
}

const Field* Section::find(const std::string& key) const {
  for (const auto& f : fields()) {
    if (f.name == key) {
      return &f;
    }
  }
  return nullptr;
}

}  // namespace lowmem
