// Lexer and parser of the Jinja subset: a transcription of the grammar of
// @huggingface/jinja 0.5.11 (lexer.ts: preprocess with lstrip_blocks and
// trim_blocks, tokenize; parser.ts: parse). Precedence, lowest first:
// ternary / select, or, and, not, comparison (incl. in, not in), + - ~,
// * / // %, **, is-tests, |filters, unary sign, call/member. Recursion is
// bounded (Limits::max_parse_depth).
#include <cctype>
#include <cstdlib>
#include <tuple>

#include "jinja.h"

namespace lowmem::text::jinja {
namespace {

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_word(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
}
bool starts(const std::string& s, size_t i, const char* lit) {
  return s.compare(i, std::char_traits<char>::length(lit), lit) == 0;
}

// Line terminators after which JavaScript's multiline ^ matches.
size_t line_terminator_at(const std::string& s, size_t i) {
  if (s[i] == '\n' || s[i] == '\r') return 1;
  if (starts(s, i, "\xE2\x80\xA8") || starts(s, i, "\xE2\x80\xA9")) return 3;
  return 0;
}

// /^[ \t]*({[#%-])/gm -> "$1"
std::string lstrip_blocks(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  bool line_start = true;
  while (i < s.size()) {
    if (line_start) {
      size_t j = i;
      while (j < s.size() && (s[j] == ' ' || s[j] == '\t')) ++j;
      if (j + 1 < s.size() && s[j] == '{' &&
          (s[j + 1] == '#' || s[j + 1] == '%' || s[j + 1] == '-')) {
        i = j;  // drop the blanks
      }
      line_start = false;
      continue;
    }
    if (size_t n = line_terminator_at(s, i)) {
      out.append(s, i, n);
      i += n;
      line_start = true;
      continue;
    }
    out += s[i++];
  }
  return out;
}

// /([#%-]})\n/g -> "$1"
std::string trim_blocks(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    out += s[i];
    if (s[i] == '}' && i > 0 &&
        (s[i - 1] == '#' || s[i - 1] == '%' || s[i - 1] == '-') &&
        i + 1 < s.size() && s[i + 1] == '\n') {
      ++i;  // skip the newline
    }
  }
  return out;
}

// /(\s*){%(-?)\s*(?:end)?generation\s*(-?)%}(\s*)/gs ->
// (lstrip ? "" : before) + (rstrip ? "" : after)
std::string strip_generation_tags(const std::string& s) {
  std::string out;
  size_t pos = 0;  // end of the last match
  size_t search = 0;
  while (true) {
    const size_t t = s.find("{%", search);
    if (t == std::string::npos) break;
    size_t k = t + 2;
    const bool lstrip = k < s.size() && s[k] == '-';
    if (lstrip) ++k;
    while (size_t n = js_space_at(s, k)) k += n;
    if (starts(s, k, "end")) k += 3;
    if (!starts(s, k, "generation")) {
      search = t + 1;
      continue;
    }
    k += 10;
    while (size_t n = js_space_at(s, k)) k += n;
    const bool rstrip = k < s.size() && s[k] == '-';
    if (rstrip) ++k;
    if (!starts(s, k, "%}")) {
      search = t + 1;
      continue;
    }
    const size_t tag_end = k + 2;
    size_t ws = t;
    while (ws > pos) {
      const size_t n = js_space_before(s, ws);
      if (!n || ws - n < pos) break;
      ws -= n;
    }
    size_t after = tag_end;
    while (size_t n = js_space_at(s, after)) after += n;
    out.append(s, pos, ws - pos);
    if (!lstrip) out.append(s, ws, t - ws);
    if (!rstrip) out.append(s, tag_end, after - tag_end);
    pos = search = after;
  }
  out.append(s, pos, std::string::npos);
  return out;
}

}  // namespace

std::string preprocess(const std::string& source) {
  std::string t = source;
  if (!t.empty() && t.back() == '\n') t.pop_back();
  return strip_generation_tags(trim_blocks(lstrip_blocks(t)));
}

namespace {

// The lexer of @huggingface/jinja's lexer.ts `tokenize`, one method per kind
// of token; each returns whether it consumed something.
class Lexer {
 public:
  explicit Lexer(std::string src) : src_(std::move(src)), n_(src_.size()) {}

  std::vector<Token> run() {
    while (pos_ < n_) {
      if (text() || comment() || open_stripped()) continue;
      while (size_t k = js_space_at(src_, pos_)) {
        pos_ += k;
        if (pos_ >= n_) throw Error("Unexpected end of input");
      }
      if (close_stripped() || signed_number() || symbol()) continue;
      const char ch = src_[pos_];
      if (ch == '\'' || ch == '"') {
        string_literal(ch);
      } else if (is_digit(ch)) {
        number();
      } else if (is_word(ch)) {
        identifier();
      } else {
        throw Error(std::string("Unexpected character: ") + ch);
      }
    }
    return std::move(tokens_);
  }

 private:
  int last_type() const {
    return tokens_.empty() ? -1 : static_cast<int>(tokens_.back().type);
  }
  void strip_trailing() {
    if (!tokens_.empty() && tokens_.back().type == Tok::Text) {
      tokens_.back().value = js_trim(tokens_.back().value, false, true);
      if (tokens_.back().value.empty()) tokens_.pop_back();
    }
  }
  void skip_leading() {
    while (size_t k = js_space_at(src_, pos_)) pos_ += k;
  }
  // consumeWhile: consuming the last character of the input is an error.
  std::string consume_digits() {
    std::string out;
    while (pos_ < n_ && is_digit(src_[pos_])) {
      out += src_[pos_++];
      if (pos_ >= n_) throw Error("Unexpected end of input");
    }
    return out;
  }

  // Template text up to the next {% {{ {#, after a tag or at the start.
  bool text() {
    const int lt = last_type();
    if (!(lt == -1 || lt == static_cast<int>(Tok::CloseStatement) ||
          lt == static_cast<int>(Tok::CloseExpression) ||
          lt == static_cast<int>(Tok::Comment))) {
      return false;
    }
    const size_t start = pos_;
    while (pos_ < n_ && !(src_[pos_] == '{' && pos_ + 1 < n_ &&
                          (src_[pos_ + 1] == '%' || src_[pos_ + 1] == '{' ||
                           src_[pos_ + 1] == '#')))
      ++pos_;
    if (pos_ == start) return false;
    tokens_.push_back({src_.substr(start, pos_ - start), Tok::Text});
    return true;
  }

  bool comment() {
    if (!starts(src_, pos_, "{#")) return false;
    pos_ += 2;
    const bool strip_before = pos_ < n_ && src_[pos_] == '-';
    if (strip_before) ++pos_;
    std::string body;
    while (!(pos_ + 1 < n_ && src_[pos_] == '#' && src_[pos_ + 1] == '}')) {
      if (pos_ + 2 >= n_) throw Error("Missing end of comment tag");
      body += src_[pos_++];
    }
    const bool strip_after = !body.empty() && body.back() == '-';
    if (strip_after) body.pop_back();
    if (strip_before) strip_trailing();
    tokens_.push_back({body, Tok::Comment});
    pos_ += 2;
    if (strip_after) skip_leading();
    return true;
  }

  // {%- and {{- strip the text before them.
  bool open_stripped() {
    if (starts(src_, pos_, "{%-")) {
      strip_trailing();
      tokens_.push_back({"{%", Tok::OpenStatement});
      pos_ += 3;
      return true;
    }
    if (starts(src_, pos_, "{{-")) {
      strip_trailing();
      tokens_.push_back({"{{", Tok::OpenExpression});
      curly_ = 0;
      pos_ += 3;
      return true;
    }
    return false;
  }

  // -%} and -}} strip the whitespace after them.
  bool close_stripped() {
    for (const auto& [seq, close, type] :
         {std::tuple{"-%}", "%}", Tok::CloseStatement},
          std::tuple{"-}}", "}}", Tok::CloseExpression}}) {
      if (starts(src_, pos_, seq)) {
        tokens_.push_back({close, type});
        pos_ += 3;
        skip_leading();
        return true;
      }
    }
    return false;
  }

  // A '-' or '+' that is not a binary operator: a signed number or a unary.
  bool signed_number() {
    const char ch = src_[pos_];
    if (ch != '-' && ch != '+') return false;
    const int l2 = last_type();
    if (l2 == -1 || l2 == static_cast<int>(Tok::Text))
      throw Error(std::string("Unexpected character: ") + ch);
    const auto t = static_cast<Tok>(l2);
    if (t == Tok::Identifier || t == Tok::Number || t == Tok::String ||
        t == Tok::CloseParen || t == Tok::CloseSquare) {
      return false;
    }
    ++pos_;
    std::string num = consume_digits();
    if (!num.empty() && pos_ + 1 < n_ && src_[pos_] == '.' &&
        is_digit(src_[pos_ + 1])) {
      ++pos_;
      num += "." + consume_digits();
    }
    tokens_.push_back(
        {std::string(1, ch) + num, num.empty() ? Tok::Unary : Tok::Number});
    return true;
  }

  bool symbol() {
    struct Map {
      const char* seq;
      Tok type;
    };
    static const Map kTable[] = {
        {"{%", Tok::OpenStatement},  {"%}", Tok::CloseStatement},
        {"{{", Tok::OpenExpression}, {"}}", Tok::CloseExpression},
        {"(", Tok::OpenParen},       {")", Tok::CloseParen},
        {"{", Tok::OpenCurly},       {"}", Tok::CloseCurly},
        {"[", Tok::OpenSquare},      {"]", Tok::CloseSquare},
        {",", Tok::Comma},           {".", Tok::Dot},
        {":", Tok::Colon},           {"|", Tok::Pipe},
        {"<=", Tok::Comparison},     {">=", Tok::Comparison},
        {"==", Tok::Comparison},     {"!=", Tok::Comparison},
        {"<", Tok::Comparison},      {">", Tok::Comparison},
        {"+", Tok::Additive},        {"-", Tok::Additive},
        {"~", Tok::Additive},        {"**", Tok::Exponent},
        {"*", Tok::Multiplicative},  {"//", Tok::Multiplicative},
        {"/", Tok::Multiplicative},  {"%", Tok::Multiplicative},
        {"=", Tok::Equals}};
    for (const auto& m : kTable) {
      if (m.type == Tok::CloseExpression && curly_ > 0) continue;
      if (starts(src_, pos_, m.seq)) {
        tokens_.push_back({m.seq, m.type});
        if (m.type == Tok::OpenExpression)
          curly_ = 0;
        else if (m.type == Tok::OpenCurly)
          ++curly_;
        else if (m.type == Tok::CloseCurly)
          --curly_;
        pos_ += std::char_traits<char>::length(m.seq);
        return true;
      }
    }
    return false;
  }

  static char16_t escaped(char e) {
    switch (e) {
      case 'n':
        return '\n';
      case 't':
        return '\t';
      case 'r':
        return '\r';
      case 'b':
        return '\b';
      case 'f':
        return '\f';
      case 'v':
        return '\v';
      case '\'':
        return '\'';
      case '"':
        return '"';
      case '\\':
        return '\\';
      default:
        throw Error(std::string("Unexpected escaped character: ") + e);
    }
  }

  // After a backslash: \xHH, \uHHHH or one of escaped()'s letters.
  void escape(std::u16string& str) {
    ++pos_;
    if (pos_ >= n_) throw Error("Unexpected end of input");
    const char e = src_[pos_++];
    if (e != 'x' && e != 'u') {
      str += escaped(e);
      return;
    }
    const size_t len = e == 'x' ? 2 : 4;
    const std::string hex = src_.substr(pos_, len);
    bool ok = hex.size() == len;
    for (char h : hex) ok = ok && std::isxdigit(static_cast<unsigned char>(h));
    if (!ok)
      throw Error("Invalid hexadecimal escape sequence: \\" +
                  std::string(1, e) + hex);
    str += static_cast<char16_t>(std::stoul(hex, nullptr, 16));
    pos_ += len;
  }

  void string_literal(char quote) {
    ++pos_;
    std::u16string str;
    while (true) {
      if (pos_ >= n_) throw Error("Unexpected end of input");
      if (src_[pos_] == quote) break;
      if (src_[pos_] == '\\') {
        escape(str);
        continue;
      }
      // One source code point.
      size_t len = 1;
      const auto c = static_cast<unsigned char>(src_[pos_]);
      if (c >= 0xF0)
        len = 4;
      else if (c >= 0xE0)
        len = 3;
      else if (c >= 0xC0)
        len = 2;
      str += to_utf16(src_.substr(pos_, len));
      pos_ += len;
      if (pos_ >= n_) throw Error("Unexpected end of input");
    }
    tokens_.push_back({from_utf16(str), Tok::String});
    ++pos_;
  }

  void number() {
    const int lt = last_type();
    std::string num = consume_digits();
    if (!(lt == static_cast<int>(Tok::Dot)) && pos_ + 1 < n_ &&
        src_[pos_] == '.' && is_digit(src_[pos_ + 1])) {
      ++pos_;
      num += "." + consume_digits();
    }
    tokens_.push_back({num, Tok::Number});
  }

  void identifier() {
    std::string word;
    while (pos_ < n_ && is_word(src_[pos_])) {
      word += src_[pos_++];
      if (pos_ >= n_) throw Error("Unexpected end of input");
    }
    tokens_.push_back({word, Tok::Identifier});
  }

  std::string src_;
  size_t n_;
  std::vector<Token> tokens_;
  size_t pos_ = 0;
  int curly_ = 0;
};

}  // namespace

std::vector<Token> tokenize(const std::string& source) {
  return Lexer(preprocess(source)).run();
}

namespace {

class Parser {
 public:
  Parser(const std::vector<Token>& t, int max_depth)
      : t_(t), max_depth_(max_depth) {}

  NodePtr program() {
    auto p = make(N::Program);
    while (cur_ < t_.size()) p->list.push_back(any());
    return p;
  }

 private:
  struct Depth {
    Parser& p;
    explicit Depth(Parser& parser) : p(parser) {
      if (++p.depth_ > p.max_depth_)
        throw Error("template nesting deeper than " +
                    std::to_string(p.max_depth_) + " levels");
    }
    ~Depth() { --p.depth_; }
  };

  static NodePtr make(N type, std::string str = {}) {
    auto n = std::make_unique<Node>();
    n->type = type;
    n->str = std::move(str);
    return n;
  }

  const Token& tok(size_t i) const {
    if (i >= t_.size()) throw Error("Unexpected end of template");
    return t_[i];
  }
  const Token& peek() const { return tok(cur_); }
  bool is(Tok a) const { return cur_ < t_.size() && t_[cur_].type == a; }
  bool is2(Tok a, Tok b) const {
    return cur_ + 1 < t_.size() && t_[cur_].type == a && t_[cur_ + 1].type == b;
  }
  bool is_ident(const char* name, size_t off = 0) const {
    return cur_ + off < t_.size() && t_[cur_ + off].type == Tok::Identifier &&
           t_[cur_ + off].value == name;
  }
  bool is_statement(std::initializer_list<const char*> names) const {
    if (!(cur_ + 1 < t_.size() && t_[cur_].type == Tok::OpenStatement &&
          t_[cur_ + 1].type == Tok::Identifier))
      return false;
    for (const char* nm : names)
      if (t_[cur_ + 1].value == nm) return true;
    return false;
  }
  const Token& expect(Tok type, const char* what) {
    const Token& tk = tok(cur_);
    if (tk.type != type) throw Error(std::string("Parser Error: ") + what);
    ++cur_;
    return tk;
  }
  void expect_ident(const char* name) {
    if (!is_ident(name)) throw Error(std::string("Expected ") + name);
    ++cur_;
  }
  // Until one of `names` opens a statement; running out of tokens is an
  // error naming the missing tag.
  void body_until(Nodes& out, std::initializer_list<const char*> names,
                  const char* missing) {
    while (!is_statement(names)) {
      if (cur_ >= t_.size())
        throw Error(std::string("Expected {% ") + missing + " %}");
      out.push_back(any());
    }
  }

  NodePtr any() {
    Depth d(*this);
    const Token& tk = peek();
    switch (tk.type) {
      case Tok::Comment:
        ++cur_;
        return make(N::Comment, tk.value);
      case Tok::Text:
        ++cur_;
        return make(N::StringLit, tk.value);
      case Tok::OpenStatement:
        return statement();
      case Tok::OpenExpression: {
        ++cur_;
        auto e = expression();
        expect(Tok::CloseExpression, "Expected closing expression token");
        return e;
      }
      default:
        throw Error("Unexpected token: " + tk.value);
    }
  }

  NodePtr statement() {
    expect(Tok::OpenStatement, "Expected opening statement token");
    const Token& nameTok = peek();
    if (nameTok.type != Tok::Identifier)
      throw Error("Unknown statement, got " + nameTok.value);
    const std::string name = nameTok.value;
    NodePtr result;
    if (name == "set") {
      ++cur_;
      result = set_statement();
    } else if (name == "if") {
      ++cur_;
      result = if_statement();
      expect(Tok::OpenStatement, "Expected {% token");
      expect_ident("endif");
      expect(Tok::CloseStatement, "Expected %} token");
    } else if (name == "macro") {
      ++cur_;
      result = make(N::Macro);
      auto nm = primary();
      if (nm->type != N::Identifier)
        throw Error("Expected identifier following macro statement");
      result->str = nm->str;
      args(result->list, true);
      expect(Tok::CloseStatement, "Expected closing statement token");
      body_until(result->list2, {"endmacro"}, "endmacro");
      expect(Tok::OpenStatement, "Expected {% token");
      expect_ident("endmacro");
      expect(Tok::CloseStatement, "Expected %} token");
    } else if (name == "for") {
      ++cur_;
      result = for_statement();
      expect(Tok::OpenStatement, "Expected {% token");
      expect_ident("endfor");
      expect(Tok::CloseStatement, "Expected %} token");
    } else if (name == "call") {
      ++cur_;
      result = make(N::CallStatement);
      if (is(Tok::OpenParen)) {
        result->flag = true;
        args(result->list2, true);
      }
      auto callee = primary();
      if (callee->type != N::Identifier)
        throw Error("Expected identifier following call statement");
      auto call = make(N::Call);
      call->a = std::move(callee);
      args(call->list, false);
      result->a = std::move(call);
      expect(Tok::CloseStatement, "Expected closing statement token");
      body_until(result->list, {"endcall"}, "endcall");
      expect(Tok::OpenStatement, "Expected '{%'");
      expect_ident("endcall");
      expect(Tok::CloseStatement, "Expected closing statement token");
    } else if (name == "break" || name == "continue") {
      ++cur_;
      expect(Tok::CloseStatement, "Expected closing statement token");
      result = make(name == "break" ? N::Break : N::Continue);
    } else if (name == "filter") {
      ++cur_;
      result = make(N::FilterStatement);
      auto f = primary();
      if (f->type == N::Identifier && is(Tok::OpenParen))
        f = call_expression(std::move(f));
      result->a = std::move(f);
      expect(Tok::CloseStatement, "Expected closing statement token");
      body_until(result->list, {"endfilter"}, "endfilter");
      expect(Tok::OpenStatement, "Expected '{%'");
      expect_ident("endfilter");
      expect(Tok::CloseStatement, "Expected '%}'");
    } else {
      throw Error("Unknown statement type: " + name);
    }
    return result;
  }

  NodePtr set_statement() {
    auto s = make(N::Set);
    s->a = expression_sequence(false);
    if (is(Tok::Equals)) {
      ++cur_;
      s->b = expression_sequence(false);
    } else {
      expect(Tok::CloseStatement, "Expected %} token");
      body_until(s->list, {"endset"}, "endset");
      expect(Tok::OpenStatement, "Expected {% token");
      expect_ident("endset");
    }
    expect(Tok::CloseStatement, "Expected closing statement token");
    return s;
  }

  NodePtr if_statement() {
    Depth d(*this);
    auto n = make(N::If);
    n->a = expression();
    expect(Tok::CloseStatement, "Expected closing statement token");
    body_until(n->list, {"elif", "else", "endif"}, "endif");
    if (is_statement({"elif"})) {
      cur_ += 2;
      n->list2.push_back(if_statement());
    } else if (is_statement({"else"})) {
      cur_ += 2;
      expect(Tok::CloseStatement, "Expected closing statement token");
      body_until(n->list2, {"endif"}, "endif");
    }
    return n;
  }

  NodePtr for_statement() {
    auto n = make(N::For);
    n->a = expression_sequence(true);
    if (n->a->type != N::Identifier && n->a->type != N::TupleLit)
      throw Error("Expected identifier/tuple for the loop variable");
    if (!is_ident("in"))
      throw Error("Expected `in` keyword following loop variable");
    ++cur_;
    n->b = expression();
    expect(Tok::CloseStatement, "Expected closing statement token");
    body_until(n->list, {"endfor", "else"}, "endfor");
    if (is_statement({"else"})) {
      cur_ += 2;
      expect(Tok::CloseStatement, "Expected closing statement token");
      body_until(n->list2, {"endfor"}, "endfor");
    }
    return n;
  }

  NodePtr expression_sequence(bool primary_only) {
    Depth d(*this);
    auto first = primary_only ? primary() : expression();
    if (!is(Tok::Comma)) return first;
    auto tuple = make(N::TupleLit);
    tuple->list.push_back(std::move(first));
    while (is(Tok::Comma)) {
      ++cur_;
      tuple->list.push_back(primary_only ? primary() : expression());
    }
    return tuple;
  }

  NodePtr expression() {
    Depth d(*this);
    auto a = logical_or();
    if (is_ident("if")) {
      ++cur_;
      auto test = logical_or();
      if (is_ident("else")) {
        ++cur_;
        auto t = make(N::Ternary);
        t->a = std::move(test);
        t->b = std::move(a);
        t->c = expression();
        return t;
      }
      auto s = make(N::Select);
      s->a = std::move(a);
      s->b = std::move(test);
      return s;
    }
    return a;
  }

  NodePtr binary(std::string op, NodePtr l, NodePtr r) {
    auto n = make(N::Binary, std::move(op));
    n->a = std::move(l);
    n->b = std::move(r);
    return n;
  }

  NodePtr logical_or() {
    auto left = logical_and();
    while (is_ident("or")) {
      ++cur_;
      left = binary("or", std::move(left), logical_and());
    }
    return left;
  }

  NodePtr logical_and() {
    auto left = logical_not();
    while (is_ident("and")) {
      ++cur_;
      left = binary("and", std::move(left), logical_not());
    }
    return left;
  }

  NodePtr logical_not() {
    Depth d(*this);
    NodePtr right;
    while (is_ident("not")) {
      ++cur_;
      auto u = make(N::Unary, "not");
      u->a = logical_not();
      right = std::move(u);
    }
    return right ? std::move(right) : comparison();
  }

  NodePtr comparison() {
    auto left = additive();
    while (true) {
      std::string op;
      if (is_ident("not") && is_ident("in", 1)) {
        op = "not in";
        cur_ += 2;
      } else if (is_ident("in")) {
        op = "in";
        ++cur_;
      } else if (is(Tok::Comparison)) {
        op = t_[cur_++].value;
      } else {
        break;
      }
      left = binary(op, std::move(left), additive());
    }
    return left;
  }

  NodePtr additive() {
    auto left = multiplicative();
    while (is(Tok::Additive)) {
      const std::string op = t_[cur_++].value;
      left = binary(op, std::move(left), multiplicative());
    }
    return left;
  }

  NodePtr multiplicative() {
    auto left = power();
    while (is(Tok::Multiplicative)) {
      const std::string op = t_[cur_++].value;
      left = binary(op, std::move(left), power());
    }
    return left;
  }

  NodePtr power() {
    auto left = test_expression();
    while (is(Tok::Exponent)) {
      ++cur_;
      left = binary("**", std::move(left), test_expression());
    }
    return left;
  }

  NodePtr test_expression() {
    auto operand = filter_expression();
    while (is_ident("is")) {
      ++cur_;
      const bool negate = is_ident("not");
      if (negate) ++cur_;
      auto f = primary();
      if (f->type != N::Identifier)
        throw Error("Expected identifier for the test");
      auto t = make(N::Test, f->str);
      t->flag = negate;
      t->a = std::move(operand);
      operand = std::move(t);
    }
    return operand;
  }

  NodePtr filter_expression() {
    auto operand = unary_sign();
    while (is(Tok::Pipe)) {
      ++cur_;
      auto f = primary();
      if (f->type != N::Identifier)
        throw Error("Expected identifier for the filter");
      if (is(Tok::OpenParen)) f = call_expression(std::move(f));
      auto n = make(N::Filter);
      n->a = std::move(operand);
      n->b = std::move(f);
      operand = std::move(n);
    }
    return operand;
  }

  NodePtr unary_sign() {
    Depth d(*this);
    if (cur_ < t_.size() &&
        (t_[cur_].type == Tok::Unary || t_[cur_].type == Tok::Additive) &&
        (t_[cur_].value == "-" || t_[cur_].value == "+")) {
      auto u = make(N::Unary, t_[cur_++].value);
      u->a = unary_sign();
      return u;
    }
    auto member = member_expression(primary());
    if (is(Tok::OpenParen)) return call_expression(std::move(member));
    return member;
  }

  NodePtr call_expression(NodePtr callee) {
    Depth d(*this);
    auto call = make(N::Call);
    call->a = std::move(callee);
    args(call->list, false);
    NodePtr e = member_expression(std::move(call));
    if (is(Tok::OpenParen)) e = call_expression(std::move(e));
    return e;
  }

  void args(Nodes& out, bool parameters) {
    expect(Tok::OpenParen, "Expected opening parenthesis for arguments list");
    bool saw_keyword = false, saw_spread = false;
    std::vector<std::string> names;
    while (!is(Tok::CloseParen)) {
      if (cur_ >= t_.size())
        throw Error("Expected closing parenthesis for arguments list");
      const bool kw_spread = is(Tok::Exponent);
      const bool pos_spread = is(Tok::Multiplicative) && t_[cur_].value == "*";
      if (parameters && (kw_spread || pos_spread))
        throw Error(
            "Argument unpacking is not allowed in parameter declarations");
      if (kw_spread) {
        ++cur_;
        auto s = make(N::KwSpread);
        s->a = expression();
        out.push_back(std::move(s));
        if (is(Tok::Comma)) ++cur_;
        if (!is(Tok::CloseParen))
          throw Error(
              "Expected closing parenthesis: `**` must be applied to the final "
              "argument");
        break;
      }
      NodePtr arg;
      if (pos_spread) {
        if (saw_spread)
          throw Error("Only one `*` argument unpacking is allowed");
        saw_spread = true;
        ++cur_;
        arg = make(N::Spread);
        arg->a = expression();
      } else {
        arg = expression();
        if (is(Tok::Equals)) {
          ++cur_;
          if (arg->type != N::Identifier)
            throw Error(parameters
                            ? "Expected identifier for parameter declaration"
                            : "Expected identifier for keyword argument");
          auto kw = make(N::KwArg, arg->str);
          kw->a = expression();
          arg = std::move(kw);
        }
        if (parameters) {
          if (arg->type != N::Identifier && arg->type != N::KwArg)
            throw Error("Expected identifier for parameter declaration");
          for (const auto& nm : names)
            if (nm == arg->str) throw Error("Duplicate parameter name: " + nm);
          names.push_back(arg->str);
        }
        if (arg->type == N::KwArg) {
          saw_keyword = true;
        } else if (saw_keyword) {
          throw Error(
              parameters
                  ? "Non-default argument follows default argument"
                  : "Positional arguments must come before keyword arguments");
        } else if (saw_spread) {
          throw Error(
              "Positional arguments must not follow `*` argument unpacking");
        }
      }
      out.push_back(std::move(arg));
      if (is(Tok::Comma)) ++cur_;
    }
    expect(Tok::CloseParen, "Expected closing parenthesis for arguments list");
  }

  NodePtr member_arguments() {
    Nodes slices;
    bool is_slice = false;
    while (!is(Tok::CloseSquare)) {
      if (cur_ >= t_.size()) throw Error("Expected closing square bracket");
      if (is(Tok::Colon)) {
        slices.push_back(nullptr);
        ++cur_;
        is_slice = true;
      } else {
        slices.push_back(expression());
        if (is(Tok::Colon)) {
          ++cur_;
          is_slice = true;
        }
      }
    }
    if (slices.empty())
      throw Error("Expected at least one argument for member/slice expression");
    if (is_slice) {
      if (slices.size() > 3)
        throw Error("Expected 0-3 arguments for slice expression");
      auto s = make(N::Slice);
      s->a = std::move(slices[0]);
      if (slices.size() > 1) s->b = std::move(slices[1]);
      if (slices.size() > 2) s->c = std::move(slices[2]);
      return s;
    }
    return std::move(slices[0]);
  }

  NodePtr member_expression(NodePtr object) {
    while (is(Tok::Dot) || is(Tok::OpenSquare)) {
      const bool computed = t_[cur_].type == Tok::OpenSquare;
      ++cur_;
      auto m = make(N::Member);
      m->flag = computed;
      if (computed) {
        m->b = member_arguments();
        expect(Tok::CloseSquare, "Expected closing square bracket");
      } else {
        m->b = primary();
        if (m->b->type != N::Identifier && m->b->type != N::IntLit)
          throw Error("Expected identifier or integer following dot operator");
      }
      m->a = std::move(object);
      object = std::move(m);
    }
    return object;
  }

  NodePtr primary() {
    Depth d(*this);
    const Token& tk = tok(cur_++);
    switch (tk.type) {
      case Tok::Number: {
        const bool is_float = tk.value.find('.') != std::string::npos;
        auto n = make(is_float ? N::FloatLit : N::IntLit);
        // strtod, not std::stod: a literal of hundreds of digits is
        // Infinity as in JavaScript's Number(), not an out_of_range throw
        // (found by the fuzz replay's mutations).
        n->num = std::strtod(tk.value.c_str(), nullptr);
        return n;
      }
      case Tok::String: {
        std::string v = tk.value;
        while (is(Tok::String)) v += t_[cur_++].value;
        return make(N::StringLit, v);
      }
      case Tok::Identifier:
        return make(N::Identifier, tk.value);
      case Tok::OpenParen: {
        auto e = expression_sequence(false);
        expect(Tok::CloseParen, "Expected closing parenthesis");
        return e;
      }
      case Tok::OpenSquare: {
        auto arr = make(N::ArrayLit);
        while (!is(Tok::CloseSquare)) {
          if (cur_ >= t_.size()) throw Error("Expected closing square bracket");
          arr->list.push_back(expression());
          if (is(Tok::Comma)) ++cur_;
        }
        ++cur_;
        return arr;
      }
      case Tok::OpenCurly: {
        auto obj = make(N::ObjectLit);
        while (!is(Tok::CloseCurly)) {
          if (cur_ >= t_.size()) throw Error("Expected closing curly bracket");
          auto key = expression();
          expect(Tok::Colon,
                 "Expected colon between key and value in object literal");
          auto value = expression();
          obj->pairs.emplace_back(std::move(key), std::move(value));
          if (is(Tok::Comma)) ++cur_;
        }
        ++cur_;
        return obj;
      }
      default:
        throw Error("Unexpected token: " + tk.value);
    }
  }

  const std::vector<Token>& t_;
  size_t cur_ = 0;
  int depth_ = 0;
  int max_depth_;
};

}  // namespace

NodePtr parse(const std::vector<Token>& tokens, int max_depth) {
  return Parser(tokens, max_depth).program();
}

}  // namespace lowmem::text::jinja
