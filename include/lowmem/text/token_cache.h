// Token files: a corpus tokenized once and memory-mapped afterwards, keyed by
// the tokenizer's hash and the source's content, so a second run (or another
// process) reads the ids without tokenizing again. Used for text corpora by
// the trainer (tokenize_files_cached) and, through TokenFileWriter with a key
// of its own, for other derived data (JSONL samples with loss masks).
//
// Format (little-endian), version 1:
//   [0, 8)     magic "LMTOKv01"
//   [8, 16)    u64 flags (bit 0: a mask follows the offsets)
//   [16, 80)   key, 64 ASCII characters (a hex SHA-256)
//   [80, 88)   u64 token count N;  [88, 96) u64 document count D
//   [96, 104)  u64 vocabulary size (ids are < it)
//   [104, ...) int32 tokens[N], zero padding to a multiple of 8,
//              u64 offsets[D + 1] (0 = offsets[0] <= ... <= offsets[D] = N),
//              u8 mask[N] when flag bit 0.
// Files are written to a temporary name, fsync'ed and renamed (atomic); a
// file whose sizes or offsets disagree with its length is rejected.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "lowmem/text/tokenizer.h"

namespace lowmem::text {

class TokenFile {
 public:
  TokenFile() = default;
  /// Maps `path` read-only; throws "[text] token file '...': ..." naming what
  /// is wrong with it.
  static TokenFile open(const std::string& path);

  int64_t size() const;
  int64_t documents() const;
  int64_t vocab_size() const;
  const int32_t* tokens() const;
  /// [begin, end) of document `i` in tokens().
  std::pair<int64_t, int64_t> document(int64_t i) const;
  /// The per-token mask, or nullptr when the file has none.
  const uint8_t* mask() const;
  const std::string& key() const;
  const std::string& path() const;
  /// int32 [N] / uint8 [N] tensors viewing the mapping (no copy; they keep it
  /// alive; read-only memory: do not write to them).
  at::Tensor tokens_tensor() const;
  at::Tensor mask_tensor() const;

  struct Mapping;

 private:
  std::shared_ptr<const Mapping> map_;
};

class TokenFileWriter {
 public:
  /// Creates a temporary file next to `path`; nothing appears at `path`
  /// before finish().
  TokenFileWriter(std::string path, std::string key, int64_t vocab_size,
                  bool with_mask);
  /// Removes the temporary file when finish() was not reached.
  ~TokenFileWriter();
  TokenFileWriter(const TokenFileWriter&) = delete;
  TokenFileWriter& operator=(const TokenFileWriter&) = delete;

  /// Appends one document; `mask` (n bytes) is required iff with_mask.
  void add_document(const TokenId* ids, size_t n,
                    const uint8_t* mask = nullptr);
  void add_document(const std::vector<TokenId>& ids) {
    add_document(ids.data(), ids.size());
  }
  /// Writes offsets and header, fsyncs, renames to `path`, opens it.
  TokenFile finish();

  struct State;

 private:
  std::unique_ptr<State> s_;
};

struct CorpusTokenOptions {
  /// Where token files live; "" = default_token_cache_dir().
  TORCH_ARG(std::string, cache_dir) = "";
  /// Each document gets the post-processor's tokens (BOS, ...), as
  /// tokenizer(text) does.
  TORCH_ARG(bool, add_special_tokens) = true;
  /// A file longer than this is cut at line ends into documents of at most
  /// this many bytes (a line longer than it is cut where it reaches it).
  TORCH_ARG(int64_t, max_document_bytes) = int64_t{1} << 20;
  /// Files are read with this bound each.
  TORCH_ARG(int64_t, max_file_bytes) = int64_t{4} << 30;
};

/// $LOWMEM_CACHE_DIR/tokens, else $XDG_CACHE_HOME/lowmem/tokens, else
/// $HOME/.cache/lowmem/tokens.
std::string default_token_cache_dir();

/// The key of `files` tokenized by `tokenizer` with `options`: SHA-256 over
/// the tokenizer's hash, the options and every file's path, size and content.
std::string corpus_token_key(const Tokenizer& tokenizer,
                             const std::vector<std::string>& files,
                             const CorpusTokenOptions& options);

/// The token file of `files` (each file one document, or several when longer
/// than max_document_bytes), from the cache when it holds a valid file with
/// this key, else tokenized now and written there atomically. Files must be
/// valid UTF-8 (an error names the file and byte).
TokenFile tokenize_files_cached(
    const Tokenizer& tokenizer, const std::vector<std::string>& files,
    const CorpusTokenOptions& options = CorpusTokenOptions());

}  // namespace lowmem::text
