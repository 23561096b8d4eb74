// Byte offsets of tokens (Encoding::offsets): hand-checked cases on the real
// files, and over every edge case and 500 fortunes: in bounds, in order, and
// each token's text (decoded alone) is the input's bytes at its offsets
// whenever the token holds whole characters.
#include <gtest/gtest.h>
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>

#include "lowmem/text/tokenizer.h"
#include "reference.h"

namespace lowmem::testing {
namespace {

using text::Tokenizer;
using Offs = std::vector<std::pair<size_t, size_t>>;

TEST(Offsets, HandCheckedOnRealTokenizers) {
  LOWMEM_SKIP_WITHOUT_NODE_REFERENCE();
  const auto llama3 = Tokenizer::from_file(lenml_model_dir("llama3"));
  auto e = llama3.encode_with_pieces("Hello world", false);
  EXPECT_EQ(e.pieces, (std::vector<std::string>{"Hello", "\u0120world"}));
  EXPECT_EQ(e.offsets, (Offs{{0, 5}, {5, 11}}));
  e = llama3.encode_with_pieces("<|begin_of_text|>hi", true);
  EXPECT_EQ(e.offsets, (Offs{{0, 17}, {17, 19}}));

  // LLaMA-2: the prepended ▁ belongs to the first character, a ▁ that
  // replaced a space to that space; BOS is an empty range.
  const auto llama2 = Tokenizer::from_file(lenml_model_dir("llama2"));
  e = llama2.encode_with_pieces("Hello world", true);
  EXPECT_EQ(e.pieces,
            (std::vector<std::string>{"<s>", "\u2581Hello", "\u2581world"}));
  EXPECT_EQ(e.offsets, (Offs{{0, 0}, {0, 5}, {5, 11}}));
  // Byte fallback: the three byte tokens of one character share its range.
  e = llama2.encode_with_pieces("\U0001F600", false);
  ASSERT_GE(e.ids.size(), 4u);
  for (size_t i = 1; i < e.ids.size(); ++i)
    EXPECT_EQ(e.offsets[i], (std::pair<size_t, size_t>{0, 4}));

  // Qwen3 normalizes to NFC: e + combining acute becomes one character, its
  // token covers both code points.
  const auto qwen3 = Tokenizer::from_file(lenml_model_dir("qwen3"));
  e = qwen3.encode_with_pieces("e\u0301", false);
  ASSERT_EQ(e.ids.size(), 1u);
  EXPECT_EQ(e.offsets, (Offs{{0, 3}}));
}

// Whole UTF-8 characters only (no byte-fallback or split-character token).
bool whole_chars(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t len = c < 0x80   ? 1
                       : c < 0xC0 ? 0
                       : c < 0xE0 ? 2
                       : c < 0xF0 ? 3
                                  : 4;
    if (len == 0 || i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += len;
  }
  return true;
}

// GPT-2's byte-level alphabet back to bytes (written out here independently
// of the library: printable bytes stand for themselves, the others for
// U+0100 + their rank).
std::string unmap_byte_level(const std::string& piece) {
  std::vector<int> byte_of(512, -1);
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable =
        (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
    byte_of[printable ? b : 256 + n++] = b;
  }
  std::string out;
  for (size_t i = 0; i < piece.size();) {
    const auto c = static_cast<unsigned char>(piece[i]);
    int cp = c, len = 1;
    if (c >= 0xC0) {
      cp =
          ((c & 0x1F) << 6) | (static_cast<unsigned char>(piece[i + 1]) & 0x3F);
      len = 2;
    }
    if (cp >= 512 || byte_of[static_cast<size_t>(cp)] < 0) return "";
    out += static_cast<char>(byte_of[static_cast<size_t>(cp)]);
    i += static_cast<size_t>(len);
  }
  return out;
}

std::string nfc(const std::string& s) {
  UErrorCode st = U_ZERO_ERROR;
  std::string out;
  icu::StringByteSink<std::string> sink(&out);
  icu::Normalizer2::getNFCInstance(st)->normalizeUTF8(0, s, sink, nullptr, st);
  return out;
}

enum class Kind { kByteLevel, kByteLevelNfc, kMetaspace };

// The text a token stands for, or "" when it is not whole characters.
std::string token_text(const Tokenizer& tok, text::TokenId id, Kind kind) {
  const std::string piece = tok.id_to_token(id);
  if (kind != Kind::kMetaspace) {
    const std::string bytes = unmap_byte_level(piece);
    return whole_chars(bytes) ? bytes : "";
  }
  if (piece.size() == 6 && piece.compare(0, 3, "<0x") == 0) return "";
  std::string out;
  for (size_t i = 0; i < piece.size();) {
    if (piece.compare(i, 3, "\u2581") == 0) {
      out += ' ';
      i += 3;
    } else {
      out += piece[i++];
    }
  }
  return out;
}

void check_model(const std::string& name, Kind kind) {
  const auto tok = Tokenizer::from_file(lenml_model_dir(name));
  std::vector<std::string> inputs = edge_cases();
  for (auto& l : fortune_lines(500)) inputs.push_back(l);
  size_t checked = 0, bad = 0;
  for (const auto& s : inputs) {
    const auto e = tok.encode_with_pieces(s, false);
    ASSERT_EQ(e.offsets.size(), e.ids.size());
    size_t prev_begin = 0;
    for (size_t i = 0; i < e.ids.size(); ++i) {
      const auto [b, en] = e.offsets[i];
      ASSERT_LE(b, en) << name << " " << show(s);
      ASSERT_LE(en, s.size()) << name << " " << show(s);
      EXPECT_GE(b, prev_begin) << name << " token " << i << " of " << show(s);
      prev_begin = b;
      if (tok.is_special(e.ids[i])) continue;
      std::string piece = token_text(tok, e.ids[i], kind);
      if (piece.empty()) continue;
      std::string expect = s.substr(b, en - b);
      if (kind == Kind::kByteLevelNfc) expect = nfc(expect);
      // A ▁ prepended by the normalizer belongs to the first character.
      if (kind == Kind::kMetaspace && piece[0] == ' ' &&
          (expect.empty() || expect[0] != ' ')) {
        piece.erase(0, 1);
      }
      if (piece == expect) {
        ++checked;
      } else if (++bad <= 5) {
        ADD_FAILURE() << name << " token " << i << " " << show(piece) << " at ["
                      << b << ", " << en << ") of " << show(s) << " = "
                      << show(expect);
      }
    }
  }
  EXPECT_EQ(bad, 0u) << name;
  EXPECT_GT(checked, 10000u) << name;
}

TEST(Offsets, TokensCoverTheirTextLlama3) {
  LOWMEM_SKIP_WITHOUT_NODE_REFERENCE();
  check_model("llama3", Kind::kByteLevel);
}
TEST(Offsets, TokensCoverTheirTextQwen3) {
  LOWMEM_SKIP_WITHOUT_NODE_REFERENCE();
  check_model("qwen3", Kind::kByteLevelNfc);
}
TEST(Offsets, TokensCoverTheirTextLlama2) {
  LOWMEM_SKIP_WITHOUT_NODE_REFERENCE();
  check_model("llama2", Kind::kMetaspace);
}
TEST(Offsets, TokensCoverTheirTextGemma3) {
  LOWMEM_SKIP_WITHOUT_NODE_REFERENCE();
  check_model("gemma3", Kind::kMetaspace);
}

}  // namespace
}  // namespace lowmem::testing
