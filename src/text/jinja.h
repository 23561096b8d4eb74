// Internal: the Jinja subset behind text/chat_template.h. It follows
// @huggingface/jinja 0.5.11 (github.com/huggingface/huggingface.js,
// packages/jinja: lexer.ts, parser.ts, runtime.ts), the renderer the tests
// compare against byte for byte, including where it differs from Python's
// jinja2: JavaScript string semantics (length and indexing in UTF-16 units,
// slices by code point, JavaScript's whitespace for trim), `==` as
// JavaScript's loose equality (lists and dicts by identity), str.strip(chars)
// etc. ignoring their argument, `{{ none }}` printing nothing, booleans
// printing as true/false. Deviations (each an error naming it, never a silent
// difference): case mapping (upper, lower, capitalize, sort) of letters
// outside ASCII, tojson(sort_keys=true), printing a function; strings that
// an index or slice cuts inside a UTF-16 surrogate pair become U+FFFD.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace lowmem::text::jinja {

/// Any failure while lexing, parsing or rendering (message without prefix).
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
/// raise_exception(msg) called by the template.
struct Raised : Error {
  using Error::Error;
};
/// A feature of the reference renderer lowmem does not implement.
struct Unsupported : Error {
  using Error::Error;
};

struct Limits {
  size_t max_source_bytes = 1u << 20;
  size_t max_output_bytes = 64u << 20;
  int max_parse_depth = 200;
  int max_eval_depth = 400;
  int64_t max_steps = 50'000'000;
  int64_t max_range = 1 << 20;
};

// ---- values (runtime.ts) ----

enum class Type : uint8_t {
  Undefined,
  Null,
  Bool,
  Int,
  Float,
  String,
  Array,
  Tuple,
  Object,
  KwArgs,
  Namespace,
  Function
};

struct Value;
struct Object;
struct Env;
using Array = std::vector<Value>;
using EnvPtr = std::shared_ptr<Env>;
/// args: positional values, then (if any were given) one KwArgs value.
using NativeFn =
    std::function<Value(std::vector<Value>& args, const EnvPtr& env)>;

struct Value {
  Type type = Type::Undefined;
  bool b = false;
  double num = 0.0;  // Int and Float (JavaScript numbers)
  std::shared_ptr<const std::string> s;
  std::shared_ptr<Array> a;      // Array, Tuple
  std::shared_ptr<Object> o;     // Object, KwArgs, Namespace
  std::shared_ptr<NativeFn> fn;  // Function

  static Value undefined() { return {}; }
  static Value null() {
    Value v;
    v.type = Type::Null;
    return v;
  }
  static Value boolean(bool x) {
    Value v;
    v.type = Type::Bool;
    v.b = x;
    return v;
  }
  static Value integer(double x) {
    Value v;
    v.type = Type::Int;
    v.num = x;
    return v;
  }
  static Value floating(double x) {
    Value v;
    v.type = Type::Float;
    v.num = x;
    return v;
  }
  static Value string(std::string x) {
    Value v;
    v.type = Type::String;
    v.s = std::make_shared<const std::string>(std::move(x));
    return v;
  }
  static Value array(Array x, Type t = Type::Array);
  static Value object(Object x, Type t = Type::Object);
  static Value function(NativeFn f) {
    Value v;
    v.type = Type::Function;
    v.fn = std::make_shared<NativeFn>(std::move(f));
    return v;
  }

  bool is_number() const { return type == Type::Int || type == Type::Float; }
  bool is_array() const { return type == Type::Array || type == Type::Tuple; }
  bool is_object() const {
    return type == Type::Object || type == Type::KwArgs;
  }
  const std::string& str() const { return *s; }
};

/// An insertion-ordered map (JavaScript Map).
struct Object {
  std::vector<std::pair<std::string, Value>> items;
  std::unordered_map<std::string, size_t> index;
  const Value* find(const std::string& key) const {
    auto it = index.find(key);
    return it == index.end() ? nullptr : &items[it->second].second;
  }
  void set(const std::string& key, Value v) {
    auto it = index.find(key);
    if (it != index.end()) {
      items[it->second].second = std::move(v);
    } else {
      index.emplace(key, items.size());
      items.emplace_back(key, std::move(v));
    }
  }
  void erase(const std::string& key);
  size_t size() const { return items.size(); }
};

inline Value Value::array(Array x, Type t) {
  Value v;
  v.type = t;
  v.a = std::make_shared<Array>(std::move(x));
  return v;
}
inline Value Value::object(Object x, Type t) {
  Value v;
  v.type = t;
  v.o = std::make_shared<Object>(std::move(x));
  return v;
}

/// The runtime type name as @huggingface/jinja spells it ("StringValue").
const char* type_name(Type t);
/// JavaScript truthiness as RuntimeValue.__bool__ defines it.
bool truthy(const Value& v);
/// RuntimeValue.toString(): what {{ v }} prints.
std::string to_output(const Value& v);
/// String(v.value): the JavaScript value's own string (`+` and `~`).
std::string native_string(const Value& v);
/// JavaScript's `a.value == b.value`.
bool loose_equals(const Value& a, const Value& b);
/// JavaScript's `a.value === b.value`.
bool strict_equals(const Value& a, const Value& b);
struct JsonOptions {
  int indent = -1;  // < 0: none
  bool ensure_ascii = false;
  bool sort_keys = false;
  bool has_separators = false;
  std::string item_sep, key_sep;
};
/// toJSON(input, options, depth, convertUndefinedToNull).
std::string to_json(const Value& v, const JsonOptions& o, int depth,
                    bool undefined_to_null);
/// JavaScript Number.prototype.toString().
std::string js_number(double x);

// ---- strings as JavaScript sees them (utf.cpp) ----

/// Byte length of the JavaScript whitespace code point (\s) at s[i], or 0.
size_t js_space_at(const std::string& s, size_t i);
/// Length of the JavaScript whitespace code point ending at s[end), or 0.
size_t js_space_before(const std::string& s, size_t end);
std::string js_trim(const std::string& s, bool start, bool end);
/// Code points of valid UTF-8 (invalid bytes become U+FFFD).
std::vector<char32_t> code_points(const std::string& s);
void append_utf8(std::string& out, char32_t cp);
std::u16string to_utf16(const std::string& s);
/// UTF-16 back to UTF-8; unpaired surrogates become U+FFFD.
std::string from_utf16(const std::u16string& s);
size_t utf16_length(const std::string& s);
/// String.prototype.toUpperCase / toLowerCase for ASCII; throws Error for a
/// letter outside ASCII (a cased script).
std::string js_case(const std::string& s, bool upper);

// ---- syntax (lexer.ts, parser.ts, ast.ts) ----

enum class Tok : uint8_t {
  Text,
  Number,
  String,
  Identifier,
  Equals,
  OpenParen,
  CloseParen,
  OpenStatement,
  CloseStatement,
  OpenExpression,
  CloseExpression,
  OpenSquare,
  CloseSquare,
  OpenCurly,
  CloseCurly,
  Comma,
  Dot,
  Colon,
  Pipe,
  Additive,
  Multiplicative,
  Exponent,
  Comparison,
  Unary,
  Comment
};

struct Token {
  std::string value;
  Tok type;
};

/// preprocess() with HF's options: trailing newline dropped, lstrip_blocks,
/// trim_blocks, {% generation %} tags removed.
std::string preprocess(const std::string& source);
std::vector<Token> tokenize(const std::string& source);

enum class N : uint8_t {
  Program,
  If,
  For,
  Break,
  Continue,
  Set,
  Macro,
  Comment,
  CallStatement,
  FilterStatement,
  Member,
  Call,
  Identifier,
  IntLit,
  FloatLit,
  StringLit,
  ArrayLit,
  TupleLit,
  ObjectLit,
  Binary,
  Filter,
  Select,
  Test,
  Unary,
  Slice,
  KwArg,
  Spread,
  KwSpread,
  Ternary
};

struct Node;
using NodePtr = std::unique_ptr<Node>;
using Nodes = std::vector<NodePtr>;

struct Node {
  N type;
  std::string str;  // identifier, string literal, operator, test/macro name
  double num = 0.0;
  bool flag =
      false;  // Member: computed; Test: negate; Call stmt: has caller args
  NodePtr a, b, c;
  Nodes list;   // args, elements, loop body, if body
  Nodes list2;  // else / default block, caller args
  std::vector<std::pair<NodePtr, NodePtr>> pairs;  // object literal
};

NodePtr parse(const std::vector<Token>& tokens, int max_depth);

// ---- evaluation (runtime.ts Interpreter) ----

struct Env {
  EnvPtr parent;
  std::unordered_map<std::string, Value> vars;
  explicit Env(EnvPtr p = nullptr) : parent(std::move(p)) {}
  Value lookup(const std::string& name) const;
  void set(const std::string& name, Value v) { vars[name] = std::move(v); }
};

/// A parsed template; render() is const and thread-safe.
class Template {
 public:
  Template(const std::string& source, Limits limits);
  ~Template();
  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;
  /// Renders with the global variables `context` (converted JSON values).
  std::string render(
      const std::vector<std::pair<std::string, Value>>& context) const;

 private:
  NodePtr program_;
  Limits limits_;
};

}  // namespace lowmem::text::jinja
