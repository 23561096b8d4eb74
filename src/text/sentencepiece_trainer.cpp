#include "lowmem/text/sentencepiece_trainer.h"

#include <utility>

#include "lowmem/core/check.h"
#include "sentencepiece.h"
#include "utf8.h"

namespace lowmem::text {

std::string train_sentencepiece(const std::vector<std::string_view>& sentences,
                                const SentencePieceTrainOptions& o) {
  LOWMEM_CHECK(o.model_type() == "bpe" || o.model_type() == "unigram",
               "[text] sentencepiece model_type must be bpe or unigram, got '",
               o.model_type().substr(0, 200), "'");
  // 3 control/unknown pieces, and 256 byte pieces with byte_fallback.
  const int64_t least = 3 + (o.byte_fallback() ? 256 : 0) + 1;
  LOWMEM_CHECK(o.vocab_size() >= least && o.vocab_size() <= (int64_t{1} << 20),
               "[text] sentencepiece vocab_size must be in [", least,
               ", 2^20], got ", o.vocab_size());
  LOWMEM_CHECK(o.character_coverage() > 0 && o.character_coverage() <= 1,
               "[text] sentencepiece character_coverage must be in (0, 1], "
               "got ",
               o.character_coverage());
  LOWMEM_CHECK(o.max_sentence_length() > 0,
               "[text] sentencepiece max_sentence_length must be > 0, got ",
               o.max_sentence_length());
  std::vector<std::string_view> nonempty;
  nonempty.reserve(sentences.size());
  for (std::string_view s : sentences) {
    if (!s.empty()) nonempty.push_back(s);
  }
  LOWMEM_CHECK(!nonempty.empty(),
               "[text] sentencepiece training needs at least one non-empty "
               "sentence");
  auto flag = [](bool b) { return std::string(b ? "true" : "false"); };
  const std::vector<std::pair<std::string, std::string>> fields = {
      {"model_type", o.model_type()},
      {"vocab_size", std::to_string(o.vocab_size())},
      {"byte_fallback", flag(o.byte_fallback())},
      {"split_digits", flag(o.split_digits())},
      {"character_coverage", std::to_string(o.character_coverage())},
      {"max_sentence_length", std::to_string(o.max_sentence_length())},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"add_dummy_prefix", "true"},
      {"input_sentence_size", "0"},  // every sentence, no sampling
      {"num_threads", "1"},
      {"model_prefix", ""},  // the model comes back in memory
  };
  return detail::train_sentencepiece_model(fields, nonempty);
}

std::string utf8_lossy(std::string_view bytes) {
  return detail::utf8_lossy(bytes);
}

std::vector<std::string_view> text_lines(std::string_view text) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (!line.empty()) out.push_back(line);
    start = end + 1;
  }
  return out;
}

}  // namespace lowmem::text
