// The Jinja interpreter: statements, expressions, filters, tests and the
// builtin methods of strings and dicts, transcribing runtime.ts of
// @huggingface/jinja 0.5.11 (Interpreter, Environment, setupGlobals). Every
// evaluation step is counted and the recursion depth and the size of every
// string are bounded (Limits), so a hostile template fails with an error.
#include <algorithm>
#include <cmath>
#include <ctime>
#include <optional>

#include "jinja.h"

namespace lowmem::text::jinja {
namespace {

struct BreakSignal {};
struct ContinueSignal {};

Value kwargs_value(Object o) {
  return Value::object(std::move(o), Type::KwArgs);
}

bool is_container(const Value& v) {
  return v.type == Type::Object || v.type == Type::KwArgs ||
         v.type == Type::Namespace;
}
bool is_numeric_like(const Value& v) {
  return v.is_number() || v.type == Type::Bool;
}
double numeric_value(const Value& v) {
  return v.type == Type::Bool ? (v.b ? 1.0 : 0.0) : v.num;
}

// JavaScript truthiness of a RuntimeValue's raw `.value` (objects and arrays
// are truthy even when empty).
bool raw_truthy(const Value& v) {
  switch (v.type) {
    case Type::Array:
    case Type::Tuple:
    case Type::Object:
    case Type::KwArgs:
    case Type::Namespace:
    case Type::Function:
      return true;
    default:
      return truthy(v);
  }
}

// SameValueZero of the raw values (Set membership).
bool same_value_zero(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number() && std::isnan(a.num) && std::isnan(b.num))
    return true;
  return strict_equals(a, b);
}

// Array.prototype.join's view of an element's `.value`.
std::string join_item(const Value& v) {
  if (v.type == Type::Null || v.type == Type::Undefined) return "";
  return native_string(v);
}

double parse_int(const std::string& s) {
  const std::string t = js_trim(s, true, false);
  size_t i = 0;
  bool neg = false;
  if (i < t.size() && (t[i] == '+' || t[i] == '-')) neg = t[i++] == '-';
  double v = 0.0;
  size_t digits = 0;
  while (i < t.size() && t[i] >= '0' && t[i] <= '9') {
    v = v * 10 + (t[i++] - '0');
    ++digits;
  }
  if (!digits) return std::nan("");
  return neg ? -v : v;
}

double parse_float(const std::string& s) {
  const std::string t = js_trim(s, true, false);
  size_t i = 0;
  if (i < t.size() && (t[i] == '+' || t[i] == '-')) ++i;
  if (t.compare(i, 8, "Infinity") == 0)
    return t[0] == '-' ? -INFINITY : INFINITY;
  size_t j = i, digits = 0;
  while (j < t.size() && std::isdigit(static_cast<unsigned char>(t[j])))
    ++j, ++digits;
  if (j < t.size() && t[j] == '.') {
    size_t k = j + 1, frac = 0;
    while (k < t.size() && std::isdigit(static_cast<unsigned char>(t[k])))
      ++k, ++frac;
    if (digits || frac) {
      j = k;
      digits += frac;
    }
  }
  if (!digits) return std::nan("");
  if (j < t.size() && (t[j] == 'e' || t[j] == 'E')) {
    size_t k = j + 1;
    if (k < t.size() && (t[k] == '+' || t[k] == '-')) ++k;
    size_t e = k;
    while (e < t.size() && std::isdigit(static_cast<unsigned char>(t[e]))) ++e;
    if (e > k) j = e;
  }
  return std::strtod(t.substr(0, j).c_str(), nullptr);
}

// /\b\w/g -> upper case (ASCII word characters).
std::string title_case(const std::string& s) {
  std::string out = s;
  auto word = [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
  };
  for (size_t i = 0; i < out.size(); ++i) {
    if (word(out[i]) && (i == 0 || !word(s[i - 1])) && out[i] >= 'a' &&
        out[i] <= 'z')
      out[i] = static_cast<char>(out[i] - 32);
  }
  return out;
}

std::string capitalize(const std::string& s) {
  if (s.empty()) return s;
  const auto cps = code_points(s);
  std::string first;
  append_utf8(first, cps[0]);
  return js_case(first, true) + s.substr(first.size());
}

// A number used as an index, truncated; empty when it is not finite or is
// beyond int64 (converting it would be undefined behaviour; as an index it
// is out of range, which JavaScript answers with undefined).
std::optional<int64_t> index_of(double v) {
  if (!(std::abs(v) < 9.0e18)) return std::nullopt;
  return static_cast<int64_t>(std::trunc(v));
}

// The most spaces an indent (the indent filter's width, tojson's indent) may
// ask for: JavaScript's " ".repeat fails on absurd counts; lowmem stops at
// 1 MiB per level instead of allocating gigabytes.
constexpr double kMaxIndent = 1 << 20;

size_t indent_width(double v, const char* what) {
  if (!(v <= kMaxIndent))
    throw Error(std::string(what) + " must be at most 1048576 spaces");
  return v > 0 ? static_cast<size_t>(v) : 0;
}

// String.prototype.at on UTF-16 units.
Value string_at(const std::string& s, double index) {
  const std::u16string u = to_utf16(s);
  const auto at = index_of(index);
  if (!at) return Value::undefined();
  auto i = *at;
  if (i < 0) i += static_cast<int64_t>(u.size());
  if (i < 0 || i >= static_cast<int64_t>(u.size())) return Value::undefined();
  return Value::string(from_utf16(u.substr(static_cast<size_t>(i), 1)));
}

template <class T>
std::vector<T> js_slice(const std::vector<T>& array, const Value& start_v,
                        const Value& stop_v, const Value& step_v) {
  const auto len = static_cast<double>(array.size());
  const double step = step_v.type == Type::Undefined ? 1.0 : step_v.num;
  const double direction = step > 0 ? 1 : step < 0 ? -1 : 0;
  double start, stop;
  if (direction >= 0) {
    start = start_v.type == Type::Undefined ? 0 : start_v.num;
    start = start < 0 ? std::max(len + start, 0.0) : std::min(start, len);
    stop = stop_v.type == Type::Undefined ? len : stop_v.num;
    stop = stop < 0 ? std::max(len + stop, 0.0) : std::min(stop, len);
  } else {
    start = start_v.type == Type::Undefined ? len - 1 : start_v.num;
    start = start < 0 ? std::max(len + start, -1.0) : std::min(start, len - 1);
    stop = stop_v.type == Type::Undefined ? -1 : stop_v.num;
    stop = stop < -1 ? std::max(len + stop, -1.0) : std::min(stop, len - 1);
  }
  std::vector<T> out;
  if (direction == 0) return out;
  for (double i = start; direction * i < direction * stop; i += step) {
    const auto k = static_cast<int64_t>(i);
    if (k >= 0 && k < static_cast<int64_t>(array.size()))
      out.push_back(array[static_cast<size_t>(k)]);
  }
  return out;
}

// str.replace(old, new, count) of runtime.ts (literal, global, count-limited).
std::string js_replace(const std::string& str, const std::string& old_v,
                       const std::string& new_v, const Value& count) {
  double remaining = INFINITY;
  if (count.type == Type::Int) {
    if (count.num == 0) return str;
    if (count.num >= 0) remaining = count.num;
  }
  std::string out;
  if (old_v.empty()) {
    // (?=) with the u flag: every code point boundary, both ends included.
    size_t i = 0;
    const auto cps = code_points(str);
    for (size_t k = 0; k <= cps.size(); ++k) {
      if (remaining > 0) {
        out += new_v;
        --remaining;
      }
      if (k < cps.size()) {
        std::string one;
        append_utf8(one, cps[k]);
        out += one;
        i += one.size();
      }
    }
    return out;
  }
  size_t pos = 0;
  while (true) {
    const size_t at = str.find(old_v, pos);
    if (at == std::string::npos) break;
    out.append(str, pos, at - pos);
    if (remaining > 0) {
      out += new_v;
      --remaining;
    } else {
      out += old_v;
    }
    pos = at + old_v.size();
  }
  out.append(str, pos, std::string::npos);
  return out;
}

std::vector<std::string> js_split(const std::string& s,
                                  const std::string& sep) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (true) {
    const size_t at = s.find(sep, pos);
    if (at == std::string::npos) break;
    out.push_back(s.substr(pos, at - pos));
    pos = at + sep.size();
  }
  out.push_back(s.substr(pos));
  return out;
}

int compare_values(const Value& a, const Value& b, bool case_sensitive) {
  auto name = [](const Value& v) { return std::string(type_name(v.type)); };
  if (a.type == Type::Null && b.type == Type::Null) return 0;
  if (a.type == Type::Null || b.type == Type::Null)
    throw Error("Cannot compare " + name(a) + " with " + name(b));
  if (a.type == Type::Undefined && b.type == Type::Undefined) return 0;
  if (a.type == Type::Undefined || b.type == Type::Undefined)
    throw Error("Cannot compare " + name(a) + " with " + name(b));
  if (is_numeric_like(a) && is_numeric_like(b)) {
    const double x = numeric_value(a), y = numeric_value(b);
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.type != b.type)
    throw Error("Cannot compare different types: " + name(a) + " and " +
                name(b));
  if (a.type == Type::String) {
    std::u16string x =
        to_utf16(case_sensitive ? a.str() : js_case(a.str(), false));
    std::u16string y =
        to_utf16(case_sensitive ? b.str() : js_case(b.str(), false));
    return x < y ? -1 : x > y ? 1 : 0;
  }
  throw Error("Cannot compare type: " + name(a));
}

Value attribute_value(const Value& item, const std::string& path) {
  Value value = item;
  for (const std::string& part : js_split(path, ".")) {
    if (is_container(value)) {
      const Value* v = value.o->find(part);
      value = v ? *v : Value::undefined();
    } else if (value.is_array()) {
      const double idx = parse_int(part);
      if (!std::isnan(idx) && idx >= 0 &&
          idx < static_cast<double>(value.a->size()))
        value = (*value.a)[static_cast<size_t>(idx)];
      else
        return Value::undefined();
    } else {
      return Value::undefined();
    }
  }
  return value;
}

const Value* kw(const Object* kwargs, const char* key) {
  return kwargs ? kwargs->find(key) : nullptr;
}

// args.at(i) ?? kwargs.get(key) ?? fallback
Value arg_or(const std::vector<Value>& args, size_t i, const Object* kwargs,
             const char* key, Value fallback) {
  if (i < args.size()) return args[i];
  if (const Value* v = kw(kwargs, key)) return *v;
  return fallback;
}

std::string strftime_now(const std::string& format) {
  static const char* kLong[] = {
      "January", "February", "March",     "April",   "May",      "June",
      "July",    "August",   "September", "October", "November", "December"};
  static const char* kShort[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                 "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  auto pad2 = [](int v) { return (v < 10 ? "0" : "") + std::to_string(v); };
  std::string out;
  for (size_t i = 0; i < format.size(); ++i) {
    if (format[i] == '%' && i + 1 < format.size()) {
      const char c = format[i + 1];
      std::string rep;
      switch (c) {
        case 'Y':
          rep = std::to_string(tm.tm_year + 1900);
          break;
        case 'm':
          rep = pad2(tm.tm_mon + 1);
          break;
        case 'd':
          rep = pad2(tm.tm_mday);
          break;
        case 'b':
          rep = kShort[tm.tm_mon];
          break;
        case 'B':
          rep = kLong[tm.tm_mon];
          break;
        case 'H':
          rep = pad2(tm.tm_hour);
          break;
        case 'M':
          rep = pad2(tm.tm_min);
          break;
        case '%':
          rep = "%";
          break;
        default:
          break;
      }
      if (!rep.empty()) {
        out += rep;
        ++i;
        continue;
      }
    }
    out += format[i];
  }
  return out;
}

// Splits a JS-convention argument list: positional values and the trailing
// KwArgs object (if any).
const Object* split_kwargs(std::vector<Value>& args) {
  if (!args.empty() && args.back().type == Type::KwArgs)
    return args.back().o.get();
  return nullptr;
}

class Interp {
 public:
  explicit Interp(const Limits& limits) : limits_(limits) {}

  void tick(int64_t n = 1) {
    steps_ += n;
    if (steps_ > limits_.max_steps)
      throw Error("template evaluation exceeded " +
                  std::to_string(limits_.max_steps) + " steps");
  }

  Value eval(const Node* node, const EnvPtr& env) {
    if (!node) return Value::undefined();
    tick();
    if (++depth_ > limits_.max_eval_depth) {
      --depth_;
      throw Error("template recursion deeper than " +
                  std::to_string(limits_.max_eval_depth) + " levels");
    }
    struct Exit {
      int& d;
      ~Exit() { --d; }
    } exit{depth_};
    Value v = eval_node(*node, env);
    if (v.type == Type::String && v.str().size() > limits_.max_output_bytes)
      throw Error("template output exceeds the limit of " +
                  std::to_string(limits_.max_output_bytes) + " bytes");
    return v;
  }

  Value block(const Nodes& list, const EnvPtr& env) {
    std::string out;
    for (const auto& st : list) {
      Value v = eval(st.get(), env);
      if (v.type != Type::Null && v.type != Type::Undefined) {
        out += to_output(v);
        if (out.size() > limits_.max_output_bytes)
          throw Error("template output exceeds the limit of " +
                      std::to_string(limits_.max_output_bytes) + " bytes");
      }
    }
    return Value::string(std::move(out));
  }

  Value call_function(const Value& fn, std::vector<Value>& args,
                      const EnvPtr& env) {
    if (fn.type != Type::Function)
      throw Error(
          std::string("Cannot call something that is not a function: got ") +
          type_name(fn.type));
    return (*fn.fn)(args, env);
  }

  // namespace(): an object from an object or [key, value] pairs, plus kwargs.
  static Value make_namespace(std::vector<Value>& args, const EnvPtr&) {
    std::vector<Value> positional = args;
    const Value* kwargs = nullptr;
    Value kw_hold;
    if (!positional.empty() && positional.back().type == Type::KwArgs) {
      kw_hold = positional.back();
      positional.pop_back();
      kwargs = &kw_hold;
    }
    if (positional.size() > 1)
      throw Error("namespace expected at most 1 argument, got " +
                  std::to_string(positional.size()));
    Object entries;
    if (positional.size() == 1) {
      const Value& src = positional[0];
      if (src.is_object()) {
        for (const auto& [k, v] : src.o->items) entries.set(k, v);
      } else if (src.is_array()) {
        for (const auto& pair : *src.a) {
          std::vector<Value> kv;
          if (pair.is_array()) {
            kv = *pair.a;
          } else if (pair.type == Type::String) {
            for (char32_t cp : code_points(pair.str())) {
              std::string one;
              append_utf8(one, cp);
              kv.push_back(Value::string(one));
            }
          }
          if (kv.size() != 2)
            throw Error(
                "namespace expected an object or an iterable of [key, "
                "value] pairs");
          if (kv[0].type != Type::String)
            throw Error("namespace keys must be strings");
          entries.set(kv[0].str(), kv[1]);
        }
      } else {
        throw Error(std::string("'") + type_name(src.type) +
                    "' object is not iterable");
      }
    }
    if (kwargs)
      for (const auto& [k, v] : kwargs->o->items) entries.set(k, v);
    return Value::object(std::move(entries), Type::Namespace);
  }

  void setup_globals(Env& env) {
    Interp* self = this;
    env.set("namespace", Value::function(&Interp::make_namespace));
    env.set("false", Value::boolean(false));
    env.set("true", Value::boolean(true));
    env.set("none", Value::null());
    env.set("raise_exception", Value::function([](std::vector<Value>& args,
                                                  const EnvPtr&) -> Value {
              std::string msg;
              if (!args.empty()) {
                const Value& a = args[0];
                msg = a.type == Type::String   ? a.str()
                      : a.type == Type::KwArgs ? "[object Map]"
                                               : native_string(a);
              }
              throw Raised(msg);
            }));
    env.set(
        "range",
        Value::function([self](std::vector<Value>& args, const EnvPtr&) {
          std::vector<double> n;
          for (const auto& a : args) {
            if (!is_numeric_like(a))
              throw Error("range() arguments must be numbers");
            n.push_back(numeric_value(a));
          }
          if (n.empty()) throw Error("range expected at least 1 argument");
          double start = 0, stop, step = 1;
          if (n.size() == 1) {
            stop = n[0];
          } else {
            start = n[0];
            stop = n[1];
            if (n.size() > 2) step = n[2];
          }
          if (step == 0) throw Error("range() step must not be zero");
          Array out;
          for (double i = start; step > 0 ? i < stop : i > stop; i += step) {
            if (static_cast<int64_t>(out.size()) >= self->limits_.max_range)
              throw Error("range() longer than " +
                          std::to_string(self->limits_.max_range) + " items");
            out.push_back(std::floor(i) == i ? Value::integer(i)
                                             : Value::floating(i));
          }
          return Value::array(std::move(out));
        }));
    env.set("strftime_now",
            Value::function([](std::vector<Value>& args, const EnvPtr&) {
              if (args.empty() || args[0].type != Type::String)
                throw Error("strftime_now() expects a format string");
              return Value::string(strftime_now(args[0].str()));
            }));
    env.set("True", Value::boolean(true));
    env.set("False", Value::boolean(false));
    env.set("None", Value::null());
  }

 private:
  Value eval_node(const Node& n, const EnvPtr& env) {
    switch (n.type) {
      case N::Program:
        return block(n.list, env);
      case N::Set:
        return eval_set(n, env);
      case N::If:
        return block(truthy(eval(n.a.get(), env)) ? n.list : n.list2, env);
      case N::For:
        return eval_for(n, env);
      case N::Macro:
        return eval_macro(n, env);
      case N::CallStatement:
        return eval_call_statement(n, env);
      case N::Break:
        throw BreakSignal{};
      case N::Continue:
        throw ContinueSignal{};
      case N::IntLit:
        return Value::integer(n.num);
      case N::FloatLit:
        return Value::floating(n.num);
      case N::StringLit:
        return Value::string(n.str);
      case N::ArrayLit:
      case N::TupleLit: {
        Array out;
        for (const auto& x : n.list) out.push_back(eval(x.get(), env));
        return Value::array(std::move(out),
                            n.type == N::ArrayLit ? Type::Array : Type::Tuple);
      }
      case N::ObjectLit: {
        Object o;
        for (const auto& [k, v] : n.pairs) {
          Value key = eval(k.get(), env);
          if (key.type != Type::String)
            throw Error(std::string("Object keys must be strings: got ") +
                        type_name(key.type));
          o.set(key.str(), eval(v.get(), env));
        }
        return Value::object(std::move(o));
      }
      case N::Identifier:
        return env->lookup(n.str);
      case N::Call: {
        std::vector<Value> args = evaluate_arguments(n.list, env);
        Value fn = eval(n.a.get(), env);
        return call_function(fn, args, env);
      }
      case N::Member:
        return eval_member(n, env);
      case N::Unary:
        return eval_unary(n, env);
      case N::Binary:
        return eval_binary(n, env);
      case N::Filter:
        return apply_filter(eval(n.a.get(), env), *n.b, env);
      case N::FilterStatement:
        return apply_filter(block(n.list, env), *n.a, env);
      case N::Test:
        return eval_test(n, env);
      case N::Select: {
        if (!truthy(eval(n.b.get(), env))) return Value::undefined();
        return eval(n.a.get(), env);
      }
      case N::Ternary:
        return truthy(eval(n.a.get(), env)) ? eval(n.b.get(), env)
                                            : eval(n.c.get(), env);
      case N::Comment:
        return Value::null();
      default:
        throw Error("Unknown node type");
    }
  }

  // evaluateArguments: positional (with * spread), then a KwArgs value.
  std::vector<Value> evaluate_arguments(const Nodes& list, const EnvPtr& env,
                                        Object* kwargs_out = nullptr) {
    std::vector<Value> positional;
    Object kwargs;
    for (const auto& a : list) {
      if (a->type == N::Spread) {
        Value v = eval(a->a.get(), env);
        if (!v.is_array())
          throw Error(std::string("Cannot unpack non-iterable type: ") +
                      type_name(v.type));
        for (const auto& x : *v.a) positional.push_back(x);
      } else if (a->type != N::KwArg && a->type != N::KwSpread) {
        positional.push_back(eval(a.get(), env));
      }
    }
    auto add = [&](const std::string& k, Value v) {
      if (kwargs.find(k))
        throw Error("Got multiple values for keyword argument '" + k + "'");
      kwargs.set(k, std::move(v));
    };
    for (const auto& a : list) {
      if (a->type == N::KwArg) {
        add(a->str, eval(a->a.get(), env));
      } else if (a->type == N::KwSpread) {
        Value v = eval(a->a.get(), env);
        if (!v.is_object())
          throw Error(std::string("Argument after ** must be a mapping, not ") +
                      type_name(v.type));
        for (const auto& [k, x] : v.o->items) add(k, x);
      }
    }
    if (kwargs_out) {
      *kwargs_out = std::move(kwargs);
    } else if (kwargs.size() > 0) {
      positional.push_back(kwargs_value(std::move(kwargs)));
    }
    return positional;
  }

  Value eval_set(const Node& n, const EnvPtr& env) {
    Value rhs = n.b ? eval(n.b.get(), env) : block(n.list, env);
    const Node& lhs = *n.a;
    if (lhs.type == N::Identifier) {
      env->set(lhs.str, rhs);
    } else if (lhs.type == N::TupleLit) {
      if (!rhs.is_array())
        throw Error(std::string("Cannot unpack non-iterable type in set: ") +
                    type_name(rhs.type));
      if (rhs.a->size() != lhs.list.size())
        throw Error(std::string("Too ") +
                    (lhs.list.size() > rhs.a->size() ? "few" : "many") +
                    " items to unpack in set");
      for (size_t i = 0; i < lhs.list.size(); ++i) {
        if (lhs.list[i]->type != N::Identifier)
          throw Error("Cannot unpack to non-identifier in set");
        env->set(lhs.list[i]->str, (*rhs.a)[i]);
      }
    } else if (lhs.type == N::Member) {
      Value object = eval(lhs.a.get(), env);
      if (object.type != Type::Namespace)
        throw Error("cannot assign attribute on non-namespace object");
      if (lhs.b->type != N::Identifier)
        throw Error("Cannot assign to member with non-identifier property");
      object.o->set(lhs.b->str, rhs);
    } else {
      throw Error("Invalid LHS inside assignment expression");
    }
    return Value::null();
  }

  Value eval_for(const Node& n, const EnvPtr& env) {
    auto scope = std::make_shared<Env>(env);
    const Node* test = nullptr;
    Value iterable;
    if (n.b->type == N::Select) {
      iterable = eval(n.b->a.get(), scope);
      test = n.b->b.get();
    } else {
      iterable = eval(n.b.get(), scope);
    }
    if (!(iterable.is_array() || iterable.is_object()))
      throw Error(
          std::string("Expected iterable or object type in for loop: got ") +
          type_name(iterable.type));
    Array source;
    if (iterable.is_object()) {
      for (const auto& [k, v] : iterable.o->items)
        source.push_back(Value::string(k));
    } else {
      source = *iterable.a;
    }
    const Node& var = *n.a;
    auto bind = [&](Env& target, const Value& current) {
      if (var.type == N::Identifier) {
        target.set(var.str, current);
        return;
      }
      if (current.type != Type::Array)
        throw Error(std::string("Cannot unpack non-iterable type: ") +
                    type_name(current.type));
      if (var.list.size() != current.a->size())
        throw Error(std::string("Too ") +
                    (var.list.size() > current.a->size() ? "few" : "many") +
                    " items to unpack");
      for (size_t j = 0; j < var.list.size(); ++j) {
        if (var.list[j]->type != N::Identifier)
          throw Error("Cannot unpack non-identifier type");
        target.set(var.list[j]->str, (*current.a)[j]);
      }
    };
    Array items;
    for (const auto& current : source) {
      tick();
      if (test) {
        auto loop_scope = std::make_shared<Env>(scope);
        bind(*loop_scope, current);
        if (!truthy(eval(test, loop_scope))) continue;
      } else if (var.type != N::Identifier) {
        Env probe;
        bind(probe, current);  // unpacking errors surface before the body runs
      }
      items.push_back(current);
    }
    std::string result;
    bool no_iteration = true;
    const auto count = static_cast<double>(items.size());
    for (size_t i = 0; i < items.size(); ++i) {
      tick();
      Object loop;
      const auto d = static_cast<double>(i);
      loop.set("index", Value::integer(d + 1));
      loop.set("index0", Value::integer(d));
      loop.set("revindex", Value::integer(count - d));
      loop.set("revindex0", Value::integer(count - d - 1));
      loop.set("first", Value::boolean(i == 0));
      loop.set("last", Value::boolean(i + 1 == items.size()));
      loop.set("length", Value::integer(count));
      loop.set("previtem", i > 0 ? items[i - 1] : Value::undefined());
      loop.set("nextitem",
               i + 1 < items.size() ? items[i + 1] : Value::undefined());
      scope->set("loop", Value::object(std::move(loop)));
      bind(*scope, items[i]);
      try {
        result += block(n.list, scope).str();
        if (result.size() > limits_.max_output_bytes)
          throw Error("template output exceeds the limit of " +
                      std::to_string(limits_.max_output_bytes) + " bytes");
      } catch (const ContinueSignal&) {
        continue;
      } catch (const BreakSignal&) {
        break;
      }
      no_iteration = false;
    }
    if (no_iteration) result += block(n.list2, scope).str();
    return Value::string(std::move(result));
  }

  static void find_special(const Node* node, bool& varargs, bool& kwargs) {
    if (!node) return;
    if (node->type == N::Identifier) {
      if (node->str == "varargs") varargs = true;
      if (node->str == "kwargs") kwargs = true;
    }
    for (const Node* c : {node->a.get(), node->b.get(), node->c.get()})
      find_special(c, varargs, kwargs);
    for (const auto& x : node->list) find_special(x.get(), varargs, kwargs);
    for (const auto& x : node->list2) find_special(x.get(), varargs, kwargs);
    for (const auto& [k, v] : node->pairs) {
      find_special(k.get(), varargs, kwargs);
      find_special(v.get(), varargs, kwargs);
    }
  }

  // bindMacroArguments of runtime.ts.
  void bind_macro_arguments(const std::string& display, const Nodes& params,
                            bool has_varargs, bool has_kwargs,
                            std::vector<Value> args, const EnvPtr& scope) {
    Object keywords;
    if (!args.empty() && args.back().type == Type::KwArgs) {
      keywords = *args.back().o;
      args.pop_back();
    }
    std::vector<std::pair<std::string, const Node*>> pending;
    for (size_t i = 0; i < params.size(); ++i) {
      const Node& p = *params[i];
      const std::string& name = p.str;
      const Node* def = p.type == N::KwArg ? p.a.get() : nullptr;
      bool have = i < args.size();
      Value value = have ? args[i] : Value::undefined();
      if (!have) {
        if (const Value* k = keywords.find(name)) {
          value = *k;
          keywords.erase(name);
          have = true;
        }
      }
      if (!have && def) pending.emplace_back(name, def);
      scope->set(name, value);
    }
    if (has_kwargs) {
      scope->set("kwargs", Value::object(keywords));
    } else if (keywords.size() > 0) {
      throw Error("macro " + display + " takes no keyword argument '" +
                  keywords.items[0].first + "'");
    }
    if (has_varargs) {
      Array rest;
      for (size_t i = params.size(); i < args.size(); ++i)
        rest.push_back(args[i]);
      scope->set("varargs", Value::array(std::move(rest)));
    } else if (args.size() > params.size()) {
      throw Error("macro " + display + " takes not more than " +
                  std::to_string(params.size()) + " argument(s)");
    }
    for (const auto& [name, def] : pending) scope->set(name, eval(def, scope));
  }

  void special_arguments(const Node& n, const Nodes& params, const Nodes& body,
                         bool& va, bool& kw) {
    va = kw = false;
    for (const auto& s : body) find_special(s.get(), va, kw);
    for (const auto& p : params)
      if (p->type == N::KwArg) find_special(p->a.get(), va, kw);
    for (const auto& p : params) {
      if (p->str == "varargs") va = false;
      if (p->str == "kwargs") kw = false;
    }
    (void)n;
  }

  Value eval_macro(const Node& n, const EnvPtr& env) {
    bool va, kwa;
    special_arguments(n, n.list, n.list2, va, kwa);
    const Node* node = &n;
    env->set(n.str,
             Value::function([this, node, va, kwa](std::vector<Value>& args,
                                                   const EnvPtr& scope) {
               auto macro_scope = std::make_shared<Env>(scope);
               bind_macro_arguments("'" + node->str + "'", node->list, va, kwa,
                                    args, macro_scope);
               return block(node->list2, macro_scope);
             }));
    return Value::null();
  }

  Value eval_call_statement(const Node& n, const EnvPtr& env) {
    bool va, kwa;
    special_arguments(n, n.list2, n.list, va, kwa);
    const Node* node = &n;
    EnvPtr defining = env;
    Value caller =
        Value::function([this, node, va, kwa, defining](
                            std::vector<Value>& args, const EnvPtr&) {
          auto call_env = std::make_shared<Env>(defining);
          bind_macro_arguments("None", node->list2, va, kwa, args, call_env);
          return block(node->list, call_env);
        });
    Object kwargs;
    std::vector<Value> macro_args = evaluate_arguments(n.a->list, env, &kwargs);
    macro_args.push_back(kwargs_value(std::move(kwargs)));
    Value fn = eval(n.a->a.get(), env);
    if (fn.type != Type::Function)
      throw Error(
          std::string("Cannot call something that is not a function: got ") +
          type_name(fn.type));
    auto new_env = std::make_shared<Env>(env);
    new_env->set("caller", caller);
    return (*fn.fn)(macro_args, new_env);
  }

  Value eval_unary(const Node& n, const EnvPtr& env) {
    Value arg = eval(n.a.get(), env);
    if (n.str == "not") return Value::boolean(!truthy(arg));
    if (arg.is_number() || arg.type == Type::Bool) {
      const double sign = n.str == "-" ? -1.0 : 1.0;
      const double result = sign * numeric_value(arg);
      return arg.type == Type::Float ? Value::floating(result)
                                     : Value::integer(result);
    }
    throw Error("Unknown operator \"" + n.str + "\" for " +
                type_name(arg.type));
  }

  Value eval_binary(const Node& n, const EnvPtr& env) {
    const std::string& op = n.str;
    Value left = eval(n.a.get(), env);
    if (op == "and") return truthy(left) ? eval(n.b.get(), env) : left;
    if (op == "or") return truthy(left) ? left : eval(n.b.get(), env);
    Value right = eval(n.b.get(), env);
    if (op == "==") return Value::boolean(loose_equals(left, right));
    if (op == "!=") return Value::boolean(!loose_equals(left, right));
    const bool is_in = op == "in" || op == "not in";
    if (left.type == Type::Undefined || right.type == Type::Undefined) {
      if (right.type == Type::Undefined && is_in)
        return Value::boolean(op == "not in");
      throw Error("Cannot perform operation " + op + " on undefined values");
    }
    if (left.type == Type::Null || right.type == Type::Null)
      throw Error("Cannot perform operation on null values");
    if (op == "~")
      return Value::string(native_string(left) + native_string(right));
    if (op == "**" && is_numeric_like(left) && is_numeric_like(right)) {
      const double a = numeric_value(left), b = numeric_value(right);
      if (a == 0 && b < 0)
        throw Error("0.0 cannot be raised to a negative power");
      const double r = std::pow(a, b);
      if (!std::isfinite(r))
        throw Error("Exponentiation result is not a finite real number");
      const bool fl =
          left.type == Type::Float || right.type == Type::Float || b < 0;
      return fl ? Value::floating(r) : Value::integer(r);
    }
    if (left.is_number() && right.is_number()) {
      const double a = left.num, b = right.num;
      const bool fl = left.type == Type::Float || right.type == Type::Float;
      auto num = [&](double r) {
        return fl ? Value::floating(r) : Value::integer(r);
      };
      if (op == "+") return num(a + b);
      if (op == "-") return num(a - b);
      if (op == "*") return num(a * b);
      if (op == "/") return Value::floating(a / b);
      if (op == "//") return num(std::floor(a / b));
      if (op == "%") return num(std::fmod(a, b));
      if (op == "<") return Value::boolean(a < b);
      if (op == ">") return Value::boolean(a > b);
      if (op == ">=") return Value::boolean(a >= b);
      if (op == "<=") return Value::boolean(a <= b);
    } else if (left.is_array() && right.is_array()) {
      if (op == "+") {
        Array out = *left.a;
        out.insert(out.end(), right.a->begin(), right.a->end());
        return Value::array(std::move(out));
      }
    } else if (right.is_array()) {
      if (is_in) {
        bool member = false;
        for (const auto& x : *right.a)
          if (strict_equals(x, left)) {
            member = true;
            break;
          }
        return Value::boolean(op == "in" ? member : !member);
      }
    }
    if (left.type == Type::String || right.type == Type::String) {
      if (op == "+")
        return Value::string(native_string(left) + native_string(right));
    }
    if (left.type == Type::String && right.type == Type::String && is_in) {
      const bool has = right.str().find(left.str()) != std::string::npos;
      return Value::boolean(op == "in" ? has : !has);
    }
    if (left.type == Type::String && right.is_object() && is_in) {
      const bool has = right.o->find(left.str()) != nullptr;
      return Value::boolean(op == "in" ? has : !has);
    }
    throw Error("Unknown operator \"" + op + "\" between " +
                type_name(left.type) + " and " + type_name(right.type));
  }

  static bool test_fn(const std::string& name, const Value& v, const Value* arg,
                      bool& known) {
    known = true;
    if (name == "boolean") return v.type == Type::Bool;
    if (name == "callable") return v.type == Type::Function;
    if (name == "odd" || name == "even") {
      if (v.type != Type::Int)
        throw Error("cannot " + name + " on " + type_name(v.type));
      const bool odd = std::fmod(v.num, 2.0) != 0.0;
      return name == "odd" ? odd : !odd;
    }
    if (name == "false") return v.type == Type::Bool && !v.b;
    if (name == "true") return v.type == Type::Bool && v.b;
    if (name == "none") return v.type == Type::Null;
    if (name == "string") return v.type == Type::String;
    if (name == "number") return v.is_number();
    if (name == "integer") return v.type == Type::Int;
    if (name == "iterable")
      return v.type == Type::Array || v.type == Type::String;
    if (name == "mapping") return v.is_object();
    if (name == "sequence")
      return v.is_array() || v.is_object() || v.type == Type::String;
    if (name == "lower")
      return v.type == Type::String && v.str() == js_case(v.str(), false);
    if (name == "upper")
      return v.type == Type::String && v.str() == js_case(v.str(), true);
    if (name == "defined") return v.type != Type::Undefined;
    if (name == "undefined") return v.type == Type::Undefined;
    if (name == "equalto" || name == "eq")
      return strict_equals(v, arg ? *arg : Value::undefined());
    known = false;
    return false;
  }

  Value eval_test(const Node& n, const EnvPtr& env) {
    Value operand = eval(n.a.get(), env);
    bool known;
    const bool r = test_fn(n.str, operand, nullptr, known);
    if (!known) throw Error("Unknown test: " + n.str);
    return Value::boolean(n.flag ? !r : r);
  }

  Value object_builtin(const Value& object, const std::string& name) {
    std::shared_ptr<Object> o = object.o;
    if (name == "get")
      return Value::function([o](std::vector<Value>& args, const EnvPtr&) {
        if (args.empty() || args[0].type != Type::String)
          throw Error(std::string("Object key must be a string: got ") +
                      (args.empty() ? "undefined" : type_name(args[0].type)));
        if (const Value* v = o->find(args[0].str())) return *v;
        if (args.size() > 1) return args[1];
        return Value::null();
      });
    if (name == "items" || name == "keys" || name == "values")
      return Value::function([o, name](std::vector<Value>&, const EnvPtr&) {
        Array out;
        for (const auto& [k, v] : o->items) {
          if (name == "items")
            out.push_back(Value::array({Value::string(k), v}));
          else if (name == "keys")
            out.push_back(Value::string(k));
          else
            out.push_back(v);
        }
        return Value::array(std::move(out));
      });
    if (name == "dictsort")
      return Value::function([o](std::vector<Value>& args, const EnvPtr&) {
        const Object* kwargs = split_kwargs(args);
        std::vector<Value> positional(args.begin(),
                                      args.end() - (kwargs ? 1 : 0));
        Value cs = arg_or(positional, 0, kwargs, "case_sensitive",
                          Value::boolean(false));
        if (cs.type != Type::Bool)
          throw Error("case_sensitive must be a boolean");
        Value by = arg_or(positional, 1, kwargs, "by", Value::string("key"));
        if (by.type != Type::String) throw Error("by must be a string");
        if (by.str() != "key" && by.str() != "value")
          throw Error("by must be either 'key' or 'value'");
        Value reverse =
            arg_or(positional, 2, kwargs, "reverse", Value::boolean(false));
        if (reverse.type != Type::Bool)
          throw Error("reverse must be a boolean");
        Array items;
        for (const auto& [k, v] : o->items)
          items.push_back(Value::array({Value::string(k), v}));
        const size_t idx = by.str() == "key" ? 0 : 1;
        std::stable_sort(
            items.begin(), items.end(), [&](const Value& a, const Value& b) {
              const int r = compare_values((*a.a)[idx], (*b.a)[idx], cs.b);
              return (reverse.b ? -r : r) < 0;
            });
        return Value::array(std::move(items));
      });
    return Value::undefined();
  }

  // str.split(sep=None, maxsplit=-1) as @huggingface/jinja computes it.
  static Value string_split(const std::string& s, std::vector<Value>& args) {
    Value sep = args.size() > 0 ? args[0] : Value::null();
    if (sep.type != Type::String && sep.type != Type::Null)
      throw Error("sep argument must be a string or null");
    Value maxsplit = args.size() > 1 ? args[1] : Value::integer(-1);
    if (maxsplit.type != Type::Int)
      throw Error("maxsplit argument must be a number");
    Array result;
    if (sep.type == Type::Null) {
      const std::string text = js_trim(s, true, false);
      size_t i = 0;
      while (i < text.size()) {
        while (size_t k = js_space_at(text, i)) i += k;
        if (i >= text.size()) break;
        size_t j = i;
        while (j < text.size() && !js_space_at(text, j)) ++j;
        if (maxsplit.num != -1 &&
            static_cast<double>(result.size()) >= maxsplit.num) {
          result.push_back(Value::string(text.substr(i)));
          break;
        }
        result.push_back(Value::string(text.substr(i, j - i)));
        i = j;
      }
    } else {
      if (sep.str().empty()) throw Error("empty separator");
      auto parts = js_split(s, sep.str());
      if (maxsplit.num != -1 &&
          static_cast<double>(parts.size()) > maxsplit.num) {
        const auto keep = static_cast<size_t>(std::max(0.0, maxsplit.num));
        std::string rest;
        for (size_t i = keep; i < parts.size(); ++i) {
          if (i > keep) rest += sep.str();
          rest += parts[i];
        }
        parts.resize(keep);
        parts.push_back(rest);
      }
      for (auto& p : parts) result.push_back(Value::string(std::move(p)));
    }
    return Value::array(std::move(result));
  }

  Value string_builtin(const Value& sv, const std::string& name) {
    const std::string s = sv.str();
    auto fn = [](auto f) { return Value::function(f); };
    if (name == "length")
      return Value::integer(static_cast<double>(utf16_length(s)));
    if (name == "upper" || name == "lower")
      return fn([s, name](std::vector<Value>&, const EnvPtr&) {
        return Value::string(js_case(s, name == "upper"));
      });
    if (name == "strip" || name == "lstrip" || name == "rstrip")
      return fn([s, name](std::vector<Value>&, const EnvPtr&) {
        return Value::string(js_trim(s, name != "rstrip", name != "lstrip"));
      });
    if (name == "title")
      return fn([s](std::vector<Value>&, const EnvPtr&) {
        return Value::string(title_case(s));
      });
    if (name == "capitalize")
      return fn([s](std::vector<Value>&, const EnvPtr&) {
        return Value::string(capitalize(s));
      });
    if (name == "startswith" || name == "endswith")
      return fn([s, name](std::vector<Value>& args, const EnvPtr&) {
        const bool start = name == "startswith";
        if (args.empty())
          throw Error(name + "() requires at least one argument");
        auto test = [&](const std::string& p) {
          if (p.size() > s.size()) return false;
          return start ? s.compare(0, p.size(), p) == 0
                       : s.compare(s.size() - p.size(), p.size(), p) == 0;
        };
        const Value& pattern = args[0];
        if (pattern.type == Type::String)
          return Value::boolean(test(pattern.str()));
        if (pattern.is_array()) {
          for (const auto& item : *pattern.a) {
            if (item.type != Type::String)
              throw Error(name + "() tuple elements must be strings");
            if (test(item.str())) return Value::boolean(true);
          }
          return Value::boolean(false);
        }
        throw Error(name + "() argument must be a string or tuple of strings");
      });
    if (name == "split")
      return fn([s](std::vector<Value>& args, const EnvPtr&) {
        return string_split(s, args);
      });
    if (name == "replace")
      return fn([s](std::vector<Value>& args, const EnvPtr&) {
        if (args.size() < 2)
          throw Error("replace() requires at least two arguments");
        if (args[0].type != Type::String || args[1].type != Type::String)
          throw Error("replace() arguments must be strings");
        Value count = Value::null();
        if (args.size() > 2) {
          if (args[2].type == Type::KwArgs) {
            const Value* c = args[2].o->find("count");
            count = c ? *c : Value::null();
          } else {
            count = args[2];
          }
        }
        if (count.type != Type::Int && count.type != Type::Null)
          throw Error("replace() count argument must be a number or null");
        return Value::string(
            js_replace(s, args[0].str(), args[1].str(), count));
      });
    return Value::undefined();
  }

  Value eval_member(const Node& n, const EnvPtr& env) {
    Value object = eval(n.a.get(), env);
    Value property;
    if (n.flag) {
      if (n.b->type == N::Slice) return eval_slice(object, *n.b, env);
      property = eval(n.b.get(), env);
    } else if (n.b->type == N::IntLit) {
      property = Value::integer(n.b->num);
    } else {
      property = Value::string(n.b->str);
    }
    if (is_container(object)) {
      if (property.type != Type::String)
        throw Error(
            std::string("Cannot access property with non-string: got ") +
            type_name(property.type));
      if (const Value* v = object.o->find(property.str())) return *v;
      if (object.is_object()) return object_builtin(object, property.str());
      return Value::undefined();
    }
    if (object.is_array() || object.type == Type::String) {
      if (property.type == Type::Int) {
        if (object.type == Type::String)
          return string_at(object.str(), property.num);
        const auto at = index_of(property.num);
        if (!at) return Value::undefined();
        auto i = *at;
        const auto size = static_cast<int64_t>(object.a->size());
        if (i < 0) i += size;
        if (i < 0 || i >= size) return Value::undefined();
        return (*object.a)[static_cast<size_t>(i)];
      }
      if (property.type == Type::String) {
        if (object.type == Type::String)
          return string_builtin(object, property.str());
        if (property.str() == "length")
          return Value::integer(static_cast<double>(object.a->size()));
        return Value::undefined();
      }
      throw Error(
          std::string(
              "Cannot access property with non-string/non-number: got ") +
          type_name(property.type));
    }
    if (property.type != Type::String)
      throw Error(std::string("Cannot access property with non-string: got ") +
                  type_name(property.type));
    return Value::undefined();
  }

  Value eval_slice(const Value& object, const Node& s, const EnvPtr& env) {
    if (!(object.is_array() || object.type == Type::String))
      throw Error("Slice object must be an array or string");
    Value start = eval(s.a.get(), env), stop = eval(s.b.get(), env),
          step = eval(s.c.get(), env);
    for (const auto* p : {&start, &stop, &step})
      if (p->type != Type::Int && p->type != Type::Undefined)
        throw Error("Slice start must be numeric or undefined");
    if (object.is_array())
      return Value::array(js_slice(*object.a, start, stop, step));
    std::string out;
    for (char32_t cp : js_slice(code_points(object.str()), start, stop, step))
      append_utf8(out, cp);
    return Value::string(out);
  }

  // Evaluates a filter call's arguments into args; returns its kwargs.
  Object filter_kwargs(const Node& filter, const EnvPtr& env,
                       std::vector<Value>& args) {
    Object kwargs;
    args = evaluate_arguments(filter.list, env, &kwargs);
    return kwargs;
  }

  // tojson(indent=None, ensure_ascii=False, sort_keys=False, separators=None).
  static Value tojson_filter(const Value& operand, const Object& kwargs) {
    JsonOptions o;
    const Value* indent = kwargs.find("indent");
    if (indent && indent->type != Type::Int && indent->type != Type::Null)
      throw Error("If set, indent must be a number");
    if (indent && indent->type == Type::Int)
      o.indent = static_cast<int>(indent_width(indent->num, "tojson's indent"));
    const Value* ascii = kwargs.find("ensure_ascii");
    if (ascii && ascii->type != Type::Bool)
      throw Error("If set, ensure_ascii must be a boolean");
    o.ensure_ascii = ascii && ascii->b;
    const Value* sort = kwargs.find("sort_keys");
    if (sort && sort->type != Type::Bool)
      throw Error("If set, sort_keys must be a boolean");
    o.sort_keys = sort && sort->b;
    const Value* seps = kwargs.find("separators");
    if (seps && seps->is_array()) {
      if (seps->a->size() != 2 || (*seps->a)[0].type != Type::String ||
          (*seps->a)[1].type != Type::String)
        throw Error("separators must be a tuple of two strings");
      o.has_separators = true;
      o.item_sep = (*seps->a)[0].str();
      o.key_sep = (*seps->a)[1].str();
    } else if (seps && seps->type != Type::Null) {
      throw Error("If set, separators must be a tuple of two strings");
    }
    return Value::string(to_json(operand, o, 0, true));
  }

  // sort(reverse=False, case_sensitive=False, attribute=None), stable.
  Value sort_filter(const Value& operand, std::vector<Value>& args,
                    Object& kwargs) {
    Value reverse = arg_or(args, 0, &kwargs, "reverse", Value::boolean(false));
    if (reverse.type != Type::Bool) throw Error("reverse must be a boolean");
    Value cs =
        arg_or(args, 1, &kwargs, "case_sensitive", Value::boolean(false));
    if (cs.type != Type::Bool) throw Error("case_sensitive must be a boolean");
    Value attribute = arg_or(args, 2, &kwargs, "attribute", Value::null());
    if (attribute.type != Type::String && attribute.type != Type::Int &&
        attribute.type != Type::Null)
      throw Error("attribute must be a string, integer, or null");
    auto key = [&](const Value& item) {
      if (attribute.type == Type::Null) return item;
      const std::string path = attribute.type == Type::Int
                                   ? js_number(attribute.num)
                                   : attribute.str();
      return attribute_value(item, path);
    };
    Array out = *operand.a;
    std::stable_sort(out.begin(), out.end(),
                     [&](const Value& a, const Value& b) {
                       const int r = compare_values(key(a), key(b), cs.b);
                       return (reverse.b ? -r : r) < 0;
                     });
    return Value::array(std::move(out));
  }

  // join(separator=""): items of an array (or characters of a string).
  Value join_filter(const Value& operand, const Node& filter,
                    const EnvPtr& env) {
    std::vector<std::string> items;
    if (operand.type == Type::String) {
      for (char32_t cp : code_points(operand.str())) {
        std::string one;
        append_utf8(one, cp);
        items.push_back(one);
      }
    } else if (operand.is_array()) {
      for (const auto& x : *operand.a) items.push_back(join_item(x));
    } else {
      throw Error("Cannot apply filter \"join\" to type: " +
                  std::string(type_name(operand.type)));
    }
    std::vector<Value> args;
    Object kwargs = filter_kwargs(filter, env, args);
    Value sep = arg_or(args, 0, &kwargs, "separator", Value::string(""));
    if (sep.type != Type::String) throw Error("separator must be a string");
    std::string out;
    for (size_t i = 0; i < items.size(); ++i) {
      if (i) out += sep.str();
      out += items[i];
    }
    return Value::string(out);
  }

  // The filters of an array operand: sort, selectattr/rejectattr, map.
  Value array_filter(const Value& operand, const std::string& name,
                     const Node& filter, const EnvPtr& env) {
    if (name == "sort") {
      std::vector<Value> args;
      Object kwargs = filter_kwargs(filter, env, args);
      return sort_filter(operand, args, kwargs);
    }
    if (name == "selectattr" || name == "rejectattr") {
      const bool select = name == "selectattr";
      for (const auto& item : *operand.a)
        if (!is_container(item))
          throw Error("`" + name + "` can only be applied to array of objects");
      for (const auto& a : filter.list)
        if (a->type != N::StringLit)
          throw Error("arguments of `" + name + "` must be strings");
      std::vector<Value> vals;
      for (const auto& a : filter.list) vals.push_back(eval(a.get(), env));
      if (vals.empty()) throw Error("`" + name + "` needs an attribute name");
      const std::string test = vals.size() > 1 ? vals[1].str() : "";
      const Value* value = vals.size() > 2 ? &vals[2] : nullptr;
      Array out;
      for (const auto& item : *operand.a) {
        const Value* a = item.o->find(vals[0].str());
        bool result = false;
        if (a) {
          if (!test.empty()) {
            bool known;
            result = test_fn(test, *a, value, known);
            if (!known) throw Error("Unknown test: " + test);
          } else {
            result = truthy(*a);
          }
        }
        if (select ? result : !result) out.push_back(item);
      }
      return Value::array(std::move(out));
    }
    if (name == "map") {
      std::vector<Value> args;
      Object kwargs = filter_kwargs(filter, env, args);
      const Value* attr = kwargs.find("attribute");
      if (!attr)
        throw Error(
            "`map` expressions without `attribute` set are not currently "
            "supported.");
      if (attr->type != Type::String) throw Error("attribute must be a string");
      const Value* def = kwargs.find("default");
      Array out;
      for (const auto& item : *operand.a) {
        if (!is_container(item)) throw Error("items in map must be an object");
        Value v = attribute_value(item, attr->str());
        out.push_back(
            v.type == Type::Undefined ? (def ? *def : Value::undefined()) : v);
      }
      return Value::array(std::move(out));
    }
    throw Error("Unknown ArrayValue filter: " + name);
  }

  Value apply_filter(const Value& operand, const Node& filter,
                     const EnvPtr& env) {
    if (filter.type == N::Identifier)
      return identifier_filter(operand, filter.str, env);
    if (filter.type != N::Call) throw Error("Unknown filter");
    if (filter.a->type != N::Identifier)
      throw Error("Unknown filter: not an identifier");
    const std::string& name = filter.a->str;
    auto kwargs_of = [&](std::vector<Value>& args) {
      Object kwargs;
      args = evaluate_arguments(filter.list, env, &kwargs);
      return kwargs;
    };
    if (name == "tojson") {
      std::vector<Value> args;
      return tojson_filter(operand, kwargs_of(args));
    }
    if (name == "join") return join_filter(operand, filter, env);
    if (name == "int" || name == "float") {
      std::vector<Value> args;
      Object kwargs = kwargs_of(args);
      const bool is_int = name == "int";
      Value def = arg_or(args, 0, &kwargs, "default",
                         is_int ? Value::integer(0) : Value::floating(0));
      if (operand.type == Type::String) {
        const double v =
            is_int ? parse_int(operand.str()) : parse_float(operand.str());
        if (std::isnan(v)) return def;
        return is_int ? Value::integer(v) : Value::floating(v);
      }
      if (operand.is_number()) return operand;
      if (operand.type == Type::Bool)
        return is_int ? Value::integer(operand.b ? 1 : 0)
                      : Value::floating(operand.b ? 1 : 0);
      throw Error("Cannot apply filter \"" + name +
                  "\" to type: " + type_name(operand.type));
    }
    if (name == "default") {
      std::vector<Value> args;
      Object kwargs = kwargs_of(args);
      Value def = args.size() > 0 ? args[0] : Value::string("");
      Value boolean = args.size() > 1
                          ? args[1]
                          : (kwargs.find("boolean") ? *kwargs.find("boolean")
                                                    : Value::boolean(false));
      if (boolean.type != Type::Bool)
        throw Error("`default` filter flag must be a boolean");
      if (operand.type == Type::Undefined || (boolean.b && !truthy(operand)))
        return def;
      return operand;
    }
    if (operand.is_array()) return array_filter(operand, name, filter, env);
    if (operand.type == Type::String) {
      if (name == "indent") {
        std::vector<Value> args;
        Object kwargs = kwargs_of(args);
        Value width = arg_or(args, 0, &kwargs, "width", Value::integer(4));
        if (width.type != Type::Int) throw Error("width must be a number");
        Value first = arg_or(args, 1, &kwargs, "first", Value::boolean(false));
        Value blank = arg_or(args, 2, &kwargs, "blank", Value::boolean(false));
        return Value::string(indent(operand.str(),
                                    indent_width(width.num, "indent's width"),
                                    raw_truthy(first), raw_truthy(blank)));
      }
      if (name == "replace") {
        Object kwargs;
        std::vector<Value> args = evaluate_arguments(filter.list, env, &kwargs);
        args.push_back(kwargs_value(std::move(kwargs)));
        Value f = string_builtin(operand, "replace");
        return call_function(f, args, env);
      }
      throw Error("Unknown StringValue filter: " + name);
    }
    if (operand.is_object()) {
      Value builtin = object_builtin(operand, name);
      if (builtin.type == Type::Function) {
        std::vector<Value> args = evaluate_arguments(filter.list, env);
        return call_function(builtin, args, env);
      }
      throw Error("Unknown ObjectValue filter: " + name);
    }
    throw Error("Cannot apply filter \"" + name +
                "\" to type: " + type_name(operand.type));
  }

  static std::string indent(const std::string& s, size_t width, bool first,
                            bool blank) {
    const std::string pad(width, ' ');
    const auto lines = js_split(s, "\n");
    std::string out;
    for (size_t i = 0; i < lines.size(); ++i) {
      if (i) out += '\n';
      const bool keep = (!first && i == 0) || (!blank && lines[i].empty());
      out += keep ? lines[i] : pad + lines[i];
    }
    return out;
  }

  Value identifier_filter(const Value& operand, const std::string& name,
                          const EnvPtr& env) {
    if (name == "safe") return operand;
    if (name == "tojson")
      return Value::string(to_json(operand, JsonOptions{}, 0, true));
    if (operand.is_array()) {
      const Array& a = *operand.a;
      if (name == "list") return operand;
      if (name == "first" || name == "last") {
        if (a.empty()) throw Error(name + " of an empty list");
        return name == "first" ? a.front() : a.back();
      }
      if (name == "length")
        return Value::integer(static_cast<double>(a.size()));
      if (name == "reverse") return Value::array(Array(a.rbegin(), a.rend()));
      if (name == "sort") {
        Array out = a;
        std::stable_sort(out.begin(), out.end(),
                         [](const Value& x, const Value& y) {
                           return compare_values(x, y, false) < 0;
                         });
        return Value::array(std::move(out));
      }
      if (name == "join") {
        std::string out;
        for (const auto& x : a) out += join_item(x);
        return Value::string(out);
      }
      if (name == "string")
        return Value::string(to_json(operand, JsonOptions{}, 0, false));
      if (name == "unique") {
        Array out;
        for (const auto& x : a) {
          tick(static_cast<int64_t>(out.size()) + 1);
          bool seen = false;
          for (const auto& y : out) seen = seen || same_value_zero(x, y);
          if (!seen) out.push_back(x);
        }
        return Value::array(std::move(out));
      }
      throw Error("Unknown ArrayValue filter: " + name);
    }
    if (operand.type == Type::String) {
      const std::string& s = operand.str();
      if (name == "length")
        return Value::integer(static_cast<double>(utf16_length(s)));
      if (name == "upper" || name == "lower")
        return Value::string(js_case(s, name == "upper"));
      if (name == "title") return Value::string(title_case(s));
      if (name == "capitalize") return Value::string(capitalize(s));
      if (name == "trim") return Value::string(js_trim(s, true, true));
      if (name == "indent") return Value::string(indent(s, 4, false, false));
      if (name == "join" || name == "string") return operand;
      if (name == "int") {
        const double v = parse_int(s);
        return Value::integer(std::isnan(v) ? 0 : v);
      }
      if (name == "float") {
        const double v = parse_float(s);
        return Value::floating(std::isnan(v) ? 0 : v);
      }
      throw Error("Unknown StringValue filter: " + name);
    }
    if (operand.is_number()) {
      if (name == "abs")
        return operand.type == Type::Int
                   ? Value::integer(std::fabs(operand.num))
                   : Value::floating(std::fabs(operand.num));
      if (name == "int") return Value::integer(std::floor(operand.num));
      if (name == "float") return Value::floating(operand.num);
      if (name == "string") return Value::string(to_output(operand));
      throw Error("Unknown NumericValue filter: " + name);
    }
    if (operand.is_object()) {
      if (name == "items") {
        Array out;
        for (const auto& [k, v] : operand.o->items)
          out.push_back(Value::array({Value::string(k), v}));
        return Value::array(std::move(out));
      }
      if (name == "length")
        return Value::integer(static_cast<double>(operand.o->size()));
      Value builtin = object_builtin(operand, name);
      if (builtin.type == Type::Function) {
        std::vector<Value> none;
        return call_function(builtin, none, env);
      }
      throw Error("Unknown ObjectValue filter: " + name);
    }
    if (operand.type == Type::Bool) {
      if (name == "bool") return operand;
      if (name == "int") return Value::integer(operand.b ? 1 : 0);
      if (name == "float") return Value::floating(operand.b ? 1 : 0);
      if (name == "string") return Value::string(operand.b ? "true" : "false");
      throw Error("Unknown BooleanValue filter: " + name);
    }
    throw Error("Cannot apply filter \"" + name +
                "\" to type: " + type_name(operand.type));
  }

  const Limits& limits_;
  int64_t steps_ = 0;
  int depth_ = 0;
};

}  // namespace

Value Env::lookup(const std::string& name) const {
  for (const Env* e = this; e; e = e->parent.get()) {
    auto it = e->vars.find(name);
    if (it != e->vars.end()) return it->second;
  }
  return Value::undefined();
}

Template::Template(const std::string& source, Limits limits) : limits_(limits) {
  if (source.size() > limits_.max_source_bytes)
    throw Error("template of " + std::to_string(source.size()) +
                " bytes exceeds the limit of " +
                std::to_string(limits_.max_source_bytes) + " bytes");
  program_ = parse(tokenize(source), limits_.max_parse_depth);
}

Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

std::string Template::render(
    const std::vector<std::pair<std::string, Value>>& context) const {
  Interp interp(limits_);
  auto env = std::make_shared<Env>();
  interp.setup_globals(*env);
  for (const auto& [k, v] : context) {
    if (env->vars.count(k)) throw Error("Variable already declared: " + k);
    env->set(k, v);
  }
  try {
    return interp.eval(program_.get(), env).str();
  } catch (const BreakSignal&) {
    throw Error("break outside a loop");
  } catch (const ContinueSignal&) {
    throw Error("continue outside a loop");
  }
}

}  // namespace lowmem::text::jinja
