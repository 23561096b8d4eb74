// The split-pattern regex engine (see lowmem/text/regex.h for the semantics).
// A recursive-descent parser builds a node tree; matching is backtracking with
// explicit continuations (Cont frames on the C++ stack), so quantifiers over
// groups and lookaheads compose without a separate NFA. A quantifier over one
// character (the hot case: \p{L}+, \s+, ...) scans greedily and backs off one
// character at a time without recursion.
#include "lowmem/text/regex.h"

#include <unicode/uchar.h>
#include <unicode/uset.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <stdexcept>

#include "bounded.h"
#include "lowmem/core/check.h"
#include "utf8.h"

namespace lowmem::text {
namespace {

constexpr size_t kMaxPatternBytes = 16 << 10;
constexpr int kMaxNesting = 64;
constexpr int kMaxRepeat = 100000;
// Backtracking limits: recursion depth (stack) and steps per search (time).
constexpr int kMaxDepth = 4000;
constexpr int64_t kMaxSteps = int64_t{50} << 20;

struct CharClass {
  std::array<uint64_t, 1024> bmp{};  // U+0000..U+FFFF
  std::vector<std::pair<char32_t, char32_t>> supplementary;

  bool contains(char32_t c) const {
    if (c < 0x10000) {
      return (bmp[c >> 6] >> (c & 63)) & 1;
    }
    auto it = std::upper_bound(
        supplementary.begin(), supplementary.end(), c,
        [](char32_t v, const std::pair<char32_t, char32_t>& r) {
          return v < r.first;
        });
    return it != supplementary.begin() && c <= std::prev(it)->second;
  }
  bool operator==(const CharClass& o) const {
    return bmp == o.bmp && supplementary == o.supplementary;
  }
};

enum class Op : uint8_t { kChar, kClass, kSeq, kAlt, kRepeat, kLook, kAssert };
enum class Assert : uint8_t {
  kLineStart,
  kLineEnd,
  kTextStart,
  kTextEnd,
  kTextEndNewline
};

struct Node {
  Op op = Op::kSeq;
  bool greedy = true;
  bool negate = false;  // kLook: (?!...)
  Assert assertion = Assert::kLineStart;
  uint8_t nchars = 0;  // kChar: the code point and its case variants
  std::array<char32_t, 4> chars{};
  int cls = -1;           // kClass
  int min = 0, max = -1;  // kRepeat; max -1 = unbounded
  std::vector<int> kids;
};

// RAII owner of an ICU USet.
struct USetPtr {
  USet* p;
  explicit USetPtr(USet* s) : p(s) {}
  ~USetPtr() {
    if (p != nullptr) {
      uset_close(p);
    }
  }
  USetPtr(const USetPtr&) = delete;
  USetPtr& operator=(const USetPtr&) = delete;
};

}  // namespace

struct Regex::Program {
  std::string pattern;
  std::vector<Node> nodes;
  std::vector<CharClass> classes;
  int root = -1;

  bool test(const Node& nd, char32_t c) const {
    if (nd.op == Op::kChar) {
      for (int i = 0; i < nd.nchars; ++i) {
        if (nd.chars[i] == c) {
          return true;
        }
      }
      return false;
    }
    return classes[nd.cls].contains(c);
  }
};

namespace {

class Parser {
 public:
  Parser(std::string_view pattern, Regex::Program& prog)
      : s_(pattern), prog_(prog) {}

  int parse() {
    int root = alternation(0);
    if (pos_ < s_.size()) {
      fail(s_[pos_] == ')' ? "unbalanced ')'" : "unexpected character");
    }
    return root;
  }

 private:
  std::string_view s_;
  Regex::Program& prog_;
  size_t pos_ = 0;
  bool icase_ = false;

  [[noreturn]] void fail(const std::string& why) const {
    LOWMEM_CHECK(false, "[text] regex '", detail::quote_for_error(s_),
                 "': ", why, " at offset ", pos_);
    throw std::logic_error("unreachable");
  }
  bool at_end() const { return pos_ >= s_.size(); }
  char peek() const { return s_[pos_]; }
  bool starts_with(std::string_view t) const {
    return s_.substr(pos_, t.size()) == t;
  }
  char32_t next_code_point() {
    int len = 0;
    char32_t c = detail::decode_utf8(s_.data(), pos_, &len);
    pos_ += static_cast<size_t>(len);
    return c;
  }
  int add(Node n) {
    prog_.nodes.push_back(std::move(n));
    return static_cast<int>(prog_.nodes.size()) - 1;
  }

  int alternation(int depth) {
    if (depth > kMaxNesting) {
      fail("groups nested deeper than " + std::to_string(kMaxNesting));
    }
    std::vector<int> branches{sequence(depth)};
    while (!at_end() && peek() == '|') {
      ++pos_;
      branches.push_back(sequence(depth));
    }
    if (branches.size() == 1) {
      return branches[0];
    }
    Node n;
    n.op = Op::kAlt;
    n.kids = std::move(branches);
    return add(std::move(n));
  }

  int sequence(int depth) {
    Node seq;
    seq.op = Op::kSeq;
    while (!at_end() && peek() != '|' && peek() != ')') {
      // Inline flag groups (?i) / (?-i) change the flags for the rest of the
      // enclosing group.
      if (starts_with("(?i)")) {
        icase_ = true;
        pos_ += 4;
        continue;
      }
      if (starts_with("(?-i)")) {
        icase_ = false;
        pos_ += 5;
        continue;
      }
      int atom_id = atom(depth);
      atom_id = quantified(atom_id);
      seq.kids.push_back(atom_id);
    }
    // (?i) lasts to the end of the enclosing group, later alternatives
    // included (group() restores the flag when the group closes).
    if (seq.kids.size() == 1) {
      return seq.kids[0];
    }
    return add(std::move(seq));
  }

  bool parse_int(int* out) {
    size_t start = pos_;
    int64_t v = 0;
    while (!at_end() && peek() >= '0' && peek() <= '9') {
      v = v * 10 + (peek() - '0');
      if (v > kMaxRepeat) {
        fail("repetition count over " + std::to_string(kMaxRepeat));
      }
      ++pos_;
    }
    *out = static_cast<int>(v);
    return pos_ > start;
  }

  int quantified(int atom_id) {
    if (at_end()) {
      return atom_id;
    }
    int min = 0, max = -1;
    const char c = peek();
    if (c == '*') {
      ++pos_;
    } else if (c == '+') {
      min = 1;
      ++pos_;
    } else if (c == '?') {
      max = 1;
      ++pos_;
    } else if (c == '{') {
      // {n} {n,} {n,m} {,m}; anything else is a literal '{' (as Oniguruma).
      size_t save = pos_;
      ++pos_;
      int a = 0, b = -1;
      bool has_a = parse_int(&a);
      bool ok = true;
      if (!at_end() && peek() == ',') {
        ++pos_;
        int v = 0;
        if (parse_int(&v)) {
          b = v;
        }
        ok = has_a || b >= 0;
      } else {
        b = a;
        ok = has_a;
      }
      if (!ok || at_end() || peek() != '}') {
        pos_ = save;
        return atom_id;
      }
      ++pos_;
      if (b >= 0 && b < a) {
        fail("repetition {" + std::to_string(a) + "," + std::to_string(b) +
             "} with max < min");
      }
      min = a;
      max = b;
    } else {
      return atom_id;
    }
    bool greedy = true;
    if (!at_end() && peek() == '?') {
      greedy = false;
      ++pos_;
    } else if (!at_end() && peek() == '+') {
      fail("possessive quantifiers are not supported");
    }
    if (!at_end() && (peek() == '*' || peek() == '+' || peek() == '?' ||
                      (peek() == '{' && c != '{'))) {
      fail("nested quantifier");
    }
    const Op op = prog_.nodes[atom_id].op;
    if (op == Op::kAssert || op == Op::kLook) {
      fail("quantifier on an assertion");
    }
    Node n;
    n.op = Op::kRepeat;
    n.min = min;
    n.max = max;
    n.greedy = greedy;
    n.kids = {atom_id};
    return add(std::move(n));
  }

  int atom(int depth) {
    const char c = peek();
    switch (c) {
      case '(':
        return group(depth);
      case '[':
        return char_class();
      case '.': {
        ++pos_;
        USetPtr set(uset_openEmpty());
        uset_addRange(set.p, 0, 0x10FFFF);
        uset_remove(set.p, '\n');
        return class_node(set.p, false);
      }
      case '^':
        ++pos_;
        return assertion(Assert::kLineStart);
      case '$':
        ++pos_;
        return assertion(Assert::kLineEnd);
      case '\\':
        return escape_atom();
      case '*':
      case '+':
      case '?':
        fail(std::string("quantifier '") + c + "' without an operand");
      default:
        return literal(next_code_point());
    }
  }

  int assertion(Assert a) {
    Node n;
    n.op = Op::kAssert;
    n.assertion = a;
    return add(std::move(n));
  }

  int group(int depth) {
    const size_t open = pos_;
    ++pos_;  // '('
    const bool saved = icase_;
    int kind = 0;  // 0 group, 1 lookahead, 2 negative lookahead
    if (starts_with("?:")) {
      pos_ += 2;
    } else if (starts_with("?i:")) {
      pos_ += 3;
      icase_ = true;
    } else if (starts_with("?-i:")) {
      pos_ += 4;
      icase_ = false;
    } else if (starts_with("?=")) {
      pos_ += 2;
      kind = 1;
    } else if (starts_with("?!")) {
      pos_ += 2;
      kind = 2;
    } else if (starts_with("?<=") || starts_with("?<!")) {
      fail("lookbehind is not supported");
    } else if (starts_with("?<") || starts_with("?P<")) {
      // Named group: no backreferences are supported, so it is a plain group.
      size_t close = s_.find('>', pos_);
      if (close == std::string_view::npos) {
        fail("unterminated group name");
      }
      pos_ = close + 1;
    } else if (starts_with("?>")) {
      fail("atomic groups are not supported");
    } else if (starts_with("?")) {
      fail("unsupported group syntax '(" +
           std::string(s_.substr(pos_, std::min<size_t>(4, s_.size() - pos_))) +
           "'");
    }
    int inner = alternation(depth + 1);
    if (at_end() || peek() != ')') {
      pos_ = open;
      fail("unterminated group");
    }
    ++pos_;
    icase_ = saved;
    if (kind == 0) {
      return inner;
    }
    Node n;
    n.op = Op::kLook;
    n.negate = kind == 2;
    n.kids = {inner};
    return add(std::move(n));
  }

  // One code point as a node; under (?i) it matches its case closure.
  int literal(char32_t c) {
    Node n;
    n.op = Op::kChar;
    n.chars[0] = c;
    n.nchars = 1;
    if (icase_) {
      USetPtr set(uset_openEmpty());
      uset_add(set.p, static_cast<UChar32>(c));
      uset_closeOver(set.p, USET_CASE_INSENSITIVE);
      std::vector<char32_t> cps;
      const int32_t items = uset_getItemCount(set.p);
      for (int32_t i = 0; i < items; ++i) {
        UChar32 a = 0, b = 0;
        UErrorCode st = U_ZERO_ERROR;
        if (uset_getItem(set.p, i, &a, &b, nullptr, 0, &st) == 0) {
          for (UChar32 x = a; x <= b; ++x) {
            cps.push_back(static_cast<char32_t>(x));
          }
        }
      }
      if (cps.size() > n.chars.size()) {
        return class_node(set.p, false);
      }
      n.nchars = static_cast<uint8_t>(cps.size());
      std::copy(cps.begin(), cps.end(), n.chars.begin());
    }
    return add(std::move(n));
  }

  // Stores the set (closed over case when (?i), complemented when `negate`)
  // as a class, sharing an identical existing one.
  int class_node(USet* set, bool negate) {
    if (icase_) {
      uset_closeOver(set, USET_CASE_INSENSITIVE);
    }
    if (negate) {
      uset_complement(set);
    }
    CharClass cc;
    const int32_t items = uset_getItemCount(set);
    for (int32_t i = 0; i < items; ++i) {
      UChar32 a = 0, b = 0;
      UErrorCode st = U_ZERO_ERROR;
      if (uset_getItem(set, i, &a, &b, nullptr, 0, &st) != 0) {
        continue;  // a multi-character string (from case closure): ignored
      }
      for (UChar32 x = a; x <= std::min<UChar32>(b, 0xFFFF); ++x) {
        cc.bmp[static_cast<size_t>(x) >> 6] |= uint64_t{1} << (x & 63);
      }
      if (b >= 0x10000) {
        cc.supplementary.emplace_back(
            static_cast<char32_t>(std::max<UChar32>(a, 0x10000)),
            static_cast<char32_t>(b));
      }
    }
    int id = -1;
    for (size_t i = 0; i < prog_.classes.size(); ++i) {
      if (prog_.classes[i] == cc) {
        id = static_cast<int>(i);
        break;
      }
    }
    if (id < 0) {
      prog_.classes.push_back(std::move(cc));
      id = static_cast<int>(prog_.classes.size()) - 1;
    }
    Node n;
    n.op = Op::kClass;
    n.cls = id;
    return add(std::move(n));
  }

  // Adds the ICU property `name` (a general category, script or binary
  // property: "L", "Lu", "Han", "White_Space", ...) to `set`.
  void add_property(USet* set, const std::string& name, bool negate) {
    if (name.empty() || name.size() > 64) {
      fail("bad Unicode property name");
    }
    for (char ch : name) {
      const bool ok = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                      (ch >= '0' && ch <= '9') || ch == '_' || ch == '-' ||
                      ch == ' ' || ch == '=';
      if (!ok) {
        fail("bad Unicode property name '" + name + "'");
      }
    }
    std::u16string pat = u"[\\p{";
    for (char ch : name) {
      pat += static_cast<char16_t>(ch);
    }
    pat += u"}]";
    UErrorCode st = U_ZERO_ERROR;
    USetPtr prop(uset_openPattern(reinterpret_cast<const UChar*>(pat.c_str()),
                                  static_cast<int32_t>(pat.size()), &st));
    if (U_FAILURE(st) || prop.p == nullptr) {
      fail("unknown Unicode property \\p{" + name + "}");
    }
    if (negate) {
      uset_complement(prop.p);
    }
    uset_addAll(set, prop.p);
  }

  // Adds a shorthand class (\s \d \w \h and their negations) to `set`.
  void add_shorthand(USet* set, char c) {
    USetPtr tmp(uset_openEmpty());
    const char lower = static_cast<char>(c | 0x20);
    switch (lower) {
      case 's':
        add_property(tmp.p, "White_Space", false);
        break;
      case 'd':
        add_property(tmp.p, "Nd", false);
        break;
      case 'w':
        add_property(tmp.p, "L", false);
        add_property(tmp.p, "M", false);
        add_property(tmp.p, "Nd", false);
        add_property(tmp.p, "Pc", false);
        break;
      case 'h':
        uset_addRange(tmp.p, '0', '9');
        uset_addRange(tmp.p, 'A', 'F');
        uset_addRange(tmp.p, 'a', 'f');
        break;
      default:
        fail(std::string("unsupported escape \\") + c);
    }
    if (c != lower) {
      uset_complement(tmp.p);
    }
    uset_addAll(set, tmp.p);
  }

  std::string property_name(bool* negate) {
    // After "\p" or "\P": "{Name}" or "{^Name}" or a one-letter name.
    if (at_end()) {
      fail("incomplete \\p");
    }
    if (peek() != '{') {
      return std::string(1, s_[pos_++]);
    }
    size_t close = s_.find('}', pos_);
    if (close == std::string_view::npos) {
      fail("unterminated \\p{");
    }
    std::string name(s_.substr(pos_ + 1, close - pos_ - 1));
    pos_ = close + 1;
    if (!name.empty() && name[0] == '^') {
      *negate = !*negate;
      name.erase(0, 1);
    }
    return name;
  }

  char32_t hex(size_t digits) {
    if (pos_ + digits > s_.size()) {
      fail("incomplete hex escape");
    }
    char32_t v = 0;
    for (size_t i = 0; i < digits; ++i) {
      const char h = s_[pos_ + i];
      int d = h >= '0' && h <= '9'   ? h - '0'
              : h >= 'a' && h <= 'f' ? h - 'a' + 10
              : h >= 'A' && h <= 'F' ? h - 'A' + 10
                                     : -1;
      if (d < 0) {
        fail("bad hex digit in escape");
      }
      v = v * 16 + static_cast<char32_t>(d);
    }
    pos_ += digits;
    return v;
  }

  // Parses the escape after '\' (pos_ at the character after it). Returns
  // true with *cp set for a single code point; false when it added a class
  // to `set` (set must be non-null then).
  bool escape(USet* set, char32_t* cp, bool in_class) {
    if (at_end()) {
      fail("trailing backslash");
    }
    const char c = s_[pos_++];
    switch (c) {
      case 't':
        *cp = '\t';
        return true;
      case 'n':
        *cp = '\n';
        return true;
      case 'r':
        *cp = '\r';
        return true;
      case 'f':
        *cp = '\f';
        return true;
      case 'v':
        *cp = '\v';
        return true;
      case 'a':
        *cp = 0x07;
        return true;
      case 'e':
        *cp = 0x1B;
        return true;
      case 'x':
        if (!at_end() && peek() == '{') {
          size_t close = s_.find('}', pos_);
          if (close == std::string_view::npos || close - pos_ - 1 > 8 ||
              close == pos_ + 1) {
            fail("bad \\x{...} escape");
          }
          ++pos_;
          *cp = hex(close - pos_);
          ++pos_;
        } else {
          *cp = hex(2);
        }
        if (*cp > 0x10FFFF) {
          fail("code point over U+10FFFF");
        }
        return true;
      case 'u':
        *cp = hex(4);
        return true;
      case 's':
      case 'S':
      case 'd':
      case 'D':
      case 'w':
      case 'W':
      case 'h':
      case 'H':
        add_shorthand(set, c);
        return false;
      case 'p':
      case 'P': {
        bool negate = c == 'P';
        std::string name = property_name(&negate);
        add_property(set, name, negate);
        return false;
      }
      default:
        break;
    }
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
        (c >= '0' && c <= '9')) {
      --pos_;
      fail(std::string("unsupported escape \\") + c +
           (in_class ? " in a character class" : ""));
    }
    // Escaped punctuation or any other character stands for itself.
    --pos_;
    *cp = next_code_point();
    return true;
  }

  int escape_atom() {
    ++pos_;  // '\'
    if (!at_end()) {
      const char c = peek();
      if (c == 'A' || c == 'z' || c == 'Z') {
        ++pos_;
        return assertion(c == 'A'   ? Assert::kTextStart
                         : c == 'z' ? Assert::kTextEnd
                                    : Assert::kTextEndNewline);
      }
      if (c == 'b' || c == 'B' || c == 'G') {
        fail(std::string("unsupported assertion \\") + c);
      }
      if (c >= '1' && c <= '9') {
        fail("backreferences are not supported");
      }
      if (c == 'k' || c == 'g') {
        fail(std::string("unsupported escape \\") + c);
      }
    }
    USetPtr set(uset_openEmpty());
    char32_t cp = 0;
    if (escape(set.p, &cp, false)) {
      return literal(cp);
    }
    return class_node(set.p, false);
  }

  int char_class() {
    const size_t open = pos_;
    ++pos_;  // '['
    bool negate = false;
    if (!at_end() && peek() == '^') {
      negate = true;
      ++pos_;
    }
    USetPtr set(uset_openEmpty());
    bool first = true;
    while (true) {
      if (at_end()) {
        pos_ = open;
        fail("unterminated character class");
      }
      char c = peek();
      if (c == ']' && !first) {
        ++pos_;
        break;
      }
      first = false;
      if (c == '[') {
        fail(starts_with("[:") ? "POSIX classes [:...:] are not supported"
                               : "nested character classes are not supported");
      }
      if (starts_with("&&")) {
        fail("character class intersection && is not supported");
      }
      char32_t lo = 0;
      if (c == '\\') {
        ++pos_;
        if (!escape(set.p, &lo, true)) {
          continue;
        }
      } else {
        lo = next_code_point();
      }
      // A range lo-hi (a '-' before ']' is a literal).
      if (pos_ + 1 < s_.size() && peek() == '-' && s_[pos_ + 1] != ']') {
        ++pos_;
        char32_t hi = 0;
        if (peek() == '\\') {
          ++pos_;
          USetPtr junk(uset_openEmpty());
          if (!escape(junk.p, &hi, true)) {
            fail("a class escape cannot end a range");
          }
        } else if (peek() == '[') {
          fail("nested character classes are not supported");
        } else {
          hi = next_code_point();
        }
        if (hi < lo) {
          fail("character range out of order");
        }
        uset_addRange(set.p, static_cast<UChar32>(lo),
                      static_cast<UChar32>(hi));
      } else {
        uset_add(set.p, static_cast<UChar32>(lo));
      }
    }
    return class_node(set.p, negate);
  }
};

struct Cont {
  enum Kind : uint8_t { kAccept, kLookAccept, kSeq, kRepeat } kind;
  int node;
  int idx;       // kSeq: next child; kRepeat: iterations done
  size_t start;  // kRepeat: where this iteration started
  const Cont* next;
};

class Matcher {
 public:
  Matcher(const Regex::Program& p, std::string_view text)
      : p_(p), s_(text.data()), n_(text.size()) {}

  bool match_at(size_t i, size_t* end) {
    Cont accept{Cont::kAccept, -1, 0, 0, nullptr};
    if (match(p_.root, i, &accept)) {
      *end = end_;
      return true;
    }
    return false;
  }

 private:
  const Regex::Program& p_;
  const char* s_;
  size_t n_;
  size_t end_ = 0;
  int depth_ = 0;
  int64_t steps_ = 0;

  struct DepthGuard {
    int& d;
    explicit DepthGuard(int& depth) : d(depth) {
      LOWMEM_CHECK(++d <= kMaxDepth, "[text] regex: backtracking deeper than ",
                   kMaxDepth, " levels (a quantified group over a long input)");
    }
    ~DepthGuard() { --d; }
  };

  bool char_at(const Node& nd, size_t i, size_t* next) const {
    if (i >= n_) {
      return false;
    }
    const auto c0 = static_cast<unsigned char>(s_[i]);
    if (c0 < 0x80) {
      *next = i + 1;
      return p_.test(nd, c0);
    }
    int len = 0;
    const char32_t c = detail::decode_utf8(s_, i, &len);
    *next = i + static_cast<size_t>(len);
    return p_.test(nd, c);
  }

  bool match(int id, size_t i, const Cont* k) {
    LOWMEM_CHECK(++steps_ <= kMaxSteps, "[text] regex '",
                 detail::quote_for_error(p_.pattern), "': more than ",
                 kMaxSteps, " backtracking steps in one search");
    const Node& nd = p_.nodes[static_cast<size_t>(id)];
    switch (nd.op) {
      case Op::kChar:
      case Op::kClass: {
        size_t next = 0;
        return char_at(nd, i, &next) && cont(k, next);
      }
      case Op::kSeq: {
        if (nd.kids.empty()) {
          return cont(k, i);
        }
        DepthGuard g(depth_);
        Cont f{Cont::kSeq, id, 1, 0, k};
        return match(nd.kids[0], i, &f);
      }
      case Op::kAlt:
        for (int kid : nd.kids) {
          if (match(kid, i, k)) {
            return true;
          }
        }
        return false;
      case Op::kRepeat: {
        const Node& child = p_.nodes[static_cast<size_t>(nd.kids[0])];
        if (child.op == Op::kChar || child.op == Op::kClass) {
          return repeat_char(nd, child, i, k);
        }
        return repeat(id, 0, i, k);
      }
      case Op::kLook: {
        DepthGuard g(depth_);
        Cont accept{Cont::kLookAccept, -1, 0, 0, nullptr};
        const bool found = match(nd.kids[0], i, &accept);
        return found != nd.negate && cont(k, i);
      }
      case Op::kAssert: {
        bool ok = false;
        switch (nd.assertion) {
          case Assert::kLineStart:
            ok = i == 0 || s_[i - 1] == '\n';
            break;
          case Assert::kLineEnd:
            ok = i == n_ || s_[i] == '\n';
            break;
          case Assert::kTextStart:
            ok = i == 0;
            break;
          case Assert::kTextEnd:
            ok = i == n_;
            break;
          case Assert::kTextEndNewline:
            ok = i == n_ || (i + 1 == n_ && s_[i] == '\n');
            break;
        }
        return ok && cont(k, i);
      }
    }
    return false;
  }

  // A quantifier over one character: scan, then back off (greedy) or extend
  // (lazy) one character at a time.
  bool repeat_char(const Node& nd, const Node& child, size_t i, const Cont* k) {
    size_t j = i;
    int count = 0;
    if (nd.greedy) {
      size_t next = 0;
      while ((nd.max < 0 || count < nd.max) && char_at(child, j, &next)) {
        j = next;
        ++count;
      }
      if (count < nd.min) {
        return false;
      }
      while (true) {
        if (cont(k, j)) {
          return true;
        }
        if (count == nd.min) {
          return false;
        }
        j = detail::previous_char(s_, j);
        --count;
      }
    }
    size_t next = 0;
    while (count < nd.min) {
      if (!char_at(child, j, &next)) {
        return false;
      }
      j = next;
      ++count;
    }
    while (true) {
      if (cont(k, j)) {
        return true;
      }
      if ((nd.max >= 0 && count >= nd.max) || !char_at(child, j, &next)) {
        return false;
      }
      j = next;
      ++count;
    }
  }

  // A quantifier over a group: one iteration per continuation frame.
  bool repeat(int id, int count, size_t i, const Cont* k) {
    DepthGuard g(depth_);
    const Node& nd = p_.nodes[static_cast<size_t>(id)];
    const bool more = nd.max < 0 || count < nd.max;
    Cont f{Cont::kRepeat, id, count + 1, i, k};
    if (nd.greedy) {
      if (more && match(nd.kids[0], i, &f)) {
        return true;
      }
      return count >= nd.min && cont(k, i);
    }
    if (count >= nd.min && cont(k, i)) {
      return true;
    }
    return more && match(nd.kids[0], i, &f);
  }

  bool cont(const Cont* k, size_t i) {
    switch (k->kind) {
      case Cont::kAccept:
        end_ = i;
        return true;
      case Cont::kLookAccept:
        return true;
      case Cont::kSeq: {
        const Node& nd = p_.nodes[static_cast<size_t>(k->node)];
        if (static_cast<size_t>(k->idx) == nd.kids.size()) {
          return cont(k->next, i);
        }
        DepthGuard g(depth_);
        Cont f{Cont::kSeq, k->node, k->idx + 1, 0, k->next};
        return match(nd.kids[static_cast<size_t>(k->idx)], i, &f);
      }
      case Cont::kRepeat: {
        const Node& nd = p_.nodes[static_cast<size_t>(k->node)];
        // An empty iteration beyond the minimum ends the loop (no infinite
        // loop on a group that can match the empty string).
        if (i == k->start && k->idx > nd.min) {
          return false;
        }
        return repeat(k->node, k->idx, i, k->next);
      }
    }
    return false;
  }
};

}  // namespace

Regex::Regex(std::string_view pattern) : program_(std::make_unique<Program>()) {
  LOWMEM_CHECK(pattern.size() <= kMaxPatternBytes, "[text] regex of ",
               pattern.size(), " bytes is over the limit of ",
               kMaxPatternBytes);
  LOWMEM_CHECK(detail::find_invalid_utf8(pattern) == std::string_view::npos,
               "[text] regex '", detail::quote_for_error(pattern),
               "' is not valid UTF-8");
  program_->pattern = std::string(pattern);
  Parser parser(pattern, *program_);
  program_->root = parser.parse();
}

Regex::~Regex() = default;
Regex::Regex(Regex&&) noexcept = default;
Regex& Regex::operator=(Regex&&) noexcept = default;

const std::string& Regex::pattern() const { return program_->pattern; }

bool Regex::search(std::string_view text, size_t from, size_t* begin,
                   size_t* end) const {
  Matcher m(*program_, text);
  for (size_t i = from; i <= text.size();) {
    if (m.match_at(i, end)) {
      *begin = i;
      return true;
    }
    if (i == text.size()) {
      break;
    }
    i += static_cast<size_t>(
        detail::utf8_length(static_cast<unsigned char>(text[i])));
  }
  return false;
}

void Regex::find_all(std::string_view text,
                     std::vector<std::pair<size_t, size_t>>& out) const {
  out.clear();
  size_t from = 0;
  bool have_last = false;
  size_t last_end = 0;
  size_t b = 0, e = 0;
  while (from <= text.size() && search(text, from, &b, &e)) {
    if (b == e && have_last && last_end == e) {
      // Oniguruma's iterator: an empty match right where the previous match
      // ended is skipped; search again one character further.
      if (from >= text.size()) {
        break;
      }
      from += static_cast<size_t>(
          detail::utf8_length(static_cast<unsigned char>(text[from])));
      continue;
    }
    out.emplace_back(b, e);
    have_last = true;
    last_end = e;
    from = e;
  }
}

std::vector<std::pair<size_t, size_t>> Regex::find_all(
    std::string_view text) const {
  std::vector<std::pair<size_t, size_t>> out;
  find_all(text, out);
  return out;
}

}  // namespace lowmem::text
