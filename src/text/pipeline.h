// Internal: the pieces of a tokenizer.json pipeline (huggingface/tokenizers,
// tokenizers/src/{normalizers,pre_tokenizers,models/bpe,processors,decoders})
// and the shared state behind lowmem::text::Tokenizer. Offsets are not
// tracked (lowmem needs ids, not character alignments); the one place the
// crate consults them, Metaspace's prepend_scheme "first", uses `at_origin`.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "lowmem/text/regex.h"
#include "lowmem/text/tokenizer.h"

namespace lowmem::text::detail {

// ---------------------------------------------------------------- strings

/// An open-addressing map from strings (kept in one arena) to ids.
class StringIdMap {
 public:
  void reserve(size_t n);
  /// Inserts; returns false (and keeps the old id) when `key` is present.
  bool insert(std::string_view key, TokenId id);
  /// -1 when absent.
  TokenId find(std::string_view key) const;
  size_t size() const { return count_; }

 private:
  struct Slot {
    uint32_t hash = 0;
    TokenId id = -1;  // -1 = empty
    uint32_t offset = 0;
    uint32_t length = 0;
  };
  void grow();
  std::vector<Slot> slots_;
  std::string arena_;
  size_t count_ = 0;
  size_t mask_ = 0;
};

uint64_t hash_bytes(std::string_view s);

// ---------------------------------------------------------------- pieces

/// The original byte range [b, e) of every byte of a transformed string (the
/// crate's NormalizedString alignments, per byte): a byte of an unchanged
/// character maps to that character's range, bytes a transform produced map
/// to the range of what they replaced.
struct Offsets {
  std::vector<uint32_t> b, e;
};

/// Offsets of `s` itself, starting at `base` in the original text.
void identity_offsets(std::string_view s, uint32_t base, Offsets& o);
/// The original range covered by bytes [b, e) (for b == e, the point before
/// byte b).
std::pair<uint32_t, uint32_t> span_of(const Offsets& o, size_t b, size_t e);
/// Replaces each span of `s` by `content` (spans sorted, disjoint); `o`, when
/// given, follows (the content maps to the span it replaced).
void replace_spans(std::string& s, Offsets* o,
                   const std::vector<std::pair<size_t, size_t>>& spans,
                   std::string_view content);

/// A pre-token. `bytes` pieces hold raw text whose bytes the model maps
/// through GPT-2's byte-to-unicode table itself (ByteLevel's transform,
/// deferred when ByteLevel is the last pre-tokenizer, so the model can look
/// bytes up directly). `offs` is filled when offsets are asked for.
struct Piece {
  std::string text;
  bool at_origin = false;  // starts at offset 0 of the original input
  bool bytes = false;
  bool track = false;  // offs is maintained
  Offsets offs;
};

/// GPT-2's bytes_to_unicode(): byte -> the UTF-8 of its printable stand-in.
const std::array<std::string, 256>& byte_to_unicode();
/// The inverse: code point -> byte, or -1.
int unicode_to_byte(char32_t c);
/// `raw` with each byte replaced by its stand-in.
std::string byte_level_map(std::string_view raw);

// ---------------------------------------------------------------- components

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  /// Normalizes `s` in place; `o` (may be null) follows the bytes.
  virtual void normalize(std::string& s, Offsets* o) const = 0;
  void normalize(std::string& s) const { normalize(s, nullptr); }
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  /// Replaces `pieces` by their splits (empty pieces are dropped). `last`:
  /// this is the final pre-tokenizer (ByteLevel may then defer its mapping).
  virtual void apply(std::vector<Piece>& pieces, bool last) const = 0;
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

/// TemplateProcessing / ByteLevel / Roberta / Bert / Sequence, reduced to what
/// a single sequence gets: ids before and after it.
struct PostProcessor {
  std::vector<TokenId> prefix, suffix;
  std::string kind = "none";
};

// ---------------------------------------------------------------- BPE

struct BpeOptions {
  std::optional<std::string> unk_token;
  std::optional<std::string> continuing_subword_prefix;
  std::optional<std::string> end_of_word_suffix;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
};

class Bpe {
 public:
  Bpe(std::vector<std::string> vocab_tokens, std::vector<TokenId> vocab_ids,
      const std::vector<std::pair<std::string, std::string>>& merges,
      BpeOptions options, const TokenizerLimits& limits);

  /// Appends the ids of one pre-token; with `spans`, also each token's byte
  /// range [b, e) in piece.text.
  void tokenize(
      const Piece& piece, std::vector<TokenId>& out,
      std::vector<std::pair<uint32_t, uint32_t>>* spans = nullptr) const;

  TokenId find(std::string_view token) const { return vocab_.find(token); }
  /// The token string of `id`, or nullptr when the model has none.
  const std::string* token(TokenId id) const {
    return id >= 0 && static_cast<size_t>(id) < tokens_.size() &&
                   has_token_[static_cast<size_t>(id)]
               ? &tokens_[static_cast<size_t>(id)]
               : nullptr;
  }
  int64_t max_id_plus_one() const {
    return static_cast<int64_t>(tokens_.size());
  }
  size_t vocab_entries() const { return vocab_.size(); }
  size_t merge_count() const { return merge_count_; }
  /// The merges in rank order, as token strings.
  std::vector<std::pair<std::string, std::string>> merges() const;
  const BpeOptions& options() const { return options_; }
  uint64_t instance_id() const { return instance_id_; }

 private:
  struct MergeEntry {
    uint64_t key = ~uint64_t{0};  // (left << 32) | right; ~0 = empty
    uint32_t rank = 0;
    TokenId merged = -1;
  };
  const MergeEntry* find_merge(TokenId a, TokenId b) const;
  void prefetch_merge(TokenId a, TokenId b) const;
  void merge_word(std::string_view word, bool bytes, std::vector<TokenId>& out,
                  std::vector<std::pair<uint32_t, uint32_t>>* spans) const;
  void word_symbols(std::string_view word, bool bytes,
                    std::vector<int32_t>& ids,
                    std::vector<int32_t>& lens) const;
  void merge_symbols(const std::vector<int32_t>& ids,
                     const std::vector<int32_t>& lens,
                     std::vector<TokenId>& out,
                     std::vector<std::pair<uint32_t, uint32_t>>* spans) const;
  void add_symbols(std::string_view s, size_t byte_len,
                   std::vector<int32_t>& ids, std::vector<int32_t>& lens,
                   std::optional<std::pair<TokenId, size_t>>& unk) const;

  StringIdMap vocab_;
  std::vector<std::string> tokens_;  // by id
  std::vector<bool> has_token_;
  std::vector<MergeEntry> merges_;
  size_t merge_mask_ = 0;
  size_t merge_count_ = 0;
  BpeOptions options_;
  TokenId unk_id_ = -1;
  std::vector<TokenId>
      char_ids_;  // BMP code point -> id of that one-character token, or -1
  std::array<TokenId, 256> byte_ids_{};  // id of each byte's stand-in, or -1
  std::array<TokenId, 256> fallback_ids_{};  // id of <0xHH>, or -1
  uint64_t instance_id_ = 0;
};

// ---------------------------------------------------------------- added tokens

struct AddedToken {
  std::string content;
  TokenId id = -1;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;
};

/// Leftmost-longest matching of added tokens (the crate's
/// AddedVocabulary::find_matches, with its single_word/lstrip/rstrip rules).
class AddedMatcher {
 public:
  /// `patterns`: (string to match, index into `tokens`).
  void build(const std::vector<std::pair<std::string, int>>& patterns);
  bool empty() const { return nodes_.size() <= 1; }
  struct Split {
    size_t begin, end;
    int token;  // index into the token list, -1 for text
  };
  void split(std::string_view s, const std::vector<AddedToken>& tokens,
             bool skip_special, std::vector<Split>& out) const;

 private:
  struct NodeT {
    std::vector<std::pair<unsigned char, int>> next;  // sorted by byte
    int token = -1;
  };
  std::vector<NodeT> nodes_;
  std::array<bool, 256> first_{};
};

// ---------------------------------------------------------------- factories

std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& j);
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& j);
std::unique_ptr<Decoder> make_decoder(const nlohmann::json& j);
/// `token_id` resolves the token strings templates name.
PostProcessor make_post_processor(
    const nlohmann::json& j,
    const std::function<std::optional<TokenId>(const std::string&)>& token_id);

/// A Split/Replace pattern ({"String": s} or {"Regex": r}) as a Regex.
Regex make_pattern(const nlohmann::json& j, const char* where);

/// The crate's SplitDelimiterBehavior applied to the matches of `re` in `s`.
enum class SplitBehavior {
  kRemoved,
  kIsolated,
  kMergedWithPrevious,
  kMergedWithNext,
  kContiguous
};
SplitBehavior parse_behavior(const std::string& s);
void split_by_matches(std::string_view s,
                      const std::vector<std::pair<size_t, size_t>>& matches,
                      bool invert, SplitBehavior behavior,
                      std::vector<std::pair<size_t, size_t>>& out);

/// A nlohmann object's member or throws "[text] <where>: missing \"key\"".
const nlohmann::json& member(const nlohmann::json& j, const char* key,
                             const char* where);
std::string type_of(const nlohmann::json& j, const char* where);

/// Unicode normalization form (ICU Normalizer2), in place.
enum class UnicodeForm { kNFC, kNFD, kNFKC, kNFKD };
void unicode_normalize(std::string& s, UnicodeForm form, Offsets* o = nullptr);
/// Rust's char::to_lowercase per character (no context: Σ becomes σ).
void unicode_lowercase(std::string& s, Offsets* o = nullptr);

}  // namespace lowmem::text::detail
