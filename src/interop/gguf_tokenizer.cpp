// tokenizer.ggml.* metadata of a text::Tokenizer (notes in interop/gguf.h).
// Keys and token types: gguf-py/gguf/constants.py (Keys.Tokenizer,
// TokenType: NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5,
// BYTE 6); the token list and types follow convert_hf_to_gguf.py's
// get_vocab_base (gpt2) and gguf-py's LlamaHfVocab (llama).
#include <c10/util/Exception.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <nlohmann/json.hpp>

#include "lowmem/core/check.h"
#include "lowmem/core/input.h"
#include "lowmem/core/json.h"
#include "lowmem/interop/gguf.h"
#include "lowmem/text/tokenizer.h"

namespace lowmem::interop {
namespace {

constexpr const char* kWhere = "[interop] GGUF export: tokenizer.json";

using io::GgufValue;
using io::GgufValueType;
using json = nlohmann::json;

enum TokenType : int64_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

// Split patterns of byte-level pre-tokenizers and llama.cpp's names for them
// (llama-vocab.cpp's LLAMA_VOCAB_PRE_TYPE_*; convert_hf_to_gguf.py
// get_vocab_base_pre).
const std::pair<const char*, const char*> kPreTokenizers[] = {
    {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
     "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
     "llama-bpe"},
    {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
     "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
     "qwen2"},
};

// pipeline[key], or null when absent.
const json& field(const json& pipeline, const char* key) {
  static const json kNull;
  const auto it = pipeline.find(key);
  return it == pipeline.end() ? kNull : *it;
}

// "<0x0A>": sentencepiece's byte-fallback pieces.
bool is_byte_token(const std::string& t) {
  return t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' &&
         std::isxdigit(static_cast<unsigned char>(t[3])) &&
         std::isxdigit(static_cast<unsigned char>(t[4]));
}

// Every component of `j` (following Sequence lists) of `type`.
void collect(const json& j, const std::string& type, std::vector<json>& out) {
  if (!j.is_object()) return;
  if (json_string_or(j, "type", "", kWhere) == type) out.push_back(j);
  for (const char* list : {"pretokenizers", "normalizers", "decoders"}) {
    if (auto it = j.find(list); it != j.end() && it->is_array()) {
      for (const json& c : *it) collect(c, type, out);
    }
  }
}

bool has(const json& j, const std::string& type) {
  std::vector<json> found;
  collect(j, type, found);
  return !found.empty();
}

std::string pre_tokenizer_name(const json& pipeline,
                               const GgufExportOptions& options) {
  if (!options.pre().empty()) return options.pre();
  std::vector<json> splits, byte_level;
  collect(field(pipeline, "pre_tokenizer"), "Split", splits);
  collect(field(pipeline, "pre_tokenizer"), "ByteLevel", byte_level);
  if (splits.empty()) {
    const bool regex =
        !byte_level.empty() &&
        json_bool_or(byte_level.front(), "use_regex", true, kWhere);
    LOWMEM_CHECK(regex,
                 "[interop] GGUF export: the byte-level tokenizer has "
                 "no split pattern llama.cpp knows; name it with --pre");
    return "gpt-2";
  }
  const json* pattern = json_member(splits.front(), "pattern", kWhere);
  const std::string regex =
      pattern == nullptr ? "" : json_string_or(*pattern, "Regex", "", kWhere);
  for (const auto& [known, name] : kPreTokenizers) {
    if (splits.size() == 1 && regex == known) return name;
  }
  LOWMEM_CHECK(false,
               "[interop] GGUF export: the pre-tokenizer's split "
               "pattern ",
               quote(regex),
               " is not one lowmem maps to a "
               "llama.cpp pre-tokenizer (llama-bpe, qwen2, gpt-2); name it "
               "with --pre");
  return "";
}

// "gpt2" for byte-level BPE, "llama" for sentencepiece-style BPE.
std::string tokenizer_model(const text::Tokenizer& tok, const json& pipeline) {
  LOWMEM_CHECK(
      tok.kind() == "tokenizer.json",
      "[interop] GGUF export of a sentencepiece tokenizer.model is not "
      "supported yet (its piece scores are not read); use the "
      "model's tokenizer.json");
  const json& model = field(pipeline, "model");
  LOWMEM_CHECK(json_string_or(model, "type", "", kWhere) == "BPE",
               "[interop] GGUF export supports BPE tokenizers, got ",
               quote(json_string_or(model, "type", "?", kWhere)));
  if (has(field(pipeline, "pre_tokenizer"), "ByteLevel") ||
      has(field(pipeline, "decoder"), "ByteLevel")) {
    return "gpt2";
  }
  LOWMEM_CHECK(json_bool_or(model, "byte_fallback", false, kWhere),
               "[interop] GGUF export: a BPE tokenizer that is neither "
               "byte-level nor byte-fallback (sentencepiece-style) has no "
               "llama.cpp vocabulary type");
  return "llama";
}

// Whether llama.cpp's SPM tokenizer should prepend a space: HF's Prepend("▁")
// normalizer or a Metaspace pre-tokenizer that prepends.
bool adds_space_prefix(const json& pipeline) {
  std::vector<json> found;
  collect(field(pipeline, "normalizer"), "Prepend", found);
  for (const json& p : found) {
    if (json_string_or(p, "prepend", "", kWhere) == "\xE2\x96\x81") return true;
  }
  found.clear();
  collect(field(pipeline, "pre_tokenizer"), "Metaspace", found);
  for (const json& p : found) {
    const std::string scheme = json_string_or(p, "prepend_scheme", "", kWhere);
    if (scheme == "always" || scheme == "first") return true;
    if (scheme.empty() && json_bool_or(p, "add_prefix_space", false, kWhere))
      return true;
  }
  return false;
}

struct Vocabulary {
  std::vector<std::string> tokens;
  std::vector<int64_t> types;
  std::vector<float> scores;
};

Vocabulary vocabulary(const text::Tokenizer& tok, const json& pipeline,
                      int64_t vocab_size, bool spm) {
  std::map<int64_t, bool> added;  // id -> special
  if (field(pipeline, "added_tokens").is_array()) {
    for (const json& a : field(pipeline, "added_tokens")) {
      added[json_int_or(a, "id", -1, kWhere)] =
          json_bool_or(a, "special", false, kWhere);
    }
  }
  Vocabulary v;
  for (int64_t id = 0; id < vocab_size; ++id) {
    std::string token;
    int64_t type = kNormal;
    try {
      token = tok.id_to_token(static_cast<text::TokenId>(id));
    } catch (const c10::Error&) {
      token = "[PAD" + std::to_string(id) + "]";
      type = kUnused;
    }
    if (type != kUnused) {
      if (spm && tok.unk_id() && *tok.unk_id() == id) {
        type = kUnknown;  // as sentencepiece types it (LlamaHfVocab: CONTROL)
      } else if (auto it = added.find(id); it != added.end()) {
        type = it->second ? kControl : kUserDefined;
      } else if (spm && is_byte_token(token)) {
        type = kByte;
      }
    }
    v.tokens.push_back(std::move(token));
    v.types.push_back(type);
  }
  if (spm) {
    // Score -(rank + 1) of the first merge that makes a token.
    v.scores.assign(static_cast<size_t>(vocab_size), 0.0f);
    std::vector<bool> set(static_cast<size_t>(vocab_size), false);
    const auto merges = tok.merges();
    for (size_t rank = 0; rank < merges.size(); ++rank) {
      const auto id = tok.token_to_id(merges[rank].first + merges[rank].second);
      if (!id || *id < 0 || *id >= vocab_size) continue;
      const auto i = static_cast<size_t>(*id);
      if (set[i]) continue;
      set[i] = true;
      v.scores[i] = -static_cast<float>(rank + 1);
    }
  }
  return v;
}

void add_special_ids(const text::Tokenizer& tok, int64_t vocab_size,
                     io::GgufMetadata& m) {
  const auto add_id = [&](const char* key, std::optional<text::TokenId> id) {
    if (id && *id >= 0 && *id < vocab_size) {
      m.emplace_back(key, GgufValue::integer(GgufValueType::kUint32, *id));
    }
  };
  add_id("tokenizer.ggml.bos_token_id", tok.bos_id());
  add_id("tokenizer.ggml.eos_token_id", tok.eos_id());
  add_id("tokenizer.ggml.unknown_token_id", tok.unk_id());
  add_id("tokenizer.ggml.padding_token_id", tok.pad_id());
  const auto [prefix, suffix] = tok.special_affixes();
  const auto contains = [](const std::vector<text::TokenId>& ids,
                           std::optional<text::TokenId> id) {
    return id && std::find(ids.begin(), ids.end(), *id) != ids.end();
  };
  m.emplace_back("tokenizer.ggml.add_bos_token",
                 GgufValue::boolean(contains(prefix, tok.bos_id())));
  m.emplace_back("tokenizer.ggml.add_eos_token",
                 GgufValue::boolean(contains(suffix, tok.eos_id())));
}

}  // namespace

io::GgufMetadata gguf_tokenizer_metadata(const text::Tokenizer& tokenizer,
                                         int64_t vocab_size,
                                         const GgufExportOptions& options) {
  LOWMEM_CHECK(vocab_size >= tokenizer.vocab_size(),
               "[interop] GGUF export: the model has ", vocab_size,
               " embedding rows but the tokenizer has ids up to ",
               tokenizer.vocab_size() - 1);
  const json pipeline = parse_json(tokenizer.pipeline_json(),
                                   "[interop] the tokenizer's pipeline");
  const std::string model = tokenizer_model(tokenizer, pipeline);
  const bool spm = model == "llama";
  Vocabulary v = vocabulary(tokenizer, pipeline, vocab_size, spm);
  io::GgufMetadata m;
  m.emplace_back("tokenizer.ggml.model", GgufValue::string(model));
  if (!spm) {
    m.emplace_back("tokenizer.ggml.pre",
                   GgufValue::string(pre_tokenizer_name(pipeline, options)));
  }
  m.emplace_back("tokenizer.ggml.tokens",
                 GgufValue::strings(std::move(v.tokens)));
  if (spm) {
    m.emplace_back("tokenizer.ggml.scores", GgufValue::float32s(v.scores));
  }
  m.emplace_back("tokenizer.ggml.token_type",
                 GgufValue::integers(GgufValueType::kInt32, v.types));
  if (!spm) {
    std::vector<std::string> merges;
    for (const auto& [left, right] : tokenizer.merges()) {
      merges.push_back(left + " " + right);
    }
    m.emplace_back("tokenizer.ggml.merges",
                   GgufValue::strings(std::move(merges)));
  } else {
    m.emplace_back("tokenizer.ggml.add_space_prefix",
                   GgufValue::boolean(adds_space_prefix(pipeline)));
  }
  add_special_ids(tokenizer, vocab_size, m);
  const std::string chat = tokenizer.chat_template();
  if (!chat.empty()) {
    m.emplace_back("tokenizer.chat_template", GgufValue::string(chat));
  }
  return m;
}

}  // namespace lowmem::interop
