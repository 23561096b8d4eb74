// Training a sentencepiece model (a tokenizer.model) in process, through
// lowmem's sentencepiece module (Debian's libsentencepiece_train 0.1.97 behind
// the module's C interface; see modules/sentencepiece/shim.cpp). The result
// loads with Tokenizer::from_file like any tokenizer.model, and Debian's
// spm_encode reads it too.
//
// Defaults are those of LLaMA's tokenizer where its files show them, else
// sentencepiece's own (trainer_spec / normalizer_spec in
// sentencepiece_model.proto, v0.1.97):
// - model_type "bpe", byte_fallback, split_digits: LLaMA (Touvron et al.
//   2023, section 2.1: "BPE ... SentencePiece ... we split all numbers into
//   individual digits, and fallback to bytes to decompose unknown UTF-8
//   characters"); sentencepiece defaults to unigram without either.
// - no normalization ("identity"), whitespace kept as is, a dummy prefix
//   space: LLaMA-2's tokenizer.json (normalizer Prepend("▁") + Replace(" ",
//   "▁"), no NFKC); sentencepiece defaults to nmt_nfkc and collapsing spaces.
// - character_coverage 0.9995, max_sentence_length 4192: sentencepiece.
// - ids: <unk> 0, <s> 1, </s> 2, no pad (sentencepiece's defaults, as LLaMA).
// Training is deterministic (BPE; the trainer's random seed fixed to 1).
#pragma once

#include <torch/arg.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace lowmem::text {

struct SentencePieceTrainOptions {
  /// Pieces in the model, the byte pieces and <unk>, <s>, </s> included
  /// (sentencepiece's default 8000).
  TORCH_ARG(int64_t, vocab_size) = 8000;
  /// "bpe" (LLaMA) or "unigram" (sentencepiece's default).
  TORCH_ARG(std::string, model_type) = "bpe";
  TORCH_ARG(bool, byte_fallback) = true;
  TORCH_ARG(bool, split_digits) = true;
  TORCH_ARG(double, character_coverage) = 0.9995;
  /// Longer sentences (bytes) are skipped by the trainer.
  TORCH_ARG(int64_t, max_sentence_length) = 4192;
};

/// Trains on `sentences` (sentencepiece's unit: a line, no newline inside;
/// empty ones are skipped) and returns the serialized model: the bytes of a
/// tokenizer.model. Throws c10::Error "[text] ..." naming a bad option,
/// sentencepiece's reason when training fails (e.g. a vocab_size larger than
/// the text supports), or the missing module.
std::string train_sentencepiece(const std::vector<std::string_view>& sentences,
                                const SentencePieceTrainOptions& options = {});

/// `bytes` as UTF-8, each maximal invalid subpart replaced by U+FFFD (as
/// Rust's String::from_utf8_lossy does): raw corpora (latin-1 files, a split
/// inside a character) before Tokenizer::encode, which takes valid UTF-8.
std::string utf8_lossy(std::string_view bytes);

/// The lines of `text` (split at '\n', a trailing '\r' dropped, empty lines
/// skipped): sentencepiece's sentences of a plain-text corpus.
std::vector<std::string_view> text_lines(std::string_view text);

}  // namespace lowmem::text
