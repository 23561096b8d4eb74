// Tokenizers as Hugging Face ships them with a model:
//  - tokenizer.json, the format of huggingface/tokenizers (Rust crate
//    `tokenizers` 0.2x; serialization in
//    tokenizers/src/tokenizer/serialization.rs), with the BPE model and the
//    components LLaMA-2/Mistral/TinyLlama, LLaMA-3, Qwen2/Qwen3, Gemma and
//    GPT-2 use (docs/data.md lists them);
//  - a sentencepiece tokenizer.model through Debian's libsentencepiece-dev;
//  - tokenizer_config.json beside either (transformers' PreTrainedTokenizer
//    settings: bos/eos/pad/unk tokens, add_bos_token/add_eos_token,
//    chat_template, clean_up_tokenization_spaces, split_special_tokens).
// Encoding follows the Rust crate (Tokenizer::encode: added tokens split out
// first, normalizer, pre-tokenizer, model, post-processor), decoding follows
// transformers' PreTrainedTokenizerFast.decode (the crate's decode, then
// clean_up_tokenization when the config asks). Tested for identical ids
// against Hugging Face's JavaScript implementation (@huggingface/tokenizers
// 0.2.0) on the real LLaMA-2, LLaMA-3, Qwen3 and Gemma-3 files; the known
// differences between that reference and the Rust crate, and which one lowmem
// follows, are in docs/data.md.
//
// A component lowmem does not implement is an error naming it when the file
// is loaded, never a silent fallback. Every size is bounded before it is
// parsed (TokenizerLimits).
#pragma once

#include <torch/arg.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace lowmem::text {

using TokenId = int32_t;

struct TokenizerLimits {
  /// tokenizer.json / tokenizer.model bytes (the largest real ones, Gemma-3's
  /// 262k-token tokenizer.json, are 33 MB).
  TORCH_ARG(int64_t, max_file_bytes) = int64_t{256} << 20;
  /// tokenizer_config.json bytes (chat templates can be long).
  TORCH_ARG(int64_t, max_config_bytes) = int64_t{16} << 20;
  TORCH_ARG(int, max_json_depth) = 64;
  /// Entries of the vocabulary, and the largest token id + 1.
  TORCH_ARG(int64_t, max_vocab) = int64_t{1} << 22;
  TORCH_ARG(int64_t, max_merges) = int64_t{1} << 23;
  TORCH_ARG(int64_t, max_added_tokens) = int64_t{1} << 20;
  /// Bytes of one token string (vocabulary entry, merge half, added token).
  TORCH_ARG(int64_t, max_token_bytes) = 16384;
};

/// encode_with_pieces' result: the ids and, for each, its token string as
/// the vocabulary spells it (byte-level tokens in their Ġ alphabet) and the
/// byte range [begin, end) of the input it came from, as the crate's offsets
/// (through normalizers and pre-tokenizers): added tokens their match (with
/// lstrip/rstrip whitespace), a token of part of a character (byte fallback)
/// that character, text a normalizer inserted (Prepend's ▁) the character it
/// was attached to; tokens the post-processor adds are empty ranges at the
/// start (prefix) or end (suffix) of the input.
struct Encoding {
  std::vector<TokenId> ids;
  std::vector<std::string> pieces;
  std::vector<std::pair<size_t, size_t>> offsets;
};

class Tokenizer {
 public:
  /// `path`: a tokenizer.json, a sentencepiece tokenizer.model (any other file
  /// is tried as sentencepiece when it does not start with '{'), or a folder
  /// holding one of them (tokenizer.json preferred). tokenizer_config.json in
  /// the same folder is read when present.
  static Tokenizer from_file(const std::string& path,
                             const TokenizerLimits& limits = TokenizerLimits());
  /// From in-memory tokenizer.json text and, optionally, tokenizer_config.json
  /// text (tests, fuzzing).
  static Tokenizer from_json(const std::string& tokenizer_json,
                             const std::string& config_json = "",
                             const TokenizerLimits& limits = TokenizerLimits());

  /// Ids of `text` (valid UTF-8, else an error naming the byte offset). With
  /// add_special_tokens, the post-processor's tokens (BOS, ...) are added, as
  /// transformers' tokenizer(text) does; chat templates are encoded with
  /// add_special_tokens = false (apply_chat_template does so).
  std::vector<TokenId> encode(std::string_view text,
                              bool add_special_tokens = true) const;
  /// Appends the ids to `out` (reusing its storage).
  void encode_into(std::string_view text, bool add_special_tokens,
                   std::vector<TokenId>& out) const;
  Encoding encode_with_pieces(std::string_view text,
                              bool add_special_tokens = true) const;

  /// Text of `ids`. Throws for an id outside the vocabulary.
  std::string decode(const std::vector<TokenId>& ids,
                     bool skip_special_tokens = false) const;

  /// Added tokens first, then the model's vocabulary.
  std::optional<TokenId> token_to_id(std::string_view token) const;
  /// The token string of `id`; throws "[text] token id N is not in the
  /// vocabulary" for an id without one.
  std::string id_to_token(TokenId id) const;
  /// Largest id + 1: the rows a model's embedding needs.
  int64_t vocab_size() const;
  /// The BPE merges in rank order as (left, right) token strings (empty for
  /// sentencepiece models), e.g. for a GGUF export's tokenizer.ggml.merges.
  std::vector<std::pair<std::string, std::string>> merges() const;
  /// "tokenizer.json" or "sentencepiece".
  const std::string& kind() const;

  std::optional<TokenId> bos_id() const;
  std::optional<TokenId> eos_id() const;
  std::optional<TokenId> pad_id() const;
  std::optional<TokenId> unk_id() const;
  /// Token strings named by tokenizer_config.json ("" when not set).
  const std::string& bos_token() const;
  const std::string& eos_token() const;
  const std::string& pad_token() const;
  const std::string& unk_token() const;
  /// True for added tokens marked special (skipped by decode's
  /// skip_special_tokens) and sentencepiece control pieces.
  bool is_special(TokenId id) const;
  /// What encode(text, true) adds: (prefix ids, suffix ids) around the text.
  std::pair<std::vector<TokenId>, std::vector<TokenId>> special_affixes() const;

  /// tokenizer_config.json's chat_template ("" when none). When the config
  /// holds a list of named templates, `name` picks one ("default" first).
  std::string chat_template(const std::string& name = "default") const;
  /// tokenizer_config.json's text ("" when there was none), for settings this
  /// class does not interpret.
  const std::string& config_json() const;
  /// tokenizer.json's "added_tokens", "normalizer", "pre_tokenizer",
  /// "post_processor", "decoder" and its "model" without "vocab" and
  /// "merges", as one JSON
  /// object's text ("" for sentencepiece): for exporters that name the
  /// pipeline in another format (interop/gguf.h).
  const std::string& pipeline_json() const;

  /// Hex SHA-256 over the tokenizer's files (tokenizer.json or
  /// tokenizer.model, then tokenizer_config.json) and the implementation's
  /// version: the key of token caches.
  const std::string& hash() const;
  /// "tokenizer.json: BPE (byte-level), 128256 ids, ..." for logs.
  std::string describe() const;
  /// The file it was loaded from ("" for from_json).
  const std::string& path() const;

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;
};

/// The tokenizer file `path` names: itself, or in a folder tokenizer.json,
/// else tokenizer.model. Throws naming the folder when it has neither.
std::string resolve_tokenizer_path(const std::string& path);

/// Hex SHA-256 of `bytes` (FIPS 180-4).
std::string sha256_hex(std::string_view bytes);

/// Incremental SHA-256, for hashing corpora without holding them.
class Sha256 {
 public:
  Sha256();
  void update(std::string_view bytes);
  /// Hex digest; the object must not be updated afterwards.
  std::string hex();

 private:
  void block(const unsigned char* p);
  uint32_t h_[8];
  unsigned char buf_[64];
  size_t used_ = 0;
  uint64_t total_ = 0;
};

/// A file's size and hex SHA-256, read in 64 KiB chunks (never held whole).
/// Throws naming the file when it cannot be opened.
struct FileDigest {
  uint64_t size = 0;
  std::string hex;
};
FileDigest sha256_file(const std::string& path);

}  // namespace lowmem::text
