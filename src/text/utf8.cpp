#include "utf8.h"

#include "lowmem/core/check.h"

namespace lowmem::text::detail {
namespace {

// Length of the valid UTF-8 sequence at s[i], or 0 when it is invalid; for an
// invalid one, *subpart is the length of its maximal valid prefix (>= 1), the
// unit one U+FFFD replaces.
size_t valid_sequence(std::string_view s, size_t i, size_t* subpart) {
  const auto c0 = static_cast<unsigned char>(s[i]);
  *subpart = 1;
  if (c0 < 0x80) {
    return 1;
  }
  int need = 0;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c0 >= 0xC2 && c0 <= 0xDF) {
    need = 1;
  } else if (c0 >= 0xE0 && c0 <= 0xEF) {
    need = 2;
    if (c0 == 0xE0) {
      lo = 0xA0;
    } else if (c0 == 0xED) {
      hi = 0x9F;  // no surrogates
    }
  } else if (c0 >= 0xF0 && c0 <= 0xF4) {
    need = 3;
    if (c0 == 0xF0) {
      lo = 0x90;
    } else if (c0 == 0xF4) {
      hi = 0x8F;
    }
  } else {
    return 0;
  }
  size_t j = i + 1;
  for (int k = 0; k < need; ++k, ++j) {
    if (j >= s.size()) {
      return 0;
    }
    const auto c = static_cast<unsigned char>(s[j]);
    if (c < lo || c > hi) {
      return 0;
    }
    lo = 0x80;
    hi = 0xBF;
    *subpart = j - i + 1;
  }
  return static_cast<size_t>(need) + 1;
}

}  // namespace

size_t find_invalid_utf8(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    // ASCII fast path, 8 bytes at a time.
    while (i + 8 <= n) {
      uint64_t w = 0;
      for (int k = 0; k < 8; ++k) {
        w |= uint64_t{static_cast<unsigned char>(s[i + k])} << (8 * k);
      }
      if (w & 0x8080808080808080ull) {
        break;
      }
      i += 8;
    }
    if (i >= n) {
      break;
    }
    size_t sub = 0;
    const size_t len = valid_sequence(s, i, &sub);
    if (len == 0) {
      return i;
    }
    i += len;
  }
  return std::string_view::npos;
}

void validate_utf8(std::string_view s, const char* what) {
  const size_t bad = find_invalid_utf8(s);
  LOWMEM_CHECK(bad == std::string_view::npos, "[text] ", what,
               " is not valid UTF-8 at byte ", bad);
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    size_t sub = 0;
    const size_t len = valid_sequence(bytes, i, &sub);
    if (len == 0) {
      out += "\xEF\xBF\xBD";
      i += sub;
    } else {
      out.append(bytes.data() + i, len);
      i += len;
    }
  }
  return out;
}

bool is_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
         c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

}  // namespace lowmem::text::detail
