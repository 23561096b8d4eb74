// Normalizers, pre-tokenizers, post-processors and decoders of tokenizer.json,
// each following its huggingface/tokenizers source file (named per class).
#include <unicode/bytestream.h>
#include <unicode/casemap.h>
#include <unicode/normalizer2.h>

#include <algorithm>
#include <cstdio>
#include <functional>

#include "bounded.h"
#include "lowmem/core/check.h"
#include "pipeline.h"
#include "utf8.h"

namespace lowmem::text::detail {

using nlohmann::json;

bool is_numeric(char32_t c);  // Unicode N (Rust char::is_numeric), below

const json& member(const json& j, const char* key, const char* where) {
  LOWMEM_CHECK(j.is_object(), "[text] tokenizer.json ", where,
               " is not an object");
  auto it = j.find(key);
  LOWMEM_CHECK(it != j.end(), "[text] tokenizer.json ", where, ": missing \"",
               key, "\"");
  return *it;
}

std::string type_of(const json& j, const char* where) {
  const json& t = member(j, "type", where);
  LOWMEM_CHECK(t.is_string(), "[text] tokenizer.json ", where,
               ": \"type\" is not a string");
  return t.get<std::string>();
}

namespace {

std::string get_string(const json& j, const char* key, const char* where) {
  const json& v = member(j, key, where);
  LOWMEM_CHECK(v.is_string(), "[text] tokenizer.json ", where, ": \"", key,
               "\" is not a string");
  return v.get<std::string>();
}

std::string opt_string(const json& j, const char* key, const std::string& dflt,
                       const char* where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    return dflt;
  }
  LOWMEM_CHECK(it->is_string(), "[text] tokenizer.json ", where, ": \"", key,
               "\" is not a string");
  return it->get<std::string>();
}

bool opt_bool(const json& j, const char* key, bool dflt, const char* where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    return dflt;
  }
  LOWMEM_CHECK(it->is_boolean(), "[text] tokenizer.json ", where, ": \"", key,
               "\" is not a boolean");
  return it->get<bool>();
}

// A field holding exactly one character (Rust `char`).
char32_t get_char(const json& j, const char* key, const char* where) {
  const std::string s = get_string(j, key, where);
  validate_utf8(s, where);
  int len = 0;
  LOWMEM_CHECK(!s.empty(), "[text] tokenizer.json ", where, ": \"", key,
               "\" is empty");
  const char32_t c = decode_utf8(s.data(), 0, &len);
  LOWMEM_CHECK(static_cast<size_t>(len) == s.size(), "[text] tokenizer.json ",
               where, ": \"", key, "\" must be one character, got '",
               quote_for_error(s), "'");
  return c;
}

// Non-overlapping occurrences of `from` in `s`, left to right.
void literal_matches(std::string_view s, std::string_view from,
                     std::vector<std::pair<size_t, size_t>>& m) {
  m.clear();
  if (from.empty()) {
    return;
  }
  size_t pos = 0;
  while ((pos = s.find(from, pos)) != std::string_view::npos) {
    m.emplace_back(pos, pos + from.size());
    pos += from.size();
  }
}

void replace_all(std::string& s, std::string_view from, std::string_view to,
                 Offsets* o = nullptr) {
  thread_local std::vector<std::pair<size_t, size_t>> m;
  literal_matches(s, from, m);
  replace_spans(s, o, m, to);
}

// Inserts `bytes` before the string, mapped to its first character's range
// (the crate's NormalizedString::prepend).
void prepend_aligned(std::string& s, Offsets* o, std::string_view bytes) {
  if (o != nullptr) {
    const auto first = s.empty()
                           ? std::pair<uint32_t, uint32_t>{0, 0}
                           : std::pair<uint32_t, uint32_t>{o->b[0], o->e[0]};
    o->b.insert(o->b.begin(), bytes.size(), first.first);
    o->e.insert(o->e.begin(), bytes.size(), first.second);
  }
  s.insert(0, bytes);
}

// ------------------------------------------------------------ normalizers

class NfNormalizer final : public Normalizer {
 public:
  explicit NfNormalizer(UnicodeForm f) : form_(f) {}
  void normalize(std::string& s, Offsets* o) const override {
    unicode_normalize(s, form_, o);
  }

 private:
  UnicodeForm form_;
};

class LowercaseNormalizer final : public Normalizer {
 public:
  void normalize(std::string& s, Offsets* o) const override {
    unicode_lowercase(s, o);
  }
};

// normalizers/strip.rs Strip: White_Space at either end.
class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void normalize(std::string& s, Offsets* o) const override {
    size_t b = 0, e = s.size();
    if (left_) {
      while (b < e) {
        int len = 0;
        if (!is_white_space(decode_utf8(s.data(), b, &len))) {
          break;
        }
        b += static_cast<size_t>(len);
      }
    }
    if (right_) {
      while (e > b) {
        size_t p = previous_char(s.data(), e);
        int len = 0;
        if (!is_white_space(decode_utf8(s.data(), p, &len))) {
          break;
        }
        e = p;
      }
    }
    s = s.substr(b, e - b);
    if (o != nullptr) {
      o->b =
          std::vector<uint32_t>(o->b.begin() + static_cast<std::ptrdiff_t>(b),
                                o->b.begin() + static_cast<std::ptrdiff_t>(e));
      o->e =
          std::vector<uint32_t>(o->e.begin() + static_cast<std::ptrdiff_t>(b),
                                o->e.begin() + static_cast<std::ptrdiff_t>(e));
    }
  }

 private:
  bool left_, right_;
};

// normalizers/strip.rs StripAccents: drops combining marks (M).
class StripAccentsNormalizer final : public Normalizer {
 public:
  StripAccentsNormalizer() : re_("\\p{M}") {}
  void normalize(std::string& s, Offsets* o) const override {
    thread_local std::vector<std::pair<size_t, size_t>> m;
    re_.find_all(s, m);
    replace_spans(s, o, m, "");
  }

 private:
  Regex re_;
};

class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string p) : prepend_(std::move(p)) {}
  // normalizers/prepend.rs: only a non-empty string gets the prefix.
  void normalize(std::string& s, Offsets* o) const override {
    if (!s.empty()) {
      prepend_aligned(s, o, prepend_);
    }
  }

 private:
  std::string prepend_;
};

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(const json& j, const char* where)
      : content_(get_string(j, "content", where)) {
    const json& p = member(j, "pattern", where);
    if (p.is_object() && p.contains("String")) {
      literal_ = get_string(p, "String", where);
      is_literal_ = true;
    } else {
      re_ = std::make_unique<Regex>(make_pattern(p, where));
    }
  }
  void normalize(std::string& s, Offsets* o) const override {
    thread_local std::vector<std::pair<size_t, size_t>> m;
    if (is_literal_) {
      literal_matches(s, literal_, m);
    } else {
      re_->find_all(s, m);
    }
    replace_spans(s, o, m, content_);
  }

 private:
  std::string content_;
  bool is_literal_ = false;
  std::string literal_;
  std::unique_ptr<Regex> re_;
};

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts)
      : parts_(std::move(parts)) {}
  void normalize(std::string& s, Offsets* o) const override {
    for (const auto& p : parts_) {
      p->normalize(s, o);
    }
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

// ------------------------------------------------------------ pre-tokenizers

// GPT-2's byte-to-unicode mapping of a piece, its offsets following.
void byte_map_piece(Piece& p) {
  if (p.track) {
    const auto& t = byte_to_unicode();
    Offsets o;
    for (size_t i = 0; i < p.text.size(); ++i) {
      const size_t n = t[static_cast<unsigned char>(p.text[i])].size();
      o.b.insert(o.b.end(), n, p.offs.b[i]);
      o.e.insert(o.e.end(), n, p.offs.e[i]);
    }
    p.offs = std::move(o);
  }
  p.text = byte_level_map(p.text);
}

// Materializes a deferred ByteLevel mapping before another step reads text.
void materialize(std::vector<Piece>& pieces) {
  for (Piece& p : pieces) {
    if (p.bytes) {
      byte_map_piece(p);
      p.bytes = false;
    }
  }
}

// Splits every piece at the matches of a pattern with a behavior.
template <typename FindMatches>
void split_pieces(std::vector<Piece>& pieces, bool invert,
                  SplitBehavior behavior, const FindMatches& find) {
  thread_local std::vector<std::pair<size_t, size_t>> matches, spans;
  std::vector<Piece> out;
  out.reserve(pieces.size() * 4);
  for (Piece& p : pieces) {
    find(p.text, matches);
    split_by_matches(p.text, matches, invert, behavior, spans);
    for (auto [b, e] : spans) {
      if (b == e) {
        continue;
      }
      Piece q{
          p.text.substr(b, e - b), p.at_origin && b == 0, false, p.track, {}};
      if (p.track) {
        q.offs.b.assign(p.offs.b.begin() + static_cast<std::ptrdiff_t>(b),
                        p.offs.b.begin() + static_cast<std::ptrdiff_t>(e));
        q.offs.e.assign(p.offs.e.begin() + static_cast<std::ptrdiff_t>(b),
                        p.offs.e.begin() + static_cast<std::ptrdiff_t>(e));
      }
      out.push_back(std::move(q));
    }
  }
  pieces.swap(out);
}

// pre_tokenizers/byte_level.rs: the GPT-2 split pattern (Oniguruma \s is
// White_Space; see lowmem/text/regex.h for how the JS reference differs).
const char* const kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|"
    "\\s+(?!\\S)|\\s+";

class ByteLevelPre final : public PreTokenizer {
 public:
  ByteLevelPre(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space), use_regex_(use_regex) {
    if (use_regex_) {
      re_ = std::make_unique<Regex>(kGpt2Pattern);
    }
  }
  void apply(std::vector<Piece>& pieces, bool last) const override {
    materialize(pieces);
    if (add_prefix_space_) {
      for (Piece& p : pieces) {
        if (p.text.empty() || p.text[0] != ' ') {
          prepend_aligned(p.text, p.track ? &p.offs : nullptr, " ");
        }
      }
    }
    if (use_regex_) {
      split_pieces(
          pieces, false, SplitBehavior::kIsolated,
          [this](const std::string& s, auto& m) { re_->find_all(s, m); });
    }
    for (Piece& p : pieces) {
      if (last) {
        p.bytes = true;
      } else {
        byte_map_piece(p);
      }
    }
  }

 private:
  bool add_prefix_space_, use_regex_;
  std::unique_ptr<Regex> re_;
};

class SplitPre final : public PreTokenizer {
 public:
  SplitPre(const json& j, const char* where)
      : re_(make_pattern(member(j, "pattern", where), where)),
        behavior_(parse_behavior(get_string(j, "behavior", where))),
        invert_(opt_bool(j, "invert", false, where)) {}
  void apply(std::vector<Piece>& pieces, bool) const override {
    materialize(pieces);
    split_pieces(pieces, invert_, behavior_,
                 [this](const std::string& s, auto& m) { re_.find_all(s, m); });
  }

 private:
  Regex re_;
  SplitBehavior behavior_;
  bool invert_;
};

// pre_tokenizers/metaspace.rs.
class MetaspacePre final : public PreTokenizer {
 public:
  MetaspacePre(const json& j, const char* where) {
    replacement_char_ = get_char(j, "replacement", where);
    replacement_.clear();
    append_utf8(replacement_, replacement_char_);
    scheme_ = opt_string(j, "prepend_scheme", "always", where);
    LOWMEM_CHECK(
        scheme_ == "always" || scheme_ == "first" || scheme_ == "never",
        "[text] tokenizer.json ", where, ": unknown prepend_scheme '",
        quote_for_error(scheme_), "'");
    auto aps = j.find("add_prefix_space");
    if (aps != j.end() && aps->is_boolean() && !aps->get<bool>()) {
      LOWMEM_CHECK(scheme_ == "never" || !j.contains("prepend_scheme"),
                   "[text] tokenizer.json ", where,
                   ": add_prefix_space does not match declared prepend_scheme");
      scheme_ = "never";
    }
    split_ = opt_bool(j, "split", true, where);
  }
  void apply(std::vector<Piece>& pieces, bool) const override {
    materialize(pieces);
    for (Piece& p : pieces) {
      Offsets* o = p.track ? &p.offs : nullptr;
      replace_all(p.text, " ", replacement_, o);
      const bool starts =
          p.text.compare(0, replacement_.size(), replacement_) == 0;
      if (!starts &&
          (scheme_ == "always" || (scheme_ == "first" && p.at_origin))) {
        prepend_aligned(p.text, o, replacement_);
      }
    }
    if (split_) {
      const std::string rep = replacement_;
      split_pieces(pieces, false, SplitBehavior::kMergedWithNext,
                   [&rep](const std::string& s, auto& m) {
                     m.clear();
                     size_t pos = 0;
                     while ((pos = s.find(rep, pos)) != std::string::npos) {
                       m.emplace_back(pos, pos + rep.size());
                       pos += rep.size();
                     }
                   });
    }
  }
  char32_t replacement_char_ = 0x2581;
  std::string replacement_;
  std::string scheme_;
  bool split_ = true;
};

// A split on a per-character predicate (Digits, WhitespaceSplit, ...).
template <typename Pred>
void char_matches(const std::string& s, const Pred& pred,
                  std::vector<std::pair<size_t, size_t>>& m) {
  m.clear();
  size_t i = 0;
  while (i < s.size()) {
    int len = 0;
    const char32_t c = decode_utf8(s.data(), i, &len);
    if (pred(c)) {
      m.emplace_back(i, i + static_cast<size_t>(len));
    }
    i += static_cast<size_t>(len);
  }
}

// pre_tokenizers/digits.rs: char::is_numeric (Unicode N).
class DigitsPre final : public PreTokenizer {
 public:
  explicit DigitsPre(bool individual) : individual_(individual) {}
  void apply(std::vector<Piece>& pieces, bool) const override {
    materialize(pieces);
    split_pieces(
        pieces, false,
        individual_ ? SplitBehavior::kIsolated : SplitBehavior::kContiguous,
        [](const std::string& s, auto& m) { char_matches(s, is_numeric, m); });
  }

 private:
  bool individual_;
};

// pre_tokenizers/whitespace.rs WhitespaceSplit: split on White_Space, removed.
class WhitespaceSplitPre final : public PreTokenizer {
 public:
  void apply(std::vector<Piece>& pieces, bool) const override {
    materialize(pieces);
    split_pieces(pieces, false, SplitBehavior::kRemoved,
                 [](const std::string& s, auto& m) {
                   char_matches(s, is_white_space, m);
                 });
  }
};

// pre_tokenizers/whitespace.rs Whitespace: \w+|[^\w\s]+ kept (inverted split).
class WhitespacePre final : public PreTokenizer {
 public:
  WhitespacePre() : re_("\\w+|[^\\w\\s]+") {}
  void apply(std::vector<Piece>& pieces, bool) const override {
    materialize(pieces);
    split_pieces(pieces, true, SplitBehavior::kRemoved,
                 [this](const std::string& s, auto& m) { re_.find_all(s, m); });
  }

 private:
  Regex re_;
};

class SequencePre final : public PreTokenizer {
 public:
  explicit SequencePre(std::vector<std::unique_ptr<PreTokenizer>> parts)
      : parts_(std::move(parts)) {}
  void apply(std::vector<Piece>& pieces, bool last) const override {
    for (size_t i = 0; i < parts_.size(); ++i) {
      parts_[i]->apply(pieces, last && i + 1 == parts_.size());
    }
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

// ------------------------------------------------------------ decoders

// decoders: ByteLevel (pre_tokenizers/byte_level.rs): tokens whose every
// character is a byte stand-in become those bytes, others their own UTF-8;
// all joined and decoded lossily.
class ByteLevelDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const std::string& t : tokens) {
      std::string mapped;
      bool ok = true;
      size_t i = 0;
      while (i < t.size()) {
        int len = 0;
        const int b = unicode_to_byte(decode_utf8(t.data(), i, &len));
        if (b < 0) {
          ok = false;
          break;
        }
        mapped += static_cast<char>(b);
        i += static_cast<size_t>(len);
      }
      bytes += ok ? mapped : t;
    }
    tokens.assign(1, utf8_lossy(bytes));
  }
};

// pre_tokenizers/metaspace.rs Decoder: the replacement becomes ' ', except in
// the first token (all of its replacement characters dropped) unless the
// prepend scheme is "never".
class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(const json& j, const char* where) {
    MetaspacePre pre(j, where);
    replacement_ = pre.replacement_;
    never_ = pre.scheme_ == "never";
  }
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      replace_all(tokens[i], replacement_,
                  i == 0 && !never_ ? std::string() : std::string(" "));
    }
  }

 private:
  std::string replacement_;
  bool never_ = false;
};

// decoders/byte_fallback.rs.
class ByteFallbackDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    auto flush = [&]() {
      if (pending.empty()) {
        return;
      }
      if (find_invalid_utf8(pending) == std::string_view::npos) {
        out.push_back(pending);
      } else {
        for (size_t k = 0; k < pending.size(); ++k) {
          out.emplace_back("\xEF\xBF\xBD");
        }
      }
      pending.clear();
    };
    for (std::string& t : tokens) {
      int byte = -1;
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>') {
        byte = parse_hex_byte(t.substr(3, 2));
      }
      if (byte >= 0) {
        pending += static_cast<char>(byte);
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens.swap(out);
  }

 private:
  // Rust's u8::from_str_radix(s, 16) for the two characters of <0xHH>.
  static int parse_hex_byte(const std::string& s) {
    size_t i = 0;
    if (!s.empty() && s[0] == '+') {
      i = 1;
    }
    if (i == s.size()) {
      return -1;
    }
    int v = 0;
    for (; i < s.size(); ++i) {
      const char h = s[i];
      const int d = h >= '0' && h <= '9'   ? h - '0'
                    : h >= 'a' && h <= 'f' ? h - 'a' + 10
                    : h >= 'A' && h <= 'F' ? h - 'A' + 10
                                           : -1;
      if (d < 0) {
        return -1;
      }
      v = v * 16 + d;
    }
    return v;
  }
};

class FuseDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const auto& t : tokens) {
      all += t;
    }
    tokens.assign(1, all);
  }
};

// decoders/strip.rs: up to `start` leading and `stop` trailing `content`
// characters removed from every token.
class StripDecoder final : public Decoder {
 public:
  StripDecoder(const json& j, const char* where)
      : content_(get_char(j, "content", where)) {
    const json& start = member(j, "start", where);
    const json& stop = member(j, "stop", where);
    LOWMEM_CHECK(start.is_number_integer() && stop.is_number_integer(),
                 "[text] tokenizer.json ", where,
                 ": start/stop must be integers, got ", clip_json(start), ", ",
                 clip_json(stop));
    start_ = start.get<int64_t>();
    stop_ = stop.get<int64_t>();
    LOWMEM_CHECK(start_ >= 0 && stop_ >= 0, "[text] tokenizer.json ", where,
                 ": negative start/stop");
  }
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      std::vector<std::pair<size_t, char32_t>> chars;  // (offset, code point)
      size_t i = 0;
      while (i < t.size()) {
        int len = 0;
        chars.emplace_back(i, decode_utf8(t.data(), i, &len));
        i += static_cast<size_t>(len);
      }
      size_t start_cut = 0;
      for (size_t k = 0; k < chars.size() && static_cast<int64_t>(k) < start_;
           ++k) {
        if (chars[k].second != content_) {
          break;
        }
        start_cut = k + 1;
      }
      size_t stop_cut = chars.size();
      for (int64_t k = 0; k < stop_ && static_cast<size_t>(k) < chars.size();
           ++k) {
        const size_t index = chars.size() - static_cast<size_t>(k) - 1;
        if (chars[index].second != content_) {
          break;
        }
        stop_cut = index;
      }
      if (stop_cut <= start_cut) {
        t.clear();
        continue;
      }
      const size_t b =
          start_cut < chars.size() ? chars[start_cut].first : t.size();
      const size_t e =
          stop_cut < chars.size() ? chars[stop_cut].first : t.size();
      t = t.substr(b, e - b);
    }
  }

 private:
  char32_t content_;
  int64_t start_ = 0, stop_ = 0;
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(const json& j, const char* where) : norm_(j, where) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      norm_.normalize(t, nullptr);
    }
  }

 private:
  ReplaceNormalizer norm_;
};

// decoders/bpe.rs BPEDecoder: the suffix becomes ' ' except in the last token.
class BpeDecoder final : public Decoder {
 public:
  explicit BpeDecoder(std::string suffix) : suffix_(std::move(suffix)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      replace_all(tokens[i], suffix_, i + 1 == tokens.size() ? "" : " ");
    }
  }

 private:
  std::string suffix_;
};

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> parts)
      : parts_(std::move(parts)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& p : parts_) {
      p->decode_chain(tokens);
    }
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;
};

const json& array_member(const json& j, const char* key, const char* where) {
  const json& a = member(j, key, where);
  LOWMEM_CHECK(a.is_array(), "[text] tokenizer.json ", where, ": \"", key,
               "\" is not an array");
  return a;
}

}  // namespace

// ------------------------------------------------------------ shared helpers

void identity_offsets(std::string_view s, uint32_t base, Offsets& o) {
  o.b.resize(s.size());
  o.e.resize(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const auto len =
        static_cast<size_t>(utf8_length(static_cast<unsigned char>(s[i])));
    for (size_t k = i; k < i + len && k < s.size(); ++k) {
      o.b[k] = base + static_cast<uint32_t>(i);
      o.e[k] = base + static_cast<uint32_t>(i + len);
    }
    i += len;
  }
}

std::pair<uint32_t, uint32_t> span_of(const Offsets& o, size_t b, size_t e) {
  if (b >= e) {
    if (o.b.empty()) return {0, 0};
    const uint32_t p = b < o.b.size() ? o.b[b] : o.e.back();
    return {p, p};
  }
  uint32_t lo = o.b[b], hi = o.e[b];
  for (size_t k = b + 1; k < e; ++k) {
    lo = std::min(lo, o.b[k]);
    hi = std::max(hi, o.e[k]);
  }
  return {lo, hi};
}

void replace_spans(std::string& s, Offsets* o,
                   const std::vector<std::pair<size_t, size_t>>& spans,
                   std::string_view content) {
  if (spans.empty()) {
    return;
  }
  std::string out;
  out.reserve(s.size() + spans.size() * content.size());
  Offsets no;
  size_t pos = 0;
  auto keep = [&](size_t b, size_t e) {
    out.append(s, b, e - b);
    if (o != nullptr) {
      no.b.insert(no.b.end(), o->b.begin() + static_cast<std::ptrdiff_t>(b),
                  o->b.begin() + static_cast<std::ptrdiff_t>(e));
      no.e.insert(no.e.end(), o->e.begin() + static_cast<std::ptrdiff_t>(b),
                  o->e.begin() + static_cast<std::ptrdiff_t>(e));
    }
  };
  for (auto [b, e] : spans) {
    keep(pos, b);
    out.append(content);
    if (o != nullptr) {
      const auto r = span_of(*o, b, e);
      no.b.insert(no.b.end(), content.size(), r.first);
      no.e.insert(no.e.end(), content.size(), r.second);
    }
    pos = e;
  }
  keep(pos, s.size());
  s.swap(out);
  if (o != nullptr) {
    *o = std::move(no);
  }
}

const std::array<std::string, 256>& byte_to_unicode() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    std::array<bool, 256> printable{};
    for (int b = '!'; b <= '~'; ++b) printable[static_cast<size_t>(b)] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) printable[static_cast<size_t>(b)] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) printable[static_cast<size_t>(b)] = true;
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const char32_t c = printable[static_cast<size_t>(b)]
                             ? static_cast<char32_t>(b)
                             : static_cast<char32_t>(256 + n++);
      append_utf8(t[static_cast<size_t>(b)], c);
    }
    return t;
  }();
  return table;
}

int unicode_to_byte(char32_t c) {
  static const std::array<int16_t, 512> table = [] {
    std::array<int16_t, 512> t;
    t.fill(-1);
    const auto& fwd = byte_to_unicode();
    for (int b = 0; b < 256; ++b) {
      int len = 0;
      const char32_t cp =
          decode_utf8(fwd[static_cast<size_t>(b)].data(), 0, &len);
      t[cp] = static_cast<int16_t>(b);
    }
    return t;
  }();
  return c < 512 ? table[c] : -1;
}

std::string byte_level_map(std::string_view raw) {
  const auto& t = byte_to_unicode();
  std::string out;
  out.reserve(raw.size() * 2);
  for (char c : raw) {
    out += t[static_cast<unsigned char>(c)];
  }
  return out;
}

Regex make_pattern(const json& j, const char* where) {
  LOWMEM_CHECK(j.is_object() && j.size() == 1, "[text] tokenizer.json ", where,
               ": pattern must be {\"String\": ...} or {\"Regex\": ...}");
  if (j.contains("String")) {
    // An escaped literal, as the crate compiles it (regex::escape; an empty
    // string stays an empty regex, which matches between all characters).
    const std::string s = get_string(j, "String", where);
    std::string re;
    for (char c : s) {
      if (std::string_view("\\.+*?()|[]{}^$#&-~").find(c) !=
          std::string_view::npos) {
        re += '\\';
      }
      re += c;
    }
    return Regex(re);
  }
  LOWMEM_CHECK(j.contains("Regex"), "[text] tokenizer.json ", where,
               ": pattern must be {\"String\": ...} or {\"Regex\": ...}");
  return Regex(get_string(j, "Regex", where));
}

SplitBehavior parse_behavior(const std::string& s) {
  if (s == "Removed") return SplitBehavior::kRemoved;
  if (s == "Isolated") return SplitBehavior::kIsolated;
  if (s == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (s == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (s == "Contiguous") return SplitBehavior::kContiguous;
  LOWMEM_CHECK(false, "[text] tokenizer.json: unknown split behavior '",
               quote_for_error(s), "'");
  return SplitBehavior::kIsolated;
}

// tokenizer/normalizer.rs NormalizedString::split over pattern.rs
// find_matches: the string is cut into (span, is_match) runs covering it,
// which the behavior merges or drops.
void split_by_matches(std::string_view s,
                      const std::vector<std::pair<size_t, size_t>>& matches,
                      bool invert, SplitBehavior behavior,
                      std::vector<std::pair<size_t, size_t>>& out) {
  struct Run {
    size_t b, e;
    bool match;
  };
  thread_local std::vector<Run> runs;
  runs.clear();
  out.clear();
  if (s.empty()) {
    return;
  }
  size_t prev = 0;
  for (auto [b, e] : matches) {
    if (prev != b) {
      runs.push_back(Run{prev, b, false});
    }
    runs.push_back(Run{b, e, true});
    prev = e;
  }
  if (prev != s.size()) {
    runs.push_back(Run{prev, s.size(), false});
  }
  if (invert) {
    for (Run& r : runs) {
      r.match = !r.match;
    }
  }
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const Run& r : runs) out.emplace_back(r.b, r.e);
      break;
    case SplitBehavior::kRemoved:
      for (const Run& r : runs) {
        if (!r.match) out.emplace_back(r.b, r.e);
      }
      break;
    case SplitBehavior::kContiguous: {
      bool previous = false;
      for (const Run& r : runs) {
        if (r.match == previous && !out.empty()) {
          out.back().second = r.e;
        } else {
          out.emplace_back(r.b, r.e);
        }
        previous = r.match;
      }
      break;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool previous = false;
      for (const Run& r : runs) {
        if (r.match && !previous && !out.empty()) {
          out.back().second = r.e;
        } else {
          out.emplace_back(r.b, r.e);
        }
        previous = r.match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous = false;
      for (size_t k = runs.size(); k-- > 0;) {
        const Run& r = runs[k];
        if (r.match && !previous && !out.empty()) {
          out.back().first = r.b;
        } else {
          out.emplace_back(r.b, r.e);
        }
        previous = r.match;
      }
      std::reverse(out.begin(), out.end());
      break;
    }
  }
}

// ------------------------------------------------------------ factories

namespace {

// The parts of a "Sequence" component (its `member` array), each built by
// `make`; parts that build nothing are dropped.
template <class T>
std::vector<std::unique_ptr<T>> sequence_parts(
    const json& j, const char* member, const char* where,
    std::unique_ptr<T> (*make)(const json&)) {
  std::vector<std::unique_ptr<T>> parts;
  for (const json& p : array_member(j, member, where)) {
    auto n = make(p);
    if (n) parts.push_back(std::move(n));
  }
  return parts;
}

std::string unsupported(const char* where, const std::string& type,
                        const char* supported) {
  return "[text] tokenizer.json: " + std::string(where) + " type '" +
         quote_for_error(type) + "' is not supported (supported: " + supported +
         ")";
}

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const json& j) {
  if (j.is_null()) {
    return nullptr;
  }
  const char* where = "normalizer";
  const std::string type = type_of(j, where);
  if (type == "NFC") return std::make_unique<NfNormalizer>(UnicodeForm::kNFC);
  if (type == "NFD") return std::make_unique<NfNormalizer>(UnicodeForm::kNFD);
  if (type == "NFKC") return std::make_unique<NfNormalizer>(UnicodeForm::kNFKC);
  if (type == "NFKD") return std::make_unique<NfNormalizer>(UnicodeForm::kNFKD);
  if (type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (type == "StripAccents") return std::make_unique<StripAccentsNormalizer>();
  if (type == "Strip") {
    return std::make_unique<StripNormalizer>(
        opt_bool(j, "strip_left", true, where),
        opt_bool(j, "strip_right", true, where));
  }
  if (type == "Prepend") {
    return std::make_unique<PrependNormalizer>(get_string(j, "prepend", where));
  }
  if (type == "Replace") return std::make_unique<ReplaceNormalizer>(j, where);
  if (type == "Sequence") {
    return std::make_unique<SequenceNormalizer>(
        sequence_parts(j, "normalizers", where, &make_normalizer));
  }
  LOWMEM_CHECK(false, unsupported(where, type,
                                  "NFC, NFD, NFKC, NFKD, Lowercase, Strip, "
                                  "StripAccents, Prepend, Replace, Sequence"));
  return nullptr;
}

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j) {
  if (j.is_null()) {
    return nullptr;
  }
  const char* where = "pre_tokenizer";
  const std::string type = type_of(j, where);
  if (type == "ByteLevel") {
    return std::make_unique<ByteLevelPre>(
        opt_bool(j, "add_prefix_space", true, where),
        opt_bool(j, "use_regex", true, where));
  }
  if (type == "Split") return std::make_unique<SplitPre>(j, where);
  if (type == "Metaspace") return std::make_unique<MetaspacePre>(j, where);
  if (type == "Digits") {
    return std::make_unique<DigitsPre>(
        opt_bool(j, "individual_digits", false, where));
  }
  if (type == "WhitespaceSplit") return std::make_unique<WhitespaceSplitPre>();
  if (type == "Whitespace") return std::make_unique<WhitespacePre>();
  if (type == "Sequence") {
    return std::make_unique<SequencePre>(
        sequence_parts(j, "pretokenizers", where, &make_pre_tokenizer));
  }
  LOWMEM_CHECK(false, unsupported(where, type,
                                  "ByteLevel, Split, Metaspace, Digits, "
                                  "Whitespace, WhitespaceSplit, Sequence"));
  return nullptr;
}

std::unique_ptr<Decoder> make_decoder(const json& j) {
  if (j.is_null()) {
    return nullptr;
  }
  const char* where = "decoder";
  const std::string type = type_of(j, where);
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Metaspace") return std::make_unique<MetaspaceDecoder>(j, where);
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") return std::make_unique<StripDecoder>(j, where);
  if (type == "Replace") return std::make_unique<ReplaceDecoder>(j, where);
  if (type == "BPEDecoder") {
    return std::make_unique<BpeDecoder>(opt_string(j, "suffix", "</w>", where));
  }
  if (type == "Sequence") {
    return std::make_unique<SequenceDecoder>(
        sequence_parts(j, "decoders", where, &make_decoder));
  }
  LOWMEM_CHECK(false, unsupported(where, type,
                                  "ByteLevel, Metaspace, ByteFallback, Fuse, "
                                  "Strip, Replace, BPEDecoder, Sequence"));
  return nullptr;
}

namespace {

void add_post_processor(
    const json& j, PostProcessor& pp,
    const std::function<std::optional<TokenId>(const std::string&)>& token_id) {
  const char* where = "post_processor";
  const std::string type = type_of(j, where);
  if (type == "ByteLevel") {
    return;  // offsets only
  }
  auto resolve = [&](const std::string& tok) {
    const auto id = token_id(tok);
    LOWMEM_CHECK(id.has_value(), "[text] tokenizer.json ", where, " (", type,
                 "): token '", quote_for_error(tok),
                 "' is not in the vocabulary");
    return *id;
  };
  if (type == "TemplateProcessing") {
    // processors/template.rs: the "single" template; special tokens map a
    // name to one or more ids.
    const json& specials = member(j, "special_tokens", where);
    const json& single = array_member(j, "single", where);
    bool seen_a = false;
    for (const json& item : single) {
      if (item.contains("SpecialToken")) {
        const std::string name =
            get_string(member(item, "SpecialToken", where), "id", where);
        std::vector<TokenId> ids;
        auto it = specials.find(name);
        LOWMEM_CHECK(it != specials.end(), "[text] tokenizer.json ", where,
                     ": template names special token '", quote_for_error(name),
                     "' missing from special_tokens");
        for (const json& id : array_member(*it, "ids", where)) {
          LOWMEM_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0 &&
                           id.get<int64_t>() < (int64_t{1} << 31),
                       "[text] tokenizer.json ", where, ": bad id for '",
                       quote_for_error(name), "'");
          ids.push_back(static_cast<TokenId>(id.get<int64_t>()));
        }
        auto& dst = seen_a ? pp.suffix : pp.prefix;
        dst.insert(dst.end(), ids.begin(), ids.end());
      } else if (item.contains("Sequence")) {
        const std::string id =
            get_string(member(item, "Sequence", where), "id", where);
        LOWMEM_CHECK(id == "A" && !seen_a, "[text] tokenizer.json ", where,
                     ": the single template may hold sequence A once, got '",
                     quote_for_error(id), "'");
        seen_a = true;
      } else {
        LOWMEM_CHECK(false, "[text] tokenizer.json ", where,
                     ": template item is neither SpecialToken nor Sequence");
      }
    }
    LOWMEM_CHECK(seen_a, "[text] tokenizer.json ", where,
                 ": the single template lacks sequence A");
    return;
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    // processors/{roberta,bert}.rs: [cls] A [sep], cls/sep = [token, id].
    const json& cls = array_member(j, "cls", where);
    const json& sep = array_member(j, "sep", where);
    LOWMEM_CHECK(cls.size() == 2 && sep.size() == 2 &&
                     cls[1].is_number_integer() && sep[1].is_number_integer(),
                 "[text] tokenizer.json ", where,
                 ": cls/sep must be [token, id]");
    pp.prefix.push_back(static_cast<TokenId>(cls[1].get<int64_t>()));
    pp.suffix.insert(pp.suffix.begin(),
                     static_cast<TokenId>(sep[1].get<int64_t>()));
    return;
  }
  if (type == "Sequence") {
    for (const json& p : array_member(j, "processors", where)) {
      add_post_processor(p, pp, token_id);
    }
    return;
  }
  (void)resolve;
  LOWMEM_CHECK(false, "[text] tokenizer.json: post_processor type '",
               quote_for_error(type),
               "' is not supported (supported: TemplateProcessing, ByteLevel, "
               "RobertaProcessing, BertProcessing, Sequence)");
}

}  // namespace

PostProcessor make_post_processor(
    const json& j,
    const std::function<std::optional<TokenId>(const std::string&)>& token_id) {
  PostProcessor pp;
  if (j.is_null()) {
    return pp;
  }
  pp.kind = type_of(j, "post_processor");
  add_post_processor(j, pp, token_id);
  return pp;
}

// ------------------------------------------------------------ ICU

bool is_numeric(char32_t c) {
  if (c < 0x80) {
    return c >= '0' && c <= '9';
  }
  const int32_t mask = U_GET_GC_MASK(static_cast<UChar32>(c));
  return (mask & U_GC_N_MASK) != 0;
}

namespace {

bool is_ascii(std::string_view s) {
  for (char c : s) {
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  }
  return true;
}

}  // namespace

void unicode_normalize(std::string& s, UnicodeForm form, Offsets* o) {
  if (is_ascii(s)) {
    return;  // ASCII is invariant under all four forms
  }
  UErrorCode st = U_ZERO_ERROR;
  const icu::Normalizer2* n = nullptr;
  switch (form) {
    case UnicodeForm::kNFC:
      n = icu::Normalizer2::getNFCInstance(st);
      break;
    case UnicodeForm::kNFD:
      n = icu::Normalizer2::getNFDInstance(st);
      break;
    case UnicodeForm::kNFKC:
      n = icu::Normalizer2::getNFKCInstance(st);
      break;
    case UnicodeForm::kNFKD:
      n = icu::Normalizer2::getNFKDInstance(st);
      break;
  }
  LOWMEM_CHECK(U_SUCCESS(st) && n != nullptr,
               "[text] ICU normalizer unavailable: ", u_errorName(st));
  if (n->isNormalizedUTF8(s, st) && U_SUCCESS(st)) {
    return;
  }
  st = U_ZERO_ERROR;
  std::string out;
  Offsets no;
  // Normalization acts within segments that start at a normalization
  // boundary; with offsets, each segment is normalized alone and its output
  // maps to the segment's original range.
  auto normalize_part = [&](size_t b, size_t e) {
    const size_t before = out.size();
    icu::StringByteSink<std::string> sink(&out, static_cast<int32_t>(e - b));
    n->normalizeUTF8(
        0, icu::StringPiece(s.data() + b, static_cast<int32_t>(e - b)), sink,
        nullptr, st);
    LOWMEM_CHECK(U_SUCCESS(st),
                 "[text] Unicode normalization failed: ", u_errorName(st));
    if (o != nullptr) {
      const auto r = span_of(*o, b, e);
      no.b.insert(no.b.end(), out.size() - before, r.first);
      no.e.insert(no.e.end(), out.size() - before, r.second);
    }
  };
  if (o == nullptr) {
    normalize_part(0, s.size());
  } else {
    size_t seg = 0, i = 0;
    while (i < s.size()) {
      int len = 0;
      const char32_t c = decode_utf8(s.data(), i, &len);
      if (i > seg && n->hasBoundaryBefore(static_cast<UChar32>(c))) {
        normalize_part(seg, i);
        seg = i;
      }
      i += static_cast<size_t>(len);
    }
    normalize_part(seg, s.size());
    *o = std::move(no);
  }
  s.swap(out);
}

// normalizers/utils.rs Lowercase: NormalizedString::lowercase maps every
// character through Rust's char::to_lowercase (the full mapping, without the
// context rules a whole-string lowercase applies to a final sigma).
void unicode_lowercase(std::string& s, Offsets* o) {
  if (is_ascii(s)) {
    for (char& c : s) {
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
    }
    return;
  }
  std::string out;
  out.reserve(s.size());
  Offsets no;
  size_t i = 0;
  while (i < s.size()) {
    int len = 0;
    const char32_t c = decode_utf8(s.data(), i, &len);
    const size_t before = out.size();
    if (c < 0x80) {
      out += static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
    } else {
      UErrorCode st = U_ZERO_ERROR;
      icu::StringByteSink<std::string> sink(&out, 8);
      icu::CaseMap::utf8ToLower("", 0, icu::StringPiece(s.data() + i, len),
                                sink, nullptr, st);
      LOWMEM_CHECK(U_SUCCESS(st),
                   "[text] lowercasing failed: ", u_errorName(st));
    }
    if (o != nullptr) {
      no.b.insert(no.b.end(), out.size() - before, o->b[i]);
      no.e.insert(no.e.end(), out.size() - before, o->e[i]);
    }
    i += static_cast<size_t>(len);
  }
  s.swap(out);
  if (o != nullptr) {
    *o = std::move(no);
  }
}

}  // namespace lowmem::text::detail
