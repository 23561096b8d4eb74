// Loading tokenizer.json: a SAX pass (nlohmann/json) that streams the BPE
// vocabulary and merges straight into their tables (Gemma-3's file holds 262k
// tokens and 515k merges: a DOM of it costs seconds and ~200 MB) and builds a
// DOM for everything else; nesting depth, counts and string sizes are checked
// as they arrive.
#include <nlohmann/json.hpp>

#include "bounded.h"
#include "lowmem/core/check.h"
#include "lowmem/core/input.h"
#include "tokenizer_impl.h"
#include "utf8.h"

namespace lowmem::text::detail {
namespace {

using nlohmann::json;

class Sax final : public nlohmann::json_sax<json> {
 public:
  Sax(const TokenizerLimits& limits, LoadedJson& out)
      : limits_(limits), out_(out) {}

  bool null() override { return value(json()); }
  bool boolean(bool v) override { return value(json(v)); }
  bool number_integer(number_integer_t v) override {
    if (mode() == Mode::kVocab) {
      return vocab_id(v);
    }
    return value(json(v));
  }
  bool number_unsigned(number_unsigned_t v) override {
    if (mode() == Mode::kVocab) {
      return vocab_id(v > static_cast<number_unsigned_t>(INT64_MAX)
                          ? INT64_MAX
                          : static_cast<int64_t>(v));
    }
    return value(json(v));
  }
  bool number_float(number_float_t v, const string_t&) override {
    LOWMEM_CHECK(mode() != Mode::kVocab, "[text] tokenizer.json model.vocab: '",
                 quote_for_error(key_), "' has a non-integer id");
    return value(json(v));
  }
  bool string(string_t& s) override {
    check_token(s, "a string");
    switch (mode()) {
      case Mode::kVocab:
        LOWMEM_CHECK(false, "[text] tokenizer.json model.vocab: '",
                     quote_for_error(key_), "' has a non-integer id");
        return false;
      case Mode::kMerges: {
        // Legacy "a b" lines (models/bpe/model.rs convert_merges_to_hashmap:
        // "#version" lines skipped, exactly two parts).
        if (s.rfind("#version", 0) == 0) {
          return true;
        }
        const size_t sp = s.find(' ');
        LOWMEM_CHECK(
            sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos,
            "[text] tokenizer.json model.merges[", out_.merges.size(), "]: '",
            quote_for_error(s), "' is not two tokens separated by one space");
        add_merge(s.substr(0, sp), s.substr(sp + 1));
        return true;
      }
      case Mode::kMergePair:
        LOWMEM_CHECK(pair_.size() < 2, "[text] tokenizer.json model.merges[",
                     out_.merges.size(), "] has more than two tokens");
        pair_.push_back(std::move(s));
        return true;
      case Mode::kDom:
        return value(json(std::move(s)));
    }
    return false;
  }
  bool binary(binary_t&) override {
    LOWMEM_CHECK(false, "[text] tokenizer.json: unexpected binary value");
    return false;
  }
  bool start_object(std::size_t) override { return open(true); }
  bool key(string_t& k) override {
    check_token(k, "a key");
    key_ = std::move(k);
    return true;
  }
  bool end_object() override { return close(); }
  bool start_array(std::size_t) override { return open(false); }
  bool end_array() override {
    if (mode() == Mode::kMergePair) {
      LOWMEM_CHECK(pair_.size() == 2, "[text] tokenizer.json model.merges[",
                   out_.merges.size(), "] does not hold two tokens");
      add_merge(std::move(pair_[0]), std::move(pair_[1]));
      pair_.clear();
    }
    return close();
  }
  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception& e) override {
    LOWMEM_CHECK(false, "[text] tokenizer.json is not valid JSON (byte ",
                 position, "): ", clip(e.what()));
    return false;
  }

 private:
  enum class Mode { kDom, kVocab, kMerges, kMergePair };
  struct Frame {
    json* node;  // the container (kDom), else nullptr
    Mode mode;
    std::string key;  // the key this container has in its parent
  };

  const TokenizerLimits& limits_;
  LoadedJson& out_;
  std::vector<Frame> stack_;
  std::string key_;
  std::vector<std::string> pair_;

  Mode mode() const { return stack_.empty() ? Mode::kDom : stack_.back().mode; }

  void check_token(const std::string& s, const char* what) const {
    LOWMEM_CHECK(static_cast<int64_t>(s.size()) <= limits_.max_token_bytes() ||
                     mode() == Mode::kDom,
                 "[text] tokenizer.json: ", what, " of ", s.size(),
                 " bytes is over the token limit of ",
                 limits_.max_token_bytes());
  }

  bool vocab_id(int64_t v) {
    LOWMEM_CHECK(v >= 0 && v < limits_.max_vocab(),
                 "[text] tokenizer.json model.vocab: '", quote_for_error(key_),
                 "' has id ", v, ", outside [0, ", limits_.max_vocab(), ")");
    LOWMEM_CHECK(
        static_cast<int64_t>(out_.vocab_tokens.size()) < limits_.max_vocab(),
        "[text] tokenizer.json model.vocab has more than ", limits_.max_vocab(),
        " entries");
    out_.vocab_tokens.push_back(std::move(key_));
    out_.vocab_ids.push_back(static_cast<TokenId>(v));
    return true;
  }

  void add_merge(std::string a, std::string b) {
    LOWMEM_CHECK(
        static_cast<int64_t>(out_.merges.size()) < limits_.max_merges(),
        "[text] tokenizer.json model.merges has more than ",
        limits_.max_merges(), " entries");
    out_.merges.emplace_back(std::move(a), std::move(b));
  }

  // Places a scalar in the current container.
  bool value(json v) {
    LOWMEM_CHECK(mode() == Mode::kDom, "[text] tokenizer.json model.",
                 mode() == Mode::kVocab ? "vocab" : "merges",
                 ": unexpected value type");
    if (stack_.empty()) {
      out_.root = std::move(v);
      return true;
    }
    json& parent = *stack_.back().node;
    if (parent.is_object()) {
      parent[key_] = std::move(v);
    } else {
      parent.push_back(std::move(v));
    }
    return true;
  }

  bool open(bool object) {
    LOWMEM_CHECK(static_cast<int>(stack_.size()) < limits_.max_json_depth(),
                 "[text] tokenizer.json nests arrays/objects deeper than ",
                 limits_.max_json_depth(), " levels");
    const Mode m = mode();
    if (m == Mode::kMerges) {
      LOWMEM_CHECK(!object, "[text] tokenizer.json model.merges[",
                   out_.merges.size(), "] is an object");
      stack_.push_back(Frame{nullptr, Mode::kMergePair, ""});
      return true;
    }
    LOWMEM_CHECK(m == Mode::kDom, "[text] tokenizer.json model.",
                 m == Mode::kVocab ? "vocab" : "merges",
                 ": unexpected nested value");
    // model.vocab / model.merges stream into LoadedJson.
    const bool in_model = stack_.size() == 2 && stack_[1].key == "model" &&
                          stack_[1].node->is_object() &&
                          stack_[0].node->is_object();
    if (in_model && key_ == "vocab" && object) {
      out_.has_vocab = true;
      stack_.push_back(Frame{nullptr, Mode::kVocab, key_});
      return true;
    }
    if (in_model && key_ == "merges" && !object) {
      out_.has_merges = true;
      stack_.push_back(Frame{nullptr, Mode::kMerges, key_});
      return true;
    }
    json fresh = object ? json::object() : json::array();
    json* node = nullptr;
    if (stack_.empty()) {
      out_.root = std::move(fresh);
      node = &out_.root;
    } else {
      json& parent = *stack_.back().node;
      if (parent.is_object()) {
        parent[key_] = std::move(fresh);
        node = &parent[key_];
      } else {
        parent.push_back(std::move(fresh));
        node = &parent.back();
      }
    }
    stack_.push_back(Frame{node, Mode::kDom, stack_.empty() ? "" : key_});
    return true;
  }

  bool close() {
    stack_.pop_back();
    return true;
  }
};

}  // namespace

LoadedJson parse_tokenizer_json(const std::string& text,
                                const TokenizerLimits& limits) {
  LOWMEM_CHECK(static_cast<int64_t>(text.size()) <= limits.max_file_bytes(),
               "[text] tokenizer.json is ", text.size(),
               " bytes, over the limit of ", limits.max_file_bytes());
  LoadedJson out;
  Sax sax(limits, out);
  json::sax_parse(text, &sax);
  LOWMEM_CHECK(out.root.is_object(),
               "[text] tokenizer.json is not a JSON object");
  return out;
}

}  // namespace lowmem::text::detail
