// UTF-8 helpers shared by the text layer (internal header). Input text is
// validated once at the API boundary (validate_utf8); everything after that
// decodes without re-checking.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace lowmem::text::detail {

/// Byte offset of the first invalid UTF-8 sequence in `s` (overlong forms,
/// surrogates and code points above U+10FFFF are invalid), or npos.
size_t find_invalid_utf8(std::string_view s);

/// Throws "[text] <what> is not valid UTF-8 at byte N" when it is not.
void validate_utf8(std::string_view s, const char* what);

/// Decodes the code point at s[i] (valid UTF-8 assumed); sets `len` to its
/// byte length.
inline char32_t decode_utf8(const char* s, size_t i, int* len) {
  const auto c0 = static_cast<unsigned char>(s[i]);
  if (c0 < 0x80) {
    *len = 1;
    return c0;
  }
  if (c0 < 0xE0) {
    *len = 2;
    return (char32_t{c0 & 0x1Fu} << 6) |
           (static_cast<unsigned char>(s[i + 1]) & 0x3Fu);
  }
  if (c0 < 0xF0) {
    *len = 3;
    return (char32_t{c0 & 0x0Fu} << 12) |
           (char32_t{static_cast<unsigned char>(s[i + 1]) & 0x3Fu} << 6) |
           (static_cast<unsigned char>(s[i + 2]) & 0x3Fu);
  }
  *len = 4;
  return (char32_t{c0 & 0x07u} << 18) |
         (char32_t{static_cast<unsigned char>(s[i + 1]) & 0x3Fu} << 12) |
         (char32_t{static_cast<unsigned char>(s[i + 2]) & 0x3Fu} << 6) |
         (static_cast<unsigned char>(s[i + 3]) & 0x3Fu);
}

/// Byte length of the UTF-8 sequence that starts with byte `c0`.
inline int utf8_length(unsigned char c0) {
  return c0 < 0x80 ? 1 : c0 < 0xE0 ? 2 : c0 < 0xF0 ? 3 : 4;
}

/// Start of the character that ends just before byte `i` (i > 0).
inline size_t previous_char(const char* s, size_t i) {
  do {
    --i;
  } while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80);
  return i;
}

/// Appends the UTF-8 encoding of `c` to `out`.
inline void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

/// `bytes` as UTF-8 with each maximal invalid subpart replaced by U+FFFD (the
/// Unicode/WHATWG recommendation, as Rust's String::from_utf8_lossy does).
std::string utf8_lossy(std::string_view bytes);

/// White_Space (Unicode property; what Rust's char::is_whitespace and
/// Oniguruma's \s test).
bool is_white_space(char32_t c);

}  // namespace lowmem::text::detail
