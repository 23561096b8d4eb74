// lowmem::text::Tokenizer: loading (tokenizer.json, sentencepiece,
// tokenizer_config.json), encode (the crate's Tokenizer::encode for one
// sequence) and decode (transformers' PreTrainedTokenizerFast._decode).
#include "lowmem/text/tokenizer.h"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <sstream>

#include "../../modules/sentencepiece/lowmem_sentencepiece.h"
#include "bounded.h"
#include "lowmem/core/check.h"
#include "tokenizer_impl.h"
#include "utf8.h"

namespace lowmem::text {

namespace detail {

namespace {

using nlohmann::json;

// Version of lowmem's tokenization: part of every hash, so token caches made
// by an older implementation are not reused after a behavior change.
constexpr const char* kImplementationVersion = "lowmem-text-tokenizer/1";

// A token setting of tokenizer_config.json: a string, an AddedToken object
// ({"content": ...}) or null.
std::string token_setting(const json& cfg, const char* key) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) {
    return "";
  }
  if (it->is_string()) {
    return it->get<std::string>();
  }
  if (it->is_object()) {
    auto c = it->find("content");
    LOWMEM_CHECK(c != it->end() && c->is_string(),
                 "[text] tokenizer_config.json: \"", key,
                 "\" is an object without a string \"content\"");
    return c->get<std::string>();
  }
  LOWMEM_CHECK(false, "[text] tokenizer_config.json: \"", key,
               "\" is neither a string, an object nor null");
  return "";
}

std::optional<bool> bool_setting(const json& cfg, const char* key) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) {
    return std::nullopt;
  }
  LOWMEM_CHECK(it->is_boolean(), "[text] tokenizer_config.json: \"", key,
               "\" is not a boolean");
  return it->get<bool>();
}

// transformers' clean_up_tokenization (tokenization_utils_base.py).
std::string clean_up_tokenization(std::string s) {
  static const std::pair<const char*, const char*> rules[] = {
      {" .", "."},     {" ?", "?"},     {" !", "!"},   {" ,", ","},
      {" ' ", "'"},    {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"},
      {" 've", "'ve"}, {" 're", "'re"}};
  for (const auto& [from, to] : rules) {
    std::string out;
    const std::string_view f(from);
    size_t pos = 0;
    while (true) {
      const size_t hit = s.find(f, pos);
      if (hit == std::string::npos) {
        break;
      }
      out.append(s, pos, hit - pos);
      out.append(to);
      pos = hit + f.size();
    }
    out.append(s, pos, std::string::npos);
    s.swap(out);
  }
  return s;
}

bool is_file(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}
bool is_dir(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace

TokenizerConfig parse_tokenizer_config(const std::string& text,
                                       const TokenizerLimits& limits) {
  TokenizerConfig c;
  c.text = text;
  if (text.empty()) {
    return c;
  }
  JsonLimits json_limits;
  json_limits.max_bytes = static_cast<uint64_t>(limits.max_config_bytes());
  json_limits.max_depth = limits.max_json_depth();
  const json cfg = parse_json(text, "tokenizer_config.json", json_limits);
  LOWMEM_CHECK(cfg.is_object(),
               "[text] tokenizer_config.json is not an object");
  c.bos_token = token_setting(cfg, "bos_token");
  c.eos_token = token_setting(cfg, "eos_token");
  c.pad_token = token_setting(cfg, "pad_token");
  c.unk_token = token_setting(cfg, "unk_token");
  c.add_bos_token = bool_setting(cfg, "add_bos_token");
  c.add_eos_token = bool_setting(cfg, "add_eos_token");
  c.clean_up_tokenization_spaces =
      bool_setting(cfg, "clean_up_tokenization_spaces").value_or(false);
  c.split_special_tokens =
      bool_setting(cfg, "split_special_tokens").value_or(false);
  if (auto it = cfg.find("tokenizer_class");
      it != cfg.end() && it->is_string()) {
    c.tokenizer_class = it->get<std::string>();
  }
  if (auto it = cfg.find("chat_template"); it != cfg.end() && !it->is_null()) {
    if (it->is_string()) {
      c.chat_templates.emplace_back("default", it->get<std::string>());
    } else {
      LOWMEM_CHECK(it->is_array(),
                   "[text] tokenizer_config.json: \"chat_template\" "
                   "is neither a string nor a list");
      for (const json& t : *it) {
        LOWMEM_CHECK(t.is_object() && t.contains("name") &&
                         t.contains("template") && t["name"].is_string() &&
                         t["template"].is_string(),
                     "[text] tokenizer_config.json: a chat_template list entry "
                     "lacks a string \"name\" or \"template\"");
        c.chat_templates.emplace_back(t["name"].get<std::string>(),
                                      t["template"].get<std::string>());
      }
    }
  }
  return c;
}

}  // namespace detail

using detail::AddedToken;
using detail::Piece;
using nlohmann::json;

namespace {

std::string describe_component(const json& j) {
  if (j.is_null()) {
    return "none";
  }
  std::string t = json_string_or(j, "type", "?", "[text] tokenizer.json");
  const char* list = t == "Sequence"
                         ? (j.contains("normalizers")     ? "normalizers"
                            : j.contains("pretokenizers") ? "pretokenizers"
                            : j.contains("decoders")      ? "decoders"
                                                          : "processors")
                         : nullptr;
  if (list != nullptr && j.contains(list) && j[list].is_array()) {
    std::string s = "Sequence[";
    for (size_t i = 0; i < j[list].size(); ++i) {
      s += (i ? "," : "") + describe_component(j[list][i]);
    }
    return s + "]";
  }
  return t;
}

// tokenizer.json without the model's vocabulary and merges.
std::string pipeline_json_of(const json& root) {
  json p = json::object();
  for (const char* key : {"added_tokens", "normalizer", "pre_tokenizer",
                          "post_processor", "decoder"}) {
    p[key] = json_any_or_null(root, key, "[text] tokenizer.json");
  }
  json model = json::object();
  if (auto it = root.find("model"); it != root.end() && it->is_object()) {
    for (auto f = it->begin(); f != it->end(); ++f) {
      if (f.key() != "vocab" && f.key() != "merges") model[f.key()] = f.value();
    }
  }
  p["model"] = model;
  return p.dump();
}

// The BPE model's options (tokenizers' models/bpe/model.rs BpeBuilder).
detail::BpeOptions bpe_options(const json& model) {
  detail::BpeOptions opt;
  auto opt_str = [&](const char* key) -> std::optional<std::string> {
    auto it = model.find(key);
    if (it == model.end() || it->is_null()) {
      return std::nullopt;
    }
    LOWMEM_CHECK(it->is_string(), "[text] tokenizer.json model: \"", key,
                 "\" is not a string");
    return it->get<std::string>();
  };
  auto opt_bool = [&](const char* key) {
    auto it = model.find(key);
    if (it == model.end() || it->is_null()) {
      return false;
    }
    LOWMEM_CHECK(it->is_boolean(), "[text] tokenizer.json model: \"", key,
                 "\" is not a boolean");
    return it->get<bool>();
  };
  opt.unk_token = opt_str("unk_token");
  opt.continuing_subword_prefix = opt_str("continuing_subword_prefix");
  opt.end_of_word_suffix = opt_str("end_of_word_suffix");
  if (opt.continuing_subword_prefix && opt.continuing_subword_prefix->empty()) {
    opt.continuing_subword_prefix.reset();  // "" adds nothing
  }
  if (opt.end_of_word_suffix && opt.end_of_word_suffix->empty()) {
    opt.end_of_word_suffix.reset();
  }
  opt.fuse_unk = opt_bool("fuse_unk");
  opt.byte_fallback = opt_bool("byte_fallback");
  opt.ignore_merges = opt_bool("ignore_merges");
  return opt;
}

// Reads "added_tokens" into m (ids, matchers' inputs, decode forms);
// returns the largest id seen (at least max_id).
int64_t read_added_tokens(Tokenizer::Impl& m, const json& root,
                          const TokenizerLimits& limits, int64_t max_id) {
  if (auto it = root.find("added_tokens"); it != root.end() && !it->is_null()) {
    LOWMEM_CHECK(it->is_array(),
                 "[text] tokenizer.json: \"added_tokens\" is not a list");
    LOWMEM_CHECK(static_cast<int64_t>(it->size()) <= limits.max_added_tokens(),
                 "[text] tokenizer.json: ", it->size(),
                 " added tokens is over the limit of ",
                 limits.max_added_tokens());
    for (const json& a : *it) {
      const char* where = "added_tokens entry";
      AddedToken t;
      const json& content = detail::member(a, "content", where);
      const json& id = detail::member(a, "id", where);
      LOWMEM_CHECK(content.is_string() && id.is_number_integer(),
                   "[text] tokenizer.json: an added token needs a string "
                   "\"content\" and an integer \"id\"");
      t.content = content.get<std::string>();
      detail::validate_utf8(t.content, "an added token");
      LOWMEM_CHECK(
          static_cast<int64_t>(t.content.size()) <= limits.max_token_bytes(),
          "[text] tokenizer.json: added token of ", t.content.size(),
          " bytes is over the limit of ", limits.max_token_bytes());
      const int64_t raw_id = id.get<int64_t>();
      LOWMEM_CHECK(raw_id >= 0 && raw_id < limits.max_vocab(),
                   "[text] tokenizer.json: added token '",
                   detail::quote_for_error(t.content), "' has id ", raw_id,
                   ", outside [0, ", limits.max_vocab(), ")");
      t.id = static_cast<TokenId>(raw_id);
      const char* flags = "[text] tokenizer.json: an added token";
      t.special = json_bool_or(a, "special", false, flags);
      t.single_word = json_bool_or(a, "single_word", false, flags);
      t.lstrip = json_bool_or(a, "lstrip", false, flags);
      t.rstrip = json_bool_or(a, "rstrip", false, flags);
      t.normalized = json_bool_or(a, "normalized", !t.special, flags);
      if (t.content.empty()) {
        continue;  // the crate ignores empty added tokens
      }
      const TokenId in_model = m.bpe->find(t.content);
      LOWMEM_CHECK(in_model < 0 || in_model == t.id,
                   "[text] tokenizer.json: added token '",
                   detail::quote_for_error(t.content), "' has id ", t.id,
                   " but the model's vocabulary gives it id ", in_model);
      if (m.added_by_content.find(t.content) >= 0) {
        continue;  // a repeated entry: the first one stands
      }
      LOWMEM_CHECK(m.added_by_id.count(t.id) == 0, "[text] tokenizer.json: id ",
                   t.id, " is given to two added tokens");
      m.added_by_content.insert(t.content, t.id);
      m.added_by_id[t.id] = static_cast<int>(m.added.size());
      if (t.special) {
        m.special_contents.insert(t.content, t.id);
      }
      std::string decoded = t.content;
      if (t.normalized && m.normalizer) {
        m.normalizer->normalize(decoded);
      }
      m.added_decode.push_back(decoded);
      max_id = std::max<int64_t>(max_id, t.id);
      m.added.push_back(std::move(t));
    }
  }
  return max_id;
}

void build_post_processor(Tokenizer::Impl& m, const json& root) {
  // Post-processor; LlamaTokenizerFast and GemmaTokenizerFast rebuild it from
  // add_bos_token/add_eos_token (transformers' update_post_processor; their
  // defaults True/False).
  m.post = detail::make_post_processor(
      json_any_or_null(root, "post_processor", "[text] tokenizer.json"),
      [&m](const std::string& s) { return m.find(s); });
  const std::string& cls = m.config.tokenizer_class;
  const bool rebuilds =
      cls == "LlamaTokenizer" || cls == "LlamaTokenizerFast" ||
      cls == "GemmaTokenizer" || cls == "GemmaTokenizerFast" ||
      cls == "CodeLlamaTokenizer" || cls == "CodeLlamaTokenizerFast";
  if (rebuilds) {
    const bool add_bos = m.config.add_bos_token.value_or(true);
    const bool add_eos = m.config.add_eos_token.value_or(false);
    detail::PostProcessor pp;
    pp.kind = "TemplateProcessing (from tokenizer_config.json)";
    // The special token's id; tokenizer_config.json's add_<key> needs it.
    const auto special_id = [&m](const std::string& token, const char* key) {
      const auto id = m.find(token);
      LOWMEM_CHECK(!token.empty() && id, "[text] tokenizer_config.json: add_",
                   key, "_token needs its ", key, "_token in the vocabulary");
      return *id;
    };
    if (add_bos) pp.prefix.push_back(special_id(m.config.bos_token, "bos"));
    if (add_eos) pp.suffix.push_back(special_id(m.config.eos_token, "eos"));
    m.post = pp;
  }
  for (TokenId id : m.post.prefix) {
    m.vocab_size = std::max<int64_t>(m.vocab_size, int64_t{id} + 1);
  }
  for (TokenId id : m.post.suffix) {
    m.vocab_size = std::max<int64_t>(m.vocab_size, int64_t{id} + 1);
  }
}

void build_json_pipeline(Tokenizer::Impl& m, detail::LoadedJson loaded,
                         const TokenizerLimits& limits) {
  const json& root = loaded.root;
  const json& model = detail::member(root, "model", "root");
  LOWMEM_CHECK(model.is_object(),
               "[text] tokenizer.json: \"model\" is not an object");
  std::string type =
      json_string_or(model, "type", "", "[text] tokenizer.json model");
  if (type.empty() && loaded.has_merges) {
    type = "BPE";  // older files omit the model type (the crate infers it)
  }
  LOWMEM_CHECK(type == "BPE", "[text] tokenizer.json: model type '",
               detail::quote_for_error(type),
               "' is not supported (supported: BPE; Unigram and WordPiece "
               "models are not implemented)");
  LOWMEM_CHECK(
      loaded.has_vocab && loaded.has_merges,
      "[text] tokenizer.json: the BPE model lacks \"vocab\" or \"merges\"");
  if (auto d = model.find("dropout"); d != model.end() && !d->is_null()) {
    LOWMEM_CHECK(d->is_number() && d->get<double>() == 0.0,
                 "[text] tokenizer.json: BPE dropout ", d->dump(),
                 " is not supported (it makes encoding random)");
  }
  const detail::BpeOptions opt = bpe_options(model);
  for (auto& t : loaded.vocab_tokens) {
    detail::validate_utf8(t, "a tokenizer.json vocabulary entry");
  }
  m.bpe = std::make_unique<detail::Bpe>(std::move(loaded.vocab_tokens),
                                        std::move(loaded.vocab_ids),
                                        loaded.merges, opt, limits);
  loaded.merges.clear();
  loaded.merges.shrink_to_fit();

  m.normalizer = detail::make_normalizer(
      json_any_or_null(root, "normalizer", "[text] tokenizer.json"));
  m.pre_tokenizer = detail::make_pre_tokenizer(
      json_any_or_null(root, "pre_tokenizer", "[text] tokenizer.json"));
  m.decoder = detail::make_decoder(
      json_any_or_null(root, "decoder", "[text] tokenizer.json"));

  // Added tokens (tokenizer/added_vocabulary.rs).
  int64_t max_id =
      read_added_tokens(m, root, limits, m.bpe->max_id_plus_one() - 1);
  std::vector<std::pair<std::string, int>> raw, normalized;
  for (size_t i = 0; i < m.added.size(); ++i) {
    const AddedToken& t = m.added[i];
    if (t.normalized) {
      normalized.emplace_back(m.added_decode[i], static_cast<int>(i));
    } else {
      raw.emplace_back(t.content, static_cast<int>(i));
    }
  }
  m.raw_matcher.build(raw);
  m.normalized_matcher.build(normalized);
  m.vocab_size = max_id + 1;

  build_post_processor(m, root);

  std::ostringstream s;
  s << "BPE";
  if (opt.byte_fallback) s << " (byte fallback)";
  s << ", " << m.bpe->vocab_entries() << " tokens + " << m.added.size()
    << " added, " << m.bpe->merge_count() << " merges; normalizer "
    << describe_component(
           json_any_or_null(root, "normalizer", "[text] tokenizer.json"))
    << ", pre-tokenizer "
    << describe_component(
           json_any_or_null(root, "pre_tokenizer", "[text] tokenizer.json"))
    << ", decoder "
    << describe_component(
           json_any_or_null(root, "decoder", "[text] tokenizer.json"));
  m.summary = s.str();
  m.pipeline_json = pipeline_json_of(root);
}

void build_sentencepiece(Tokenizer::Impl& m, const std::string& bytes) {
  m.sp = std::make_unique<detail::SentencePiece>(bytes);
  const int n = m.sp->size();
  m.vocab_size = n;
  m.sp_special.assign(static_cast<size_t>(n), false);
  std::vector<std::pair<std::string, int>> patterns;
  for (int i = 0; i < n; ++i) {
    if (m.sp->type(i) & (LOWMEM_SPM_CONTROL | LOWMEM_SPM_UNKNOWN)) {
      m.sp_special[static_cast<size_t>(i)] = true;
      AddedToken t;
      t.content = m.sp->piece(i);
      t.id = i;
      t.special = true;
      t.normalized = false;
      if (t.content.empty()) {
        continue;
      }
      patterns.emplace_back(t.content, static_cast<int>(m.added.size()));
      m.added_by_content.insert(t.content, t.id);
      m.special_contents.insert(t.content, t.id);
      m.added_by_id[t.id] = static_cast<int>(m.added.size());
      m.added_decode.push_back(t.content);
      m.added.push_back(t);
    }
  }
  m.raw_matcher.build(patterns);
  // LlamaTokenizer's defaults: BOS added, EOS not (tokenization_llama.py).
  const bool add_bos = m.config.add_bos_token.value_or(true);
  const bool add_eos = m.config.add_eos_token.value_or(false);
  if (add_bos && m.sp->bos >= 0) {
    m.post.prefix.push_back(m.sp->bos);
  }
  if (add_eos && m.sp->eos >= 0) {
    m.post.suffix.push_back(m.sp->eos);
  }
  m.post.kind = "sentencepiece";
  std::ostringstream s;
  s << "sentencepiece, " << n << " pieces";
  m.summary = s.str();
}

void finish(Tokenizer::Impl& m, const std::string& model_bytes) {
  auto resolve = [&m](const std::string& tok, std::optional<TokenId>& out,
                      const char* what) {
    if (tok.empty()) {
      return;
    }
    out = m.find(tok);
    LOWMEM_CHECK(out.has_value(), "[text] tokenizer_config.json: ", what, " '",
                 detail::quote_for_error(tok), "' is not in the vocabulary");
  };
  resolve(m.config.bos_token, m.bos, "bos_token");
  resolve(m.config.eos_token, m.eos, "eos_token");
  resolve(m.config.pad_token, m.pad, "pad_token");
  resolve(m.config.unk_token, m.unk, "unk_token");
  if (m.sp) {
    auto from_sp = [](int id) -> std::optional<TokenId> {
      return id >= 0 ? std::optional<TokenId>(id) : std::nullopt;
    };
    if (!m.bos) m.bos = from_sp(m.sp->bos);
    if (!m.eos) m.eos = from_sp(m.sp->eos);
    if (!m.pad) m.pad = from_sp(m.sp->pad);
    if (!m.unk) m.unk = from_sp(m.sp->unk);
  } else if (!m.unk && m.bpe->options().unk_token) {
    m.unk = m.find(*m.bpe->options().unk_token);
  }
  text::Sha256 h;
  h.update(detail::kImplementationVersion);
  h.update(std::string(1, '\0'));
  h.update(m.kind);
  h.update(std::string(1, '\0'));
  h.update(text::sha256_hex(model_bytes));
  h.update(text::sha256_hex(m.config.text));
  m.hash = h.hex();
}

}  // namespace

// ------------------------------------------------------------ Impl

std::optional<TokenId> Tokenizer::Impl::find(std::string_view token) const {
  const TokenId a = added_by_content.find(token);
  if (a >= 0) {
    return a;
  }
  if (bpe) {
    const TokenId id = bpe->find(token);
    return id >= 0 ? std::optional<TokenId>(id) : std::nullopt;
  }
  if (sp) {
    const int id = sp->find(token);
    return id >= 0 ? std::optional<TokenId>(id) : std::nullopt;
  }
  return std::nullopt;
}

const std::string* Tokenizer::Impl::token(TokenId id) const {
  auto it = added_by_id.find(id);
  if (it != added_by_id.end()) {
    return &added_decode[static_cast<size_t>(it->second)];
  }
  if (bpe) {
    return bpe->token(id);
  }
  if (sp && id >= 0 && id < sp->size()) {
    return &sp->piece(id);
  }
  return nullptr;
}

void Tokenizer::Impl::encode_json(std::string_view text,
                                  std::vector<TokenId>& out,
                                  Spans* offsets) const {
  thread_local std::vector<detail::AddedMatcher::Split> outer, inner;
  thread_local std::vector<Piece> pieces;
  thread_local std::vector<std::pair<uint32_t, uint32_t>> spans;
  const bool track = offsets != nullptr;
  const bool skip_special = config.split_special_tokens;
  raw_matcher.split(text, added, skip_special, outer);
  // Copy: `inner` is reused below while `outer` is still being read.
  const std::vector<detail::AddedMatcher::Split> sections = outer;
  detail::Offsets o;
  for (const auto& sec : sections) {
    if (sec.token >= 0) {
      out.push_back(added[static_cast<size_t>(sec.token)].id);
      if (track) offsets->emplace_back(sec.begin, sec.end);
      continue;
    }
    std::string normalized(text.substr(sec.begin, sec.end - sec.begin));
    if (normalized.empty()) {
      continue;
    }
    if (track) {
      detail::identity_offsets(normalized, static_cast<uint32_t>(sec.begin), o);
    }
    if (normalizer) {
      normalizer->normalize(normalized, track ? &o : nullptr);
    }
    normalized_matcher.split(normalized, added, skip_special, inner);
    for (const auto& sub : inner) {
      if (sub.token >= 0) {
        out.push_back(added[static_cast<size_t>(sub.token)].id);
        if (track) {
          const auto r = detail::span_of(o, sub.begin, sub.end);
          offsets->emplace_back(r.first, r.second);
        }
        continue;
      }
      if (sub.end == sub.begin) {
        continue;
      }
      pieces.clear();
      Piece first{normalized.substr(sub.begin, sub.end - sub.begin),
                  sec.begin == 0 && sub.begin == 0,
                  false,
                  track,
                  {}};
      if (track) {
        first.offs.b.assign(
            o.b.begin() + static_cast<std::ptrdiff_t>(sub.begin),
            o.b.begin() + static_cast<std::ptrdiff_t>(sub.end));
        first.offs.e.assign(
            o.e.begin() + static_cast<std::ptrdiff_t>(sub.begin),
            o.e.begin() + static_cast<std::ptrdiff_t>(sub.end));
      }
      pieces.push_back(std::move(first));
      if (pre_tokenizer) {
        pre_tokenizer->apply(pieces, true);
      }
      for (const Piece& p : pieces) {
        if (!track) {
          bpe->tokenize(p, out);
          continue;
        }
        spans.clear();
        bpe->tokenize(p, out, &spans);
        for (auto [b, e] : spans) {
          const auto r = detail::span_of(p.offs, b, e);
          offsets->emplace_back(r.first, r.second);
        }
      }
    }
  }
}

void Tokenizer::Impl::encode_sp(std::string_view text,
                                std::vector<TokenId>& out,
                                Spans* offsets) const {
  thread_local std::vector<detail::AddedMatcher::Split> sections;
  raw_matcher.split(text, added, config.split_special_tokens, sections);
  for (const auto& sec : sections) {
    if (sec.token >= 0) {
      out.push_back(added[static_cast<size_t>(sec.token)].id);
      if (offsets != nullptr) offsets->emplace_back(sec.begin, sec.end);
      continue;
    }
    if (sec.end == sec.begin) {
      continue;
    }
    const size_t before = offsets != nullptr ? offsets->size() : 0;
    sp->encode(text.substr(sec.begin, sec.end - sec.begin), out, offsets);
    if (offsets != nullptr) {
      for (size_t k = before; k < offsets->size(); ++k) {
        (*offsets)[k].first += sec.begin;
        (*offsets)[k].second += sec.begin;
      }
    }
  }
}

void Tokenizer::Impl::encode(std::string_view text, bool add_special,
                             std::vector<TokenId>& out, Spans* offsets) const {
  detail::validate_utf8(text, "text to encode");
  if (add_special) {
    out.insert(out.end(), post.prefix.begin(), post.prefix.end());
    if (offsets != nullptr)
      offsets->resize(offsets->size() + post.prefix.size(), {0, 0});
  }
  if (sp) {
    encode_sp(text, out, offsets);
  } else {
    encode_json(text, out, offsets);
  }
  if (add_special) {
    out.insert(out.end(), post.suffix.begin(), post.suffix.end());
    if (offsets != nullptr) {
      offsets->resize(offsets->size() + post.suffix.size(),
                      {text.size(), text.size()});
    }
  }
}

// ------------------------------------------------------------ Tokenizer

Tokenizer::Tokenizer(std::shared_ptr<const Impl> impl)
    : impl_(std::move(impl)) {}

std::string resolve_tokenizer_path(const std::string& path) {
  if (detail::is_dir(path)) {
    for (const char* name : {"tokenizer.json", "tokenizer.model"}) {
      const std::string p = (std::filesystem::path(path) / name).string();
      if (detail::is_file(p)) {
        return p;
      }
    }
    LOWMEM_CHECK(false, "[text] folder '", detail::quote_for_error(path),
                 "' holds neither tokenizer.json nor tokenizer.model");
  }
  LOWMEM_CHECK(detail::is_file(path), "[text] tokenizer '",
               detail::quote_for_error(path), "' does not exist");
  return path;
}

Tokenizer Tokenizer::from_file(const std::string& path,
                               const TokenizerLimits& limits) {
  const std::string file = resolve_tokenizer_path(path);
  auto m = std::make_shared<Impl>();
  m->path = file;
  const std::string config_path =
      (std::filesystem::path(file).parent_path() / "tokenizer_config.json")
          .string();
  if (detail::is_file(config_path)) {
    m->config = detail::parse_tokenizer_config(
        read_file_limited(config_path,
                          static_cast<uint64_t>(limits.max_config_bytes()),
                          "[text] tokenizer_config.json"),
        limits);
  }
  const std::string bytes =
      read_file_limited(file, static_cast<uint64_t>(limits.max_file_bytes()),
                        "[text] tokenizer file");
  size_t first = bytes.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && bytes[first] == '{') {
    m->kind = "tokenizer.json";
    build_json_pipeline(*m, detail::parse_tokenizer_json(bytes, limits),
                        limits);
  } else {
    m->kind = "sentencepiece";
    build_sentencepiece(*m, bytes);
  }
  finish(*m, bytes);
  return Tokenizer(std::move(m));
}

Tokenizer Tokenizer::from_json(const std::string& tokenizer_json,
                               const std::string& config_json,
                               const TokenizerLimits& limits) {
  auto m = std::make_shared<Impl>();
  m->kind = "tokenizer.json";
  m->config = detail::parse_tokenizer_config(config_json, limits);
  build_json_pipeline(*m, detail::parse_tokenizer_json(tokenizer_json, limits),
                      limits);
  finish(*m, tokenizer_json);
  return Tokenizer(std::move(m));
}

std::vector<TokenId> Tokenizer::encode(std::string_view text,
                                       bool add_special_tokens) const {
  std::vector<TokenId> out;
  impl_->encode(text, add_special_tokens, out);
  return out;
}

void Tokenizer::encode_into(std::string_view text, bool add_special_tokens,
                            std::vector<TokenId>& out) const {
  impl_->encode(text, add_special_tokens, out);
}

Encoding Tokenizer::encode_with_pieces(std::string_view text,
                                       bool add_special_tokens) const {
  Encoding e;
  impl_->encode(text, add_special_tokens, e.ids, &e.offsets);
  e.pieces.reserve(e.ids.size());
  for (TokenId id : e.ids) {
    e.pieces.push_back(id_to_token(id));
  }
  return e;
}

std::string Tokenizer::decode(const std::vector<TokenId>& ids,
                              bool skip_special_tokens) const {
  const Impl& m = *impl_;
  for (TokenId id : ids) {
    LOWMEM_CHECK(m.token(id) != nullptr, "[text] decode: token id ", id,
                 " is not in the vocabulary (size ", m.vocab_size, ")");
  }
  if (m.sp) {
    // sentencepiece decodes runs of ordinary and unknown pieces; control
    // pieces appear as their text; skip_special_tokens drops both kinds.
    std::string out;
    std::vector<int> run;
    auto flush = [&]() {
      if (run.empty()) return;
      out += m.sp->decode(run);
      run.clear();
    };
    for (TokenId id : ids) {
      if (!m.sp_special[static_cast<size_t>(id)]) {
        run.push_back(id);
      } else if (skip_special_tokens) {
        continue;
      } else if (m.sp->type(id) & LOWMEM_SPM_UNKNOWN) {
        run.push_back(id);  // sentencepiece renders it (" \u2047 ")
      } else {
        flush();
        out += m.sp->piece(id);
      }
    }
    flush();
    return m.config.clean_up_tokenization_spaces
               ? detail::clean_up_tokenization(out)
               : out;
  }
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (TokenId id : ids) {
    const std::string* t = m.token(id);
    if (skip_special_tokens && m.special_contents.find(*t) >= 0) {
      continue;
    }
    tokens.push_back(*t);
  }
  std::string out;
  if (m.decoder) {
    m.decoder->decode_chain(tokens);
    for (const auto& t : tokens) out += t;
  } else {
    for (size_t i = 0; i < tokens.size(); ++i) {
      out += (i ? " " : "") + tokens[i];
    }
  }
  return m.config.clean_up_tokenization_spaces
             ? detail::clean_up_tokenization(out)
             : out;
}

std::optional<TokenId> Tokenizer::token_to_id(std::string_view token) const {
  return impl_->find(token);
}

std::string Tokenizer::id_to_token(TokenId id) const {
  const std::string* t = impl_->token(id);
  LOWMEM_CHECK(t != nullptr, "[text] token id ", id,
               " is not in the vocabulary (size ", impl_->vocab_size, ")");
  return *t;
}

int64_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

std::vector<std::pair<std::string, std::string>> Tokenizer::merges() const {
  return impl_->bpe ? impl_->bpe->merges()
                    : std::vector<std::pair<std::string, std::string>>{};
}

const std::string& Tokenizer::kind() const { return impl_->kind; }
std::optional<TokenId> Tokenizer::bos_id() const { return impl_->bos; }
std::optional<TokenId> Tokenizer::eos_id() const { return impl_->eos; }
std::optional<TokenId> Tokenizer::pad_id() const { return impl_->pad; }
std::optional<TokenId> Tokenizer::unk_id() const { return impl_->unk; }
const std::string& Tokenizer::bos_token() const {
  return impl_->config.bos_token;
}
const std::string& Tokenizer::eos_token() const {
  return impl_->config.eos_token;
}
const std::string& Tokenizer::pad_token() const {
  return impl_->config.pad_token;
}
const std::string& Tokenizer::unk_token() const {
  return impl_->config.unk_token;
}

bool Tokenizer::is_special(TokenId id) const {
  const Impl& m = *impl_;
  if (m.sp) {
    return id >= 0 && id < m.vocab_size &&
           m.sp_special[static_cast<size_t>(id)];
  }
  const std::string* t = m.token(id);
  return t != nullptr && m.special_contents.find(*t) >= 0;
}

std::pair<std::vector<TokenId>, std::vector<TokenId>>
Tokenizer::special_affixes() const {
  return {impl_->post.prefix, impl_->post.suffix};
}

std::string Tokenizer::chat_template(const std::string& name) const {
  for (const auto& [n, t] : impl_->config.chat_templates) {
    if (n == name) return t;
  }
  return "";
}

const std::string& Tokenizer::config_json() const { return impl_->config.text; }
const std::string& Tokenizer::pipeline_json() const {
  return impl_->pipeline_json;
}
const std::string& Tokenizer::hash() const { return impl_->hash; }
const std::string& Tokenizer::path() const { return impl_->path; }

std::string Tokenizer::describe() const {
  std::ostringstream s;
  s << (impl_->path.empty() ? impl_->kind : impl_->path) << ": "
    << impl_->summary << "; " << impl_->vocab_size << " ids";
  if (impl_->bos) s << ", bos " << *impl_->bos;
  if (impl_->eos) s << ", eos " << *impl_->eos;
  return s.str();
}

}  // namespace lowmem::text
