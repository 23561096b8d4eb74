// Internal: the state behind lowmem::text::Tokenizer.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_map>
#include <vector>

#include "pipeline.h"
#include "sentencepiece.h"

namespace lowmem::text::detail {

/// tokenizer.json after the SAX pass: the DOM without model.vocab and
/// model.merges, which are streamed into these vectors.
struct LoadedJson {
  nlohmann::json root;
  std::vector<std::string> vocab_tokens;
  std::vector<TokenId> vocab_ids;
  std::vector<std::pair<std::string, std::string>> merges;
  bool has_vocab = false, has_merges = false;
};

LoadedJson parse_tokenizer_json(const std::string& text,
                                const TokenizerLimits& limits);

/// What tokenizer_config.json says (transformers' tokenizer settings).
struct TokenizerConfig {
  std::string text;  // the file ("" when none)
  std::string bos_token, eos_token, pad_token, unk_token;
  std::optional<bool> add_bos_token, add_eos_token;
  bool clean_up_tokenization_spaces = false;
  bool split_special_tokens = false;
  std::string tokenizer_class;
  std::vector<std::pair<std::string, std::string>>
      chat_templates;  // (name, source)
};

TokenizerConfig parse_tokenizer_config(const std::string& text,
                                       const TokenizerLimits& limits);

}  // namespace lowmem::text::detail

namespace lowmem::text {

struct Tokenizer::Impl {
  std::string path;
  std::string kind;  // "tokenizer.json" or "sentencepiece"
  std::string hash;
  detail::TokenizerConfig config;

  // tokenizer.json pipeline
  std::unique_ptr<detail::Normalizer> normalizer;
  std::unique_ptr<detail::PreTokenizer> pre_tokenizer;
  std::unique_ptr<detail::Bpe> bpe;
  std::unique_ptr<detail::Decoder> decoder;
  detail::PostProcessor post;
  std::vector<detail::AddedToken> added;
  std::vector<std::string> added_decode;  // content, or its normalized form
  detail::AddedMatcher raw_matcher, normalized_matcher;
  std::unordered_map<TokenId, int> added_by_id;
  detail::StringIdMap added_by_content;
  detail::StringIdMap special_contents;
  std::string summary;        // describe()'s details
  std::string pipeline_json;  // pipeline_json()

  // sentencepiece
  std::unique_ptr<detail::SentencePiece> sp;
  std::vector<bool> sp_special;

  int64_t vocab_size = 0;
  std::optional<TokenId> bos, eos, pad, unk;

  using Spans = std::vector<std::pair<size_t, size_t>>;
  /// Appends the ids of `text`; with `offsets`, each token's byte range in it.
  void encode(std::string_view text, bool add_special,
              std::vector<TokenId>& out, Spans* offsets = nullptr) const;
  void encode_json(std::string_view text, std::vector<TokenId>& out,
                   Spans* offsets) const;
  void encode_sp(std::string_view text, std::vector<TokenId>& out,
                 Spans* offsets) const;
  std::optional<TokenId> find(std::string_view token) const;
  const std::string* token(TokenId id) const;
};

}  // namespace lowmem::text
