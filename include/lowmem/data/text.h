// Byte-level text data: a corpus read from a file or a folder of text files
// (recursively, sorted paths), split by position into train and validation,
// and a resumable BatchSource of random windows whose draw depends only on
// (seed, batch index), so seek(n) resumes exactly. Default corpus: the Debian
// package `fortunes` (/usr/share/games/fortunes).
#pragma once

#include "lowmem/data/batch.h"

#include <torch/arg.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace lowmem::data {

/// Where the Debian package `fortunes` puts its plain-text files.
inline constexpr const char* kDefaultTextCorpus = "/usr/share/games/fortunes";
/// Most bytes a text corpus (all its files together) may hold: it is read
/// whole, so /dev/zero or a huge file ends in this limit, not bad_alloc.
inline constexpr uint64_t kMaxTextCorpusBytes = uint64_t{1} << 30;

/// All bytes of a file or folder. Folders are walked recursively in sorted
/// path order; files containing a NUL byte (e.g. the strfile indexes *.dat
/// next to fortune files) are skipped as binary, and a symlink to a file that
/// was already read (fortune's *.u8 links) is read once.
class TextCorpus {
 public:
  /// Throws "[data] ..." naming `path` if it is missing, unreadable or holds
  /// no text (for the default path, naming the Debian package too).
  explicit TextCorpus(
      const std::string& path = kDefaultTextCorpus, double val_fraction = 0.1);
  /// Exactly the files `files`, in that order (the same binary, duplicate
  /// and size rules), described as `name` (e.g. "fortunes: computers,
  /// linux"). Throws "[data] ..." if `files` is empty or holds no text.
  static TextCorpus from_files(const std::vector<std::string>& files,
                               const std::string& name,
                               double val_fraction = 0.1);

  const std::string& path() const {
    return path_;
  }
  /// Files read, in order.
  const std::vector<std::string>& files() const {
    return files_;
  }
  int64_t skipped_binary() const {
    return skipped_;
  }
  /// uint8 tensor of the whole corpus (files concatenated).
  const at::Tensor& bytes() const {
    return bytes_;
  }
  /// Train split: the first (1 - val_fraction) of the bytes.
  at::Tensor train() const;
  /// Validation split: the last val_fraction of the bytes.
  at::Tensor validation() const;
  int64_t size() const {
    return bytes_.numel();
  }
  std::string describe() const;

 private:
  struct Unread {};
  explicit TextCorpus(Unread) {}
  // Reads `candidates` (the rules above) and splits them; `label` names the
  // corpus in errors, `hint` follows them.
  void read(const std::vector<std::string>& candidates, double val_fraction,
            const std::string& hint);

  std::string path_;
  std::vector<std::string> files_;
  int64_t skipped_ = 0;
  at::Tensor bytes_;  // [N] uint8
  int64_t split_ = 0;  // first validation byte
};

/// Entropy (nats per byte) of the byte histogram of `bytes` (uint8): the loss
/// of the best unigram model fitted to those very bytes, a floor no unigram
/// model reaches on held-out data. Divide by ln 2 for bits.
double unigram_entropy(const at::Tensor& bytes);

/// Cross-entropy (nats per byte) on `eval` of the unigram distribution of
/// `fit` with add-one smoothing: what a byte-frequency model trained on the
/// train split scores on validation.
double unigram_cross_entropy(const at::Tensor& fit, const at::Tensor& eval);

struct TextBatchOptions {
  /// Tokens per window (the model's context).
  TORCH_ARG(int64_t, context) = 128;
  TORCH_ARG(int64_t, batch_size) = 16;
  TORCH_ARG(uint64_t, seed) = 0;
  /// true: windows at random offsets; false: consecutive non-overlapping
  /// windows from the start, wrapping (for a fixed evaluation pass).
  TORCH_ARG(bool, random) = true;
};

/// Windows of `split` (uint8 [N] bytes, or int32/int64 [N] token ids):
/// input = split[o : o+T], target = split[o+1 : o+T+1], both int64 [B, T].
class TextBatches final : public BatchSource {
 public:
  TextBatches(
      at::Tensor split, TextBatchOptions options, std::string name = "text");
  Batch next() override;
  int64_t position() const override {
    return position_;
  }
  void seek(int64_t position) override;
  std::string describe() const override;
  /// Number of windows of the split ((N - 1) / T: one full pass).
  int64_t windows() const;
  const TextBatchOptions& options() const {
    return options_;
  }

 private:
  at::Tensor split_;
  TextBatchOptions options_;
  std::string name_;
  int64_t position_ = 0;
};

/// splitmix64: the stateless mixer behind every seeded draw in data/
/// (random windows, epoch shuffles).
uint64_t mix64(uint64_t x);

}  // namespace lowmem::data
