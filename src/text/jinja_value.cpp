// Values of the Jinja runtime and the JavaScript string/number semantics of
// @huggingface/jinja 0.5.11 (runtime.ts: RuntimeValue and subclasses, toJSON;
// ECMA-262 Number::toString, IsLooselyEqual, StringToNumber, String.trim).
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "jinja.h"

namespace lowmem::text::jinja {
namespace {

// Decodes the UTF-8 code point at s[i]; invalid bytes: U+FFFD, length 1.
std::pair<char32_t, size_t> decode(const std::string& s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) return {c, 1};
  size_t len = 0;
  char32_t cp = 0;
  if ((c & 0xE0) == 0xC0) {
    len = 2;
    cp = c & 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    len = 3;
    cp = c & 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    len = 4;
    cp = c & 0x07;
  } else {
    return {0xFFFD, 1};
  }
  if (i + len > s.size()) return {0xFFFD, 1};
  for (size_t k = 1; k < len; ++k) {
    const auto d = static_cast<unsigned char>(s[i + k]);
    if ((d & 0xC0) != 0x80) return {0xFFFD, 1};
    cp = (cp << 6) | (d & 0x3F);
  }
  static const char32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
    return {0xFFFD, 1};
  return {cp, len};
}

bool is_js_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
         c == 0x202F || c == 0x205F || c == 0x3000 || c == 0xFEFF;
}

// Blocks of scripts with letter case (Unicode's cased letters live there).
bool in_cased_block(char32_t c) {
  static const std::pair<char32_t, char32_t> kBlocks[] = {
      {0x00B5, 0x00B5},   {0x00C0, 0x02AF},   {0x0345, 0x0345},
      {0x0370, 0x052F},   {0x0531, 0x0587},   {0x10A0, 0x10FF},
      {0x13A0, 0x13FF},   {0x1C80, 0x1CBF},   {0x1D00, 0x1DBF},
      {0x1E00, 0x1FFF},   {0x2126, 0x2132},   {0x214E, 0x214E},
      {0x2160, 0x2188},   {0x24B6, 0x24E9},   {0x2C00, 0x2D2F},
      {0xA640, 0xA69F},   {0xA722, 0xA7FF},   {0xAB30, 0xABBF},
      {0xFB00, 0xFB17},   {0xFF21, 0xFF5A},   {0x10400, 0x1044F},
      {0x104B0, 0x104FF}, {0x10C80, 0x10CFF}, {0x118A0, 0x118DF},
      {0x16E40, 0x16E9F}, {0x1E900, 0x1E94F}};
  for (const auto& [lo, hi] : kBlocks)
    if (c >= lo && c <= hi) return true;
  return false;
}

// ECMA-262 StringToNumber (whitespace-trimmed decimal, hex/octal/binary
// integers, Infinity; anything else NaN).
double string_to_number(const std::string& raw) {
  const std::string s = js_trim(raw, true, true);
  if (s.empty()) return 0.0;
  const double nan = std::nan("");
  if (s.size() > 2 && s[0] == '0' &&
      (s[1] == 'x' || s[1] == 'X' || s[1] == 'o' || s[1] == 'O' ||
       s[1] == 'b' || s[1] == 'B')) {
    const int base = (s[1] == 'x' || s[1] == 'X')   ? 16
                     : (s[1] == 'o' || s[1] == 'O') ? 8
                                                    : 2;
    double v = 0.0;
    for (size_t i = 2; i < s.size(); ++i) {
      const char ch = s[i];
      int d = ch >= '0' && ch <= '9'   ? ch - '0'
              : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
              : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                       : 99;
      if (d >= base) return nan;
      v = v * base + d;
    }
    return v;
  }
  size_t i = 0;
  bool neg = false;
  if (s[i] == '+' || s[i] == '-') neg = s[i++] == '-';
  if (s.compare(i, std::string::npos, "Infinity") == 0)
    return neg ? -INFINITY : INFINITY;
  // StrUnsignedDecimalLiteral: digits [. digits] | . digits, then exponent.
  size_t j = i, digits = 0;
  while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j])))
    ++j, ++digits;
  if (j < s.size() && s[j] == '.') {
    ++j;
    while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j])))
      ++j, ++digits;
  }
  if (digits == 0) return nan;
  if (j < s.size() && (s[j] == 'e' || s[j] == 'E')) {
    size_t k = j + 1;
    if (k < s.size() && (s[k] == '+' || s[k] == '-')) ++k;
    size_t e = k;
    while (e < s.size() && std::isdigit(static_cast<unsigned char>(s[e]))) ++e;
    if (e == k) return nan;
    j = e;
  }
  if (j != s.size()) return nan;
  return std::strtod(s.c_str(), nullptr);
}

enum class JsKind { Undefined, Null, Boolean, Number, String, Object };

JsKind kind_of(const Value& v) {
  switch (v.type) {
    case Type::Undefined:
      return JsKind::Undefined;
    case Type::Null:
      return JsKind::Null;
    case Type::Bool:
      return JsKind::Boolean;
    case Type::Int:
    case Type::Float:
      return JsKind::Number;
    case Type::String:
      return JsKind::String;
    default:
      return JsKind::Object;
  }
}

bool same_object(const Value& a, const Value& b) {
  if (a.is_array() && b.is_array()) return a.a == b.a;
  if (a.o && b.o) return a.o == b.o;
  if (a.fn && b.fn) return a.fn == b.fn;
  return false;
}

constexpr int kMaxNesting = 256;

void check_nesting(int depth) {
  if (depth > kMaxNesting)
    throw Error("value nesting deeper than " + std::to_string(kMaxNesting) +
                " levels (a self-containing namespace?)");
}

std::string native_string_at(const Value& v, int depth);

std::string to_output_at(const Value& v, int depth) {
  check_nesting(depth);
  switch (v.type) {
    case Type::Undefined:
      return "undefined";
    case Type::Null:
      return "null";
    case Type::Bool:
      return v.b ? "true" : "false";
    case Type::Int:
      return js_number(v.num);
    case Type::Float: {
      if (v.num == 0.0 && std::signbit(v.num)) return "-0.0";
      if (std::isfinite(v.num) && std::fmod(v.num, 1.0) == 0.0 &&
          std::fabs(v.num) < 1e21) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "%.1f", v.num);  // exact: integral
        return buf;
      }
      return js_number(v.num);
    }
    case Type::String:
      return v.str();
    case Type::Function:
      throw Unsupported("printing a function");
    default:
      return to_json(v, JsonOptions{}, depth, false);
  }
}

std::string native_string_at(const Value& v, int depth) {
  check_nesting(depth);
  switch (v.type) {
    case Type::Int:
    case Type::Float:
      return js_number(v.num);
    case Type::Array:
    case Type::Tuple: {
      std::string out;
      for (size_t i = 0; i < v.a->size(); ++i) {
        if (i) out += ',';
        out += to_output_at((*v.a)[i], depth + 1);
      }
      return out;
    }
    case Type::Object:
    case Type::KwArgs:
    case Type::Namespace:
      return "[object Map]";
    case Type::Function:
      throw Unsupported("converting a function to a string");
    default:
      return to_output_at(v, depth);
  }
}

bool loose_equals_at(const Value& a, const Value& b, int depth) {
  check_nesting(depth);
  const JsKind ka = kind_of(a), kb = kind_of(b);
  if (ka == kb) return strict_equals(a, b);
  const bool a_nullish = ka == JsKind::Undefined || ka == JsKind::Null;
  const bool b_nullish = kb == JsKind::Undefined || kb == JsKind::Null;
  if (a_nullish || b_nullish) return a_nullish && b_nullish;
  if (ka == JsKind::Number && kb == JsKind::String)
    return a.num == string_to_number(b.str());
  if (ka == JsKind::String && kb == JsKind::Number)
    return string_to_number(a.str()) == b.num;
  if (ka == JsKind::Boolean)
    return loose_equals_at(Value::integer(a.b ? 1 : 0), b, depth + 1);
  if (kb == JsKind::Boolean)
    return loose_equals_at(a, Value::integer(b.b ? 1 : 0), depth + 1);
  if (ka == JsKind::Object)
    return loose_equals_at(Value::string(native_string_at(a, depth + 1)), b,
                           depth + 1);
  if (kb == JsKind::Object)
    return loose_equals_at(a, Value::string(native_string_at(b, depth + 1)),
                           depth + 1);
  return false;
}

void json_string(std::string& out, const std::string& s, bool ascii) {
  out += '"';
  static const char* kHex = "0123456789abcdef";
  auto u_escape = [&](unsigned code) {
    out += "\\u";
    for (int sh = 12; sh >= 0; sh -= 4) out += kHex[(code >> sh) & 0xF];
  };
  for (size_t i = 0; i < s.size();) {
    const auto [cp, len] = decode(s, i);
    switch (cp) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (cp < 0x20) {
          u_escape(cp);
        } else if (ascii && cp >= 0x7F) {
          if (cp >= 0x10000) {
            const char32_t v = cp - 0x10000;
            u_escape(0xD800 + (v >> 10));
            u_escape(0xDC00 + (v & 0x3FF));
          } else {
            u_escape(cp);
          }
        } else {
          append_utf8(out, cp);
        }
    }
    i += len;
  }
  out += '"';
}

}  // namespace

void Object::erase(const std::string& key) {
  auto it = index.find(key);
  if (it == index.end()) return;
  items.erase(items.begin() + static_cast<std::ptrdiff_t>(it->second));
  index.clear();
  for (size_t i = 0; i < items.size(); ++i) index.emplace(items[i].first, i);
}

const char* type_name(Type t) {
  switch (t) {
    case Type::Undefined:
      return "UndefinedValue";
    case Type::Null:
      return "NullValue";
    case Type::Bool:
      return "BooleanValue";
    case Type::Int:
      return "IntegerValue";
    case Type::Float:
      return "FloatValue";
    case Type::String:
      return "StringValue";
    case Type::Array:
      return "ArrayValue";
    case Type::Tuple:
      return "TupleValue";
    case Type::Object:
      return "ObjectValue";
    case Type::KwArgs:
      return "KeywordArgumentsValue";
    case Type::Namespace:
      return "NamespaceValue";
    case Type::Function:
      return "FunctionValue";
  }
  return "?";
}

bool truthy(const Value& v) {
  switch (v.type) {
    case Type::Undefined:
    case Type::Null:
      return false;
    case Type::Bool:
      return v.b;
    case Type::Int:
    case Type::Float:
      return v.num != 0.0 && !std::isnan(v.num);
    case Type::String:
      return !v.str().empty();
    case Type::Array:
    case Type::Tuple:
      return !v.a->empty();
    case Type::Object:
    case Type::KwArgs:
      return v.o->size() > 0;
    case Type::Namespace:
    case Type::Function:
      return true;
  }
  return false;
}

std::string to_output(const Value& v) { return to_output_at(v, 0); }

std::string native_string(const Value& v) { return native_string_at(v, 0); }

bool loose_equals(const Value& a, const Value& b) {
  return loose_equals_at(a, b, 0);
}

bool strict_equals(const Value& a, const Value& b) {
  const JsKind ka = kind_of(a);
  if (ka != kind_of(b)) return false;
  switch (ka) {
    case JsKind::Undefined:
    case JsKind::Null:
      return true;
    case JsKind::Boolean:
      return a.b == b.b;
    case JsKind::Number:
      return a.num == b.num;
    case JsKind::String:
      return a.str() == b.str();
    case JsKind::Object:
      return same_object(a, b);
  }
  return false;
}

std::string to_json(const Value& v, const JsonOptions& o, int depth,
                    bool undefined_to_null) {
  check_nesting(depth);
  std::string item_sep = ", ", key_sep = ": ";
  if (o.has_separators) {
    item_sep = o.item_sep;
    key_sep = o.key_sep;
  } else if (o.indent > 0) {
    item_sep = ",";
  }
  switch (v.type) {
    case Type::Null:
      return "null";
    case Type::Undefined:
      return undefined_to_null ? "null" : "undefined";
    case Type::Int:
    case Type::Float:
      return std::isfinite(v.num) ? js_number(v.num) : "null";
    case Type::Bool:
      return v.b ? "true" : "false";
    case Type::String: {
      std::string out;
      json_string(out, v.str(), o.ensure_ascii);
      return out;
    }
    case Type::Array:
    case Type::Object:
    case Type::Namespace: {
      const std::string indent(o.indent > 0 ? static_cast<size_t>(o.indent) : 0,
                               ' ');
      std::string base = "\n";
      for (int i = 0; i < depth; ++i) base += indent;
      const std::string child = base + indent;
      std::vector<std::string> core;
      if (v.type == Type::Array) {
        for (const auto& x : *v.a)
          core.push_back(to_json(x, o, depth + 1, undefined_to_null));
        std::string out = "[";
        const bool pretty = o.indent > 0 && !core.empty();
        if (pretty) out += child;
        for (size_t i = 0; i < core.size(); ++i) {
          if (i) out += pretty ? item_sep + child : item_sep;
          out += core[i];
        }
        if (pretty) out += base;
        return out + "]";
      }
      if (o.sort_keys)
        throw Unsupported("tojson(sort_keys=true) (locale-aware key order)");
      for (const auto& [key, val] : v.o->items) {
        std::string k;
        json_string(k, key, o.ensure_ascii);
        std::string entry =
            k + key_sep + to_json(val, o, depth + 1, undefined_to_null);
        core.push_back(o.indent > 0 ? child + entry : entry);
      }
      std::string out = "{";
      for (size_t i = 0; i < core.size(); ++i) {
        if (i) out += item_sep;
        out += core[i];
      }
      if (o.indent > 0 && !core.empty()) out += base;
      return out + "}";
    }
    default:
      throw Error(std::string("Cannot convert to JSON: ") + type_name(v.type));
  }
}

std::string js_number(double x) {
  if (std::isnan(x)) return "NaN";
  if (x == 0.0) return "0";
  if (std::isinf(x)) return x < 0 ? "-Infinity" : "Infinity";
  std::string out = x < 0 ? "-" : "";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, std::fabs(x),
                         std::chars_format::scientific);
  std::string sci(buf, r.ptr);  // d[.ddd]e[+-]xx, shortest round trip
  const size_t e_at = sci.find('e');
  std::string digits;
  for (size_t i = 0; i < e_at; ++i)
    if (sci[i] != '.') digits += sci[i];
  const int exp10 = std::atoi(sci.c_str() + e_at + 1);
  const int k = static_cast<int>(digits.size()), n = exp10 + 1;
  if (k <= n && n <= 21) {
    out += digits + std::string(static_cast<size_t>(n - k), '0');
  } else if (0 < n && n <= 21) {
    out += digits.substr(0, static_cast<size_t>(n)) + "." +
           digits.substr(static_cast<size_t>(n));
  } else if (-6 < n && n <= 0) {
    out += "0." + std::string(static_cast<size_t>(-n), '0') + digits;
  } else {
    out += digits.substr(0, 1);
    if (k > 1) out += "." + digits.substr(1);
    const int e = n - 1;
    out += e >= 0 ? "e+" : "e-";
    out += std::to_string(std::abs(e));
  }
  return out;
}

size_t js_space_at(const std::string& s, size_t i) {
  if (i >= s.size()) return 0;
  const auto [cp, len] = decode(s, i);
  return is_js_space(cp) ? len : 0;
}

size_t js_space_before(const std::string& s, size_t end) {
  if (end == 0) return 0;
  size_t start = end - 1;
  while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80 &&
         end - start < 4)
    --start;
  const auto [cp, len] = decode(s, start);
  return (start + len == end && is_js_space(cp)) ? len : 0;
}

std::string js_trim(const std::string& s, bool start, bool end) {
  size_t b = 0, e = s.size();
  if (start)
    while (size_t n = js_space_at(s, b)) b += n;
  if (end)
    while (e > b) {
      const size_t n = js_space_before(s, e);
      if (!n) break;
      e -= n;
    }
  return s.substr(b, e - b);
}

std::vector<char32_t> code_points(const std::string& s) {
  std::vector<char32_t> out;
  for (size_t i = 0; i < s.size();) {
    const auto [cp, len] = decode(s, i);
    out.push_back(cp);
    i += len;
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::u16string to_utf16(const std::string& s) {
  std::u16string out;
  for (char32_t cp : code_points(s)) {
    if (cp >= 0x10000) {
      const char32_t v = cp - 0x10000;
      out += static_cast<char16_t>(0xD800 + (v >> 10));
      out += static_cast<char16_t>(0xDC00 + (v & 0x3FF));
    } else {
      out += static_cast<char16_t>(cp);
    }
  }
  return out;
}

std::string from_utf16(const std::u16string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    const char16_t u = s[i];
    if (u >= 0xD800 && u <= 0xDBFF && i + 1 < s.size() && s[i + 1] >= 0xDC00 &&
        s[i + 1] <= 0xDFFF) {
      append_utf8(out, 0x10000 + ((static_cast<char32_t>(u) - 0xD800) << 10) +
                           (static_cast<char32_t>(s[i + 1]) - 0xDC00));
      ++i;
    } else if (u >= 0xD800 && u <= 0xDFFF) {
      append_utf8(out, 0xFFFD);
    } else {
      append_utf8(out, u);
    }
  }
  return out;
}

size_t utf16_length(const std::string& s) {
  size_t n = 0;
  for (size_t i = 0; i < s.size();) {
    const auto [cp, len] = decode(s, i);
    n += cp >= 0x10000 ? 2 : 1;
    i += len;
  }
  return n;
}

std::string js_case(const std::string& s, bool upper) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const auto [cp, len] = decode(s, i);
    if (cp < 0x80) {
      char ch = static_cast<char>(cp);
      if (upper && ch >= 'a' && ch <= 'z') ch = static_cast<char>(ch - 32);
      if (!upper && ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch + 32);
      out += ch;
    } else if (in_cased_block(cp)) {
      std::string one;
      append_utf8(one, cp);
      throw Unsupported(std::string(upper ? "upper" : "lower") + "-casing '" +
                        one + "' (letters outside ASCII)");
    } else {
      out.append(s, i, len);
    }
    i += len;
  }
  return out;
}

}  // namespace lowmem::text::jinja
