// Instruction data: JSON Lines files (and folders of .txt files) tokenized
// with a real tokenizer (text/tokenizer.h), with a loss mask that keeps only
// the tokens a model should learn to produce. The row formats are those of
// Hugging Face TRL's SFTTrainer datasets (trl/trainer/sft_trainer.py,
// "language modeling", "prompt-completion" and "conversational"):
//   {"text": "..."}                             every token trained
//   {"prompt": "...", "completion": "..."}      completion tokens (+ EOS)
//   {"messages": [{"role", "content"}, ...]}    assistant turns, rendered with
//                                                the tokenizer's chat template
//   {"prompt": [messages], "completion": [messages]}   conversational
//                                                prompt-completion: what the
//                                                completion adds to the render
// Tokens: text and prompt/completion rows as tokenizer(text) (special tokens
// added, BOS where the tokenizer adds one) followed by the EOS id (TRL appends
// eos_token), chat rows as apply_chat_template(messages, tokenize=True) (the
// rendered text encoded without adding special tokens), conversational
// prompt-completion rows as apply_chat_template(prompt + completion), trained
// from the end of apply_chat_template(prompt, add_generation_prompt=True)
// (TRL's rule; the full rendering must start with that one, else the row is
// bad; nothing appended: the template ends the turn). A token is trained
// when its input bytes (Encoding::offsets) include a byte of the trained text:
// the completion, or an assistant span of text::render_chat_with_spans (the
// reply and the template's end-of-turn text, not the role header). That is
// transformers' return_assistant_tokens_mask rule (a token is an assistant
// token when one of its characters is, char_to_token) without the template's
// {% generation %} tags, which the real templates do not have. Deviation from
// TRL's prompt-completion rule (the tokens after len(tokenizer(prompt))): the
// two agree unless the tokenizer merges across the prompt/completion
// boundary, where TRL warns and lowmem trains the merged token.
//
// Samples are packed several to a row of the context (segments/positions in
// data::Batch, models::PackedLayout) or padded one to a row; either way
// targets outside trained tokens are models::kIgnoreIndex (-100, the value is
// written here as kIgnoreTarget because data/ sits below models/). Shuffling,
// the train/validation split and batch draws depend only on (seed, index), so
// seek() resumes exactly. docs/data.md describes formats, rules and errors.
#pragma once

#include <torch/arg.h>

#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lowmem/data/batch.h"
#include "lowmem/text/token_cache.h"
#include "lowmem/text/tokenizer.h"

namespace lowmem::text {
class ChatTemplate;
}

namespace lowmem::data {

/// The target of a token that is not trained (= models::kIgnoreIndex,
/// PyTorch's and Hugging Face's ignore_index).
inline constexpr int64_t kIgnoreTarget = -100;

/// JsonlOptions::max_messages's default.
inline constexpr int64_t kDefaultMaxMessages = 1024;

struct JsonlOptions {
  /// Tokens a row holds (the model's sequence length). A sample of n tokens
  /// gives n - 1 (input, target) pairs, so it fits when n <= context + 1.
  TORCH_ARG(int64_t, context) = 512;
  /// Validation samples: a fraction in (0, 1) of the samples, or a count
  /// (>= 1, a whole number); 0: none (validation() is empty).
  TORCH_ARG(double, split) = 0.1;
  /// Seeds the split (and, through JsonlBatchOptions, the epoch shuffles).
  TORCH_ARG(uint64_t, seed) = 0;
  /// false: the first bad row is an error naming file:line; true: bad rows
  /// are skipped and counted (skipped(), describe()).
  TORCH_ARG(bool, skip_bad_rows) = false;
  /// A sample longer than the context: false = a bad row; true = cut to
  /// context + 1 tokens (TRL's max_length truncation).
  TORCH_ARG(bool, truncate) = false;
  /// Jinja source file of the chat template, or a tokenizer_config.json
  /// whose chat_template is used; "" = the tokenizer's own (its
  /// tokenizer_config.json).
  TORCH_ARG(std::string, chat_template) = "";
  /// Keep the tokenized samples in a token file (text/token_cache.h) keyed by
  /// the tokenizer's hash, the files' contents and these options.
  TORCH_ARG(bool, cache) = true;
  /// "" = text::default_token_cache_dir().
  TORCH_ARG(std::string, cache_dir) = "";
  /// Longest line of a JSONL file (longer: a bad row).
  TORCH_ARG(int64_t, max_line_bytes) = int64_t{16} << 20;
  /// Largest input file (larger: an error before reading it).
  TORCH_ARG(int64_t, max_file_bytes) = int64_t{4} << 30;
  /// Most messages in one conversational row (more: a bad row). The loss
  /// mask re-renders the conversation about five times per assistant
  /// message, so a row costs O(messages^2) renderings' worth of work; this
  /// bounds it (Qwen3's template, release build: 256 messages 0.9 s, 1024
  /// messages 15 s per row).
  TORCH_ARG(int64_t, max_messages) = kDefaultMaxMessages;
};

/// One tokenized sample: ids and, per token, whether it is trained (the
/// target of the position before it).
struct TokenizedRow {
  std::vector<text::TokenId> ids;
  std::vector<uint8_t> mask;
  /// "text", "prompt-completion", "chat" or "chat-prompt-completion".
  std::string format;
};

/// Tokenizes one row (a parsed JSON object). `chat` may be null when the
/// tokenizer has no template; a chat row then fails. Throws c10::Error
/// "[data] <what>" without a location (the caller adds file:line): missing or
/// wrong-typed fields, an unknown role ("system", "user", "assistant",
/// "tool"), a template error, a row with no trained token, a conversation
/// (prompt + completion together) of more than `max_messages` messages.
TokenizedRow tokenize_row(const nlohmann::ordered_json& row,
                          const text::Tokenizer& tokenizer,
                          const text::ChatTemplate* chat,
                          int64_t max_messages = kDefaultMaxMessages);

/// The chat template `options.chat_template` names, else the tokenizer's
/// (nullptr when there is none).
std::shared_ptr<const text::ChatTemplate> load_chat_template(
    const text::Tokenizer& tokenizer, const std::string& source);

/// The input files of `path`: itself (a .jsonl/.json file or a .txt file), or
/// in a folder every *.jsonl and *.txt file, recursively in sorted order.
std::vector<std::string> jsonl_input_files(const std::string& path);

class JsonlDataset {
 public:
  /// Reads, checks and tokenizes every row of jsonl_input_files(path) (or
  /// opens the cached token file). Errors: "[data] <file>:<line>: <what>".
  JsonlDataset(const std::string& path, const text::Tokenizer& tokenizer,
               JsonlOptions options = JsonlOptions());

  /// Accepted samples.
  int64_t size() const;
  /// Tokens of sample i and its mask (size n each).
  std::pair<const int32_t*, int64_t> tokens(int64_t i) const;
  const uint8_t* mask(int64_t i) const;
  /// Sample indices of each split (train in file order; validation in the
  /// order of the seeded draw that chose it).
  const std::vector<int64_t>& train() const { return train_; }
  const std::vector<int64_t>& validation() const { return validation_; }
  /// Bad rows skipped (skip_bad_rows), and per reason.
  int64_t skipped() const { return skipped_; }
  const std::map<std::string, int64_t>& skipped_by_reason() const {
    return skipped_by_reason_;
  }
  /// The first skipped row's "file:line: what" ("" when none).
  const std::string& first_skipped() const { return first_skipped_; }
  /// Rows per format (TokenizedRow::format).
  const std::map<std::string, int64_t>& formats() const { return formats_; }
  int64_t trained_tokens() const;
  int64_t total_tokens() const;
  bool from_cache() const { return from_cache_; }
  int64_t vocab_size() const { return vocab_size_; }
  const JsonlOptions& options() const { return options_; }
  /// "f.jsonl: 120 samples (80 chat, 40 text), 20,112 tokens, 9,001
  /// trained; 3 bad rows skipped (...)".
  std::string describe() const;

 private:
  void tokenize_all(const std::vector<std::string>& files,
                    const text::Tokenizer& tokenizer,
                    const text::ChatTemplate* chat, const std::string& key,
                    const std::string& cache_path);
  void split();

  std::string path_;
  JsonlOptions options_;
  text::TokenFile file_;
  std::vector<int64_t> train_, validation_;
  int64_t skipped_ = 0;
  std::map<std::string, int64_t> skipped_by_reason_;
  std::string first_skipped_;
  std::map<std::string, int64_t> formats_;
  bool from_cache_ = false;
  int64_t vocab_size_ = 0;
};

struct JsonlBatchOptions {
  /// Rows per batch.
  TORCH_ARG(int64_t, batch_size) = 8;
  /// Tokens per row (<= the dataset's context).
  TORCH_ARG(int64_t, context) = 512;
  /// true: as many whole samples per row as fit, in draw order (a sample
  /// that does not fit starts the next row), with segments/positions; false:
  /// one sample per row, padded to the longest row of the batch.
  TORCH_ARG(bool, pack) = true;
  TORCH_ARG(uint64_t, seed) = 0;
  /// true: each epoch is a permutation drawn from (seed, epoch); false: the
  /// samples in the order given (a fixed evaluation pass).
  TORCH_ARG(bool, shuffle) = true;
  /// Input id of padding positions (their targets are kIgnoreTarget).
  TORCH_ARG(int64_t, pad_id) = 0;
};

/// Batches of `samples` (indices into `dataset`): input and target int64
/// [B, T]; with pack, segments and positions int64 [B, T] (padding at a
/// row's end is a segment of its own). Epochs are concatenated, so every
/// batch is full.
class JsonlBatches final : public BatchSource {
 public:
  JsonlBatches(std::shared_ptr<const JsonlDataset> dataset,
               std::vector<int64_t> samples, JsonlBatchOptions options,
               std::string name = "jsonl");
  Batch next() override;
  int64_t position() const override { return position_; }
  void seek(int64_t position) override;
  std::string describe() const override;
  /// Rows of one epoch in order (shuffle false: the same every epoch): with
  /// eval batches of batch_size, ceil(rows / batch_size) batches is one pass.
  int64_t rows_per_epoch(int64_t epoch = 0) const;

 private:
  struct Epoch {
    std::vector<int64_t> order;       // samples in draw order
    std::vector<int64_t> row_starts;  // index into order of each row's first
  };
  const Epoch& epoch(int64_t e) const;
  /// (epoch, row) of global row r.
  std::pair<int64_t, int64_t> locate(int64_t r) const;

  std::shared_ptr<const JsonlDataset> dataset_;
  std::vector<int64_t> samples_;
  JsonlBatchOptions options_;
  std::string name_;
  int64_t position_ = 0;
  mutable std::vector<int64_t> epoch_rows_;  // rows of epochs 0, 1, ...
  mutable int64_t cached_epoch_ = -1;
  mutable Epoch cached_;
};

}  // namespace lowmem::data
