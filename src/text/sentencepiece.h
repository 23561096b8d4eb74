// Internal: a sentencepiece model (tokenizer.model) through lowmem's
// sentencepiece module (modules/sentencepiece: Debian's libsentencepiece
// behind a C interface), loaded with dlopen(RTLD_LOCAL) on first use.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "pipeline.h"

struct lowmem_spm;

namespace lowmem::text::detail {

class SentencePiece {
 public:
  /// Parses a serialized ModelProto; throws naming sentencepiece's reason.
  explicit SentencePiece(const std::string& bytes);
  ~SentencePiece();
  SentencePiece(const SentencePiece&) = delete;
  SentencePiece& operator=(const SentencePiece&) = delete;

  int size() const { return static_cast<int>(pieces_.size()); }
  const std::string& piece(int id) const {
    return pieces_[static_cast<size_t>(id)];
  }
  /// LOWMEM_SPM_* bits of the piece.
  int type(int id) const { return types_[static_cast<size_t>(id)]; }
  /// -1 when `piece` is not a piece of the model.
  int find(std::string_view piece) const;
  /// Appends the ids of `text`; with `offsets`, each piece's byte range.
  void encode(std::string_view text, std::vector<TokenId>& out,
              std::vector<std::pair<size_t, size_t>>* offsets = nullptr) const;
  std::string decode(const std::vector<int>& ids) const;

  int bos = -1, eos = -1, pad = -1, unk = -1;

 private:
  lowmem_spm* model_ = nullptr;
  std::vector<std::string> pieces_;
  std::vector<int> types_;
  StringIdMap ids_;
};

/// Trains a model on `sentences` with sentencepiece's trainer fields
/// (name, value); returns the serialized ModelProto.
std::string train_sentencepiece_model(
    const std::vector<std::pair<std::string, std::string>>& fields,
    const std::vector<std::string_view>& sentences);

}  // namespace lowmem::text::detail
