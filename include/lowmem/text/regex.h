// A small backtracking regular-expression engine for the split patterns of
// Hugging Face tokenizers (tokenizer.json "Split"/"Replace" patterns, the
// GPT-2 byte-level pattern). Semantics follow Oniguruma, which the Rust
// `tokenizers` crate uses (huggingface/tokenizers,
// tokenizers/src/utils/onig.rs): leftmost-first alternation, greedy quantifiers
// by default, `\s` = White_Space,
// `\d` = Nd, `\w` = L|M|Nd|Pc, `.` = any code point but \n, `^`/`$` at line
// boundaries, `(?i:...)` with Unicode simple case folding (closure from ICU),
// and find_iter's rule that an empty match right after the previous match is
// skipped. Character classes (\p{...} general categories, scripts and binary
// properties as ICU names them) are resolved once through ICU (Debian
// libicu-dev) into a BMP bitmap plus supplementary ranges.
//
// Supported: literals, escapes (\t \n \r \f \v \a \e \xHH \x{H...} \uHHHH,
// escaped punctuation), classes [...] with ranges and negation, \s \S \d \D
// \w \W \h \H \p{X} \P{X} \p{^X}, groups (...) (?:...) (?i:...) (?i) (?-i),
// lookahead (?=...) (?!...), quantifiers * + ? {n} {n,} {n,m} {,m} and their
// lazy forms, anchors ^ $ \A \z \Z. Everything else (backreferences,
// lookbehind, atomic groups, possessive quantifiers, \b, class set operations)
// is rejected at construction with an error naming it.
//
// Deviation from the JavaScript reference (@huggingface/tokenizers 0.2.0): it
// folds only ASCII inside (?i:...) (so `'ſ` matches `'s` here, as in
// Oniguruma, but not there), and its built-in ByteLevel pattern uses JS's `\s`
// (which adds U+FEFF and lacks U+0085); see docs/data.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace lowmem::text {

class Regex {
 public:
  /// Compiles `pattern` (at most 16 KiB, nesting at most 64 levels); throws
  /// "[text] regex ..." naming the unsupported construct and its offset.
  explicit Regex(std::string_view pattern);
  ~Regex();
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;

  /// Leftmost match starting at or after byte `from` of `text` (valid UTF-8).
  /// Returns false when there is none; else sets [*begin, *end).
  bool search(std::string_view text, size_t from, size_t* begin,
              size_t* end) const;

  /// All matches, as Oniguruma's find_iter (onig crate) yields them.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;
  /// Same, appending to `out` (cleared first).
  void find_all(std::string_view text,
                std::vector<std::pair<size_t, size_t>>& out) const;

  const std::string& pattern() const;

  struct Program;

 private:
  std::unique_ptr<Program> program_;
};

}  // namespace lowmem::text
