#include "lowmem/data/jsonl.h"

#include <ATen/ATen.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>

#include "lowmem/core/check.h"
#include "lowmem/core/input.h"
#include "lowmem/core/json.h"
#include "lowmem/data/text.h"
#include "lowmem/io/atomic_file.h"
#include "lowmem/text/chat_template.h"

namespace lowmem::data {

namespace fs = std::filesystem;
using nlohmann::ordered_json;

namespace {

// Bumped whenever tokenization or the sidecar's content changes meaning.
constexpr const char* kCacheVersion = "lowmem-jsonl-samples/2\n";
constexpr int64_t kMaxTemplateBytes = int64_t{1} << 20;

const std::set<std::string>& known_roles() {
  static const std::set<std::string> roles = {"system", "user", "assistant",
                                              "tool"};
  return roles;
}

bool is_txt(const std::string& path) {
  return fs::path(path).extension() == ".txt";
}

bool overlaps(const std::pair<size_t, size_t>& token, size_t begin,
              size_t end) {
  return token.first < end && token.second > begin;
}

// The message of a c10::Error without its "[data] " tag and backtrace.
std::string message_of(const c10::Error& e) {
  std::string m = e.what_without_backtrace();
  const std::string tag = "[data] ";
  if (m.compare(0, tag.size(), tag) == 0) m.erase(0, tag.size());
  return m;
}

const std::string& string_field(const ordered_json& row, const char* key) {
  const auto& v = row.at(key);
  LOWMEM_CHECK(
      v.is_string(), "[data] \"", key, "\" must be a string, got ",
      clip(v.dump(-1, ' ', false, ordered_json::error_handler_t::replace)));
  return v.get_ref<const std::string&>();
}

void append_eos(const text::Tokenizer& tok, TokenizedRow& r) {
  const auto eos = tok.eos_id();
  if (eos && (r.ids.empty() || r.ids.back() != *eos)) {
    r.ids.push_back(*eos);
    r.mask.push_back(1);
  }
}

TokenizedRow text_sample(const std::string& text, const text::Tokenizer& tok) {
  TokenizedRow r;
  r.format = "text";
  r.ids = tok.encode(text, true);
  r.mask.assign(r.ids.size(), 1);
  const size_t prefix = tok.special_affixes().first.size();
  for (size_t i = 0; i < prefix && i < r.mask.size(); ++i) r.mask[i] = 0;
  append_eos(tok, r);
  return r;
}

TokenizedRow prompt_completion_sample(const std::string& prompt,
                                      const std::string& completion,
                                      const text::Tokenizer& tok) {
  TokenizedRow r;
  r.format = "prompt-completion";
  const std::string full = prompt + completion;
  const text::Encoding e = tok.encode_with_pieces(full, true);
  const auto [prefix, suffix] = tok.special_affixes();
  const size_t n = e.ids.size();
  r.ids = e.ids;
  r.mask.assign(n, 0);
  for (size_t i = 0; i < n; ++i) {
    if (i < prefix.size()) continue;           // BOS, ...: never trained
    const bool tail = i + suffix.size() >= n;  // EOS a post-processor adds
    r.mask[i] = tail || overlaps(e.offsets[i], prompt.size(), full.size());
  }
  append_eos(tok, r);
  return r;
}

// Each message an object with string "role" (a known one) and "content";
// `field` names the row's field in errors ("message 1: ..." for "messages",
// "prompt message 1: ..." for the others).
void check_message_list(const ordered_json& messages,
                        const std::string& field) {
  LOWMEM_CHECK(messages.is_array(), "[data] \"", field,
               "\" must be an array of {\"role\", \"content\"} objects");
  const std::string what = field == "messages" ? "" : field + " ";
  for (size_t i = 0; i < messages.size(); ++i) {
    const auto& m = messages[i];
    LOWMEM_CHECK(m.is_object() && m.contains("role") && m.contains("content"),
                 "[data] ", what, "message ", i,
                 " must be an object with \"role\" and \"content\"");
    LOWMEM_CHECK(m["role"].is_string() && m["content"].is_string(), "[data] ",
                 what, "message ", i,
                 ": \"role\" and \"content\" must be strings");
    const auto& role = m["role"].get_ref<const std::string&>();
    LOWMEM_CHECK(known_roles().count(role) != 0, "[data] ", what, "message ", i,
                 ": unknown role ", quote(role),
                 " (system, user, assistant or tool)");
  }
}

// Before any rendering: the mask's cost grows with the square of this.
void check_message_count(size_t n, int64_t max_messages) {
  LOWMEM_CHECK(n <= static_cast<uint64_t>(std::max<int64_t>(max_messages, 0)),
               "[data] the conversation has ", n,
               " messages, more than max_messages (", max_messages, ")");
}

void check_messages(const ordered_json& messages) {
  check_message_list(messages, "messages");
  bool assistant = false;
  for (const auto& m : messages)
    assistant = assistant || m["role"] == "assistant";
  LOWMEM_CHECK(assistant, "[data] no assistant message (nothing to train on)");
}

TokenizedRow chat_sample(const ordered_json& messages,
                         const text::Tokenizer& tok,
                         const text::ChatTemplate* chat, int64_t max_messages) {
  check_messages(messages);
  check_message_count(messages.size(), max_messages);
  LOWMEM_CHECK(chat != nullptr,
               "[data] a \"messages\" row needs a chat template, and the "
               "tokenizer has none (set the chat_template option)");
  const auto o =
      text::ChatOptions().bos_token(tok.bos_token()).eos_token(tok.eos_token());
  const text::RenderedChat rendered =
      text::render_chat_with_spans(*chat, messages, o);
  const text::Encoding e = tok.encode_with_pieces(rendered.text, false);
  TokenizedRow r;
  r.format = "chat";
  r.ids = e.ids;
  r.mask.assign(e.ids.size(), 0);
  for (size_t i = 0; i < e.ids.size(); ++i) {
    for (const auto& s : rendered.spans) {
      if (overlaps(e.offsets[i], s.begin, s.end)) r.mask[i] = 1;
    }
  }
  return r;
}

// TRL's conversational prompt-completion (sft_trainer.py tokenize): the
// tokens of apply_chat_template(prompt + completion); trained are those after
// apply_chat_template(prompt, add_generation_prompt=True), here the tokens
// whose bytes reach past that rendering, which the full one must start with.
TokenizedRow chat_prompt_completion_sample(const ordered_json& prompt,
                                           const ordered_json& completion,
                                           const text::Tokenizer& tok,
                                           const text::ChatTemplate* chat,
                                           int64_t max_messages) {
  check_message_list(prompt, "prompt");
  check_message_list(completion, "completion");
  check_message_count(prompt.size() + completion.size(), max_messages);
  LOWMEM_CHECK(!completion.empty(),
               "[data] \"completion\" has no message (nothing to train on)");
  LOWMEM_CHECK(chat != nullptr,
               "[data] a conversational prompt-completion row needs a chat "
               "template, and the tokenizer has none (set the chat_template "
               "option)");
  ordered_json all = prompt;
  for (const auto& m : completion) all.push_back(m);
  const auto o =
      text::ChatOptions().bos_token(tok.bos_token()).eos_token(tok.eos_token());
  const std::string head = text::render_chat(
      *chat, prompt, text::ChatOptions(o).add_generation_prompt(true));
  const std::string full = text::render_chat(*chat, all, o);
  LOWMEM_CHECK(
      full.size() > head.size() && full.compare(0, head.size(), head) == 0,
      "[data] the chat template renders prompt + completion as text "
      "that does not extend its rendering of the prompt with "
      "add_generation_prompt (",
      clip(head, 200), "), so the completion's tokens are unknown");
  const text::Encoding e = tok.encode_with_pieces(full, false);
  TokenizedRow r;
  r.format = "chat-prompt-completion";
  r.ids = e.ids;
  r.mask.assign(e.ids.size(), 0);
  for (size_t i = 0; i < e.ids.size(); ++i)
    r.mask[i] = overlaps(e.offsets[i], head.size(), full.size());
  return r;
}

std::string keys_of(const ordered_json& row) {
  std::string out;
  for (const auto& item : row.items()) {
    out += (out.empty() ? "" : ", ") + quote(item.key(), 40);
  }
  return out.empty() ? "none" : out;
}

}  // namespace

TokenizedRow tokenize_row(const ordered_json& row,
                          const text::Tokenizer& tokenizer,
                          const text::ChatTemplate* chat,
                          int64_t max_messages) {
  LOWMEM_CHECK(
      row.is_object(), "[data] a row must be a JSON object, got ",
      clip(row.dump(-1, ' ', false, ordered_json::error_handler_t::replace)));
  const bool text = row.contains("text");
  const bool pc = row.contains("prompt") || row.contains("completion");
  const bool chat_row = row.contains("messages");
  LOWMEM_CHECK(text + pc + chat_row == 1,
               "[data] a row needs exactly one of \"text\", \"prompt\" + "
               "\"completion\" or \"messages\"; its keys: ",
               keys_of(row));
  if (text) return text_sample(string_field(row, "text"), tokenizer);
  if (chat_row)
    return chat_sample(row["messages"], tokenizer, chat, max_messages);
  LOWMEM_CHECK(row.contains("prompt") && row.contains("completion"),
               "[data] a prompt-completion row needs both \"prompt\" and "
               "\"completion\"; its keys: ",
               keys_of(row));
  if (row["prompt"].is_array() || row["completion"].is_array())
    return chat_prompt_completion_sample(row["prompt"], row["completion"],
                                         tokenizer, chat, max_messages);
  return prompt_completion_sample(string_field(row, "prompt"),
                                  string_field(row, "completion"), tokenizer);
}

std::shared_ptr<const text::ChatTemplate> load_chat_template(
    const text::Tokenizer& tokenizer, const std::string& source) {
  std::string src;
  if (source.empty()) {
    src = tokenizer.chat_template();
  } else if (fs::path(source).extension() == ".json") {
    const auto config = read_json_file(source);
    const auto it = config.find("chat_template");
    LOWMEM_CHECK(it != config.end(), "[data] ", quote(source),
                 " has no chat_template");
    if (it->is_string()) {
      src = it->get<std::string>();
    } else {
      // transformers' list of named templates: "default", else the first.
      LOWMEM_CHECK(it->is_array() && !it->empty(), "[data] ", quote(source),
                   ": chat_template must be a string or a list of "
                   "{\"name\", \"template\"}");
      for (const auto& t : *it) {
        if (t.is_object() && t.contains("name") && t["name"] == "default" &&
            t.contains("template") && t["template"].is_string())
          src = t["template"].get<std::string>();
      }
      const auto& first = (*it)[0];
      if (src.empty() && first.is_object() && first.contains("template") &&
          first["template"].is_string())
        src = first["template"].get<std::string>();
    }
  } else {
    src = read_file_limited(source, kMaxTemplateBytes, "[data] chat template");
  }
  if (src.empty()) return nullptr;
  return std::make_shared<const text::ChatTemplate>(src);
}

std::vector<std::string> jsonl_input_files(const std::string& path) {
  std::error_code ec;
  LOWMEM_CHECK(fs::exists(path, ec), "[data] ", quote(path), " does not exist");
  if (!fs::is_directory(path, ec)) return {path};
  std::vector<std::string> files;
  for (auto it = fs::recursive_directory_iterator(
           path, fs::directory_options::follow_directory_symlink, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    const auto ext = it->path().extension();
    if (it->is_regular_file(ec) && (ext == ".jsonl" || ext == ".txt"))
      files.push_back(it->path().string());
  }
  LOWMEM_CHECK(!ec, "[data] cannot list ", quote(path), ": ", ec.message());
  std::sort(files.begin(), files.end());
  LOWMEM_CHECK(!files.empty(), "[data] ", quote(path),
               " holds no .jsonl or .txt file");
  return files;
}

namespace {

void check_input_file(const std::string& path, int64_t max_bytes) {
  std::error_code ec;
  LOWMEM_CHECK(fs::is_regular_file(path, ec), "[data] ", quote(path),
               " is not a regular file");
  const auto size = fs::file_size(path, ec);
  LOWMEM_CHECK(!ec, "[data] cannot read ", quote(path), ": ", ec.message());
  LOWMEM_CHECK(size <= static_cast<uintmax_t>(max_bytes), "[data] ",
               quote(path), " has ", size, " bytes, over the limit of ",
               format_limit(static_cast<uint64_t>(max_bytes)),
               " (max_file_bytes)");
}

// Calls fn(line number, line without its '\n' or "\r\n", too long) for every
// line, holding at most max_line bytes of one line.
void for_each_line(
    const std::string& path, int64_t max_line,
    const std::function<void(int64_t, std::string_view, bool)>& fn) {
  std::ifstream in(path, std::ios::binary);
  LOWMEM_CHECK(in.is_open(), "[data] cannot open ", quote(path));
  std::vector<char> buf(size_t{1} << 20);
  std::string line;
  bool too_long = false;
  int64_t number = 1;
  auto emit = [&] {
    std::string_view v(line);
    if (!v.empty() && v.back() == '\r') v.remove_suffix(1);
    fn(number++, v, too_long);
    line.clear();
    too_long = false;
  };
  while (in.read(buf.data(), static_cast<std::streamsize>(buf.size())) ||
         in.gcount() > 0) {
    const size_t got = static_cast<size_t>(in.gcount());
    size_t pos = 0;
    while (pos < got) {
      const void* nl = std::memchr(buf.data() + pos, '\n', got - pos);
      const size_t end =
          nl ? static_cast<size_t>(static_cast<const char*>(nl) - buf.data())
             : got;
      if (!too_long) {
        if (line.size() + (end - pos) > static_cast<size_t>(max_line)) {
          too_long = true;
          std::string().swap(line);
        } else {
          line.append(buf.data() + pos, end - pos);
        }
      }
      pos = end + (nl ? 1 : 0);
      if (nl) emit();
    }
  }
  if (!line.empty() || too_long) emit();
}

std::string cache_key(const std::vector<std::string>& files,
                      const text::Tokenizer& tok,
                      const text::ChatTemplate* chat, const JsonlOptions& o) {
  text::Sha256 h;
  h.update(kCacheVersion);
  h.update(tok.hash());
  h.update("\n" + text::sha256_hex(chat ? chat->source() : "") + "\n");
  h.update("context=" + std::to_string(o.context()) +
           " truncate=" + std::to_string(o.truncate()) +
           " skip=" + std::to_string(o.skip_bad_rows()) +
           " line=" + std::to_string(o.max_line_bytes()) +
           " messages=" + std::to_string(o.max_messages()) + "\n");
  for (const auto& f : files) {
    const text::FileDigest d = text::sha256_file(f);
    h.update(f + '\0' + std::to_string(d.size) + '\0' + d.hex + "\n");
  }
  return h.hex();
}

// Fisher-Yates over [0, n) driven by (stream, i) only.
std::vector<int64_t> permutation(int64_t n, uint64_t stream) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[static_cast<size_t>(i)] = i;
  for (int64_t i = n - 1; i > 0; --i) {
    const uint64_t r = mix64(stream + static_cast<uint64_t>(i));
    const auto j = static_cast<int64_t>(r % static_cast<uint64_t>(i + 1));
    std::swap(p[static_cast<size_t>(i)], p[static_cast<size_t>(j)]);
  }
  return p;
}

// What tokenize_all does with each row, and what it learns.
struct RowSink {
  const JsonlOptions& o;
  const text::Tokenizer& tok;
  const text::ChatTemplate* chat;
  text::TokenFileWriter& writer;
  int64_t& skipped;
  std::map<std::string, int64_t>& by_reason;
  std::string& first_skipped;
  std::map<std::string, int64_t>& formats;

  void bad(const std::string& where, const std::string& reason,
           const std::string& what) {
    LOWMEM_CHECK(o.skip_bad_rows(), "[data] ", where, ": ", what,
                 " (skip_bad_rows: true skips such rows)");
    ++skipped;
    ++by_reason[reason];
    if (first_skipped.empty()) first_skipped = where + ": " + what;
  }

  void accept(const std::string& where, TokenizedRow r) {
    const auto limit = static_cast<size_t>(o.context() + 1);
    if (r.ids.size() > limit) {
      if (!o.truncate()) {
        bad(where, "longer than the context",
            "the sample has " + std::to_string(r.ids.size()) +
                " tokens, more than context + 1 = " + std::to_string(limit) +
                " (truncate: true cuts it)");
        return;
      }
      r.ids.resize(limit);
      r.mask.resize(limit);
    }
    if (std::find(r.mask.begin() + std::min<size_t>(1, r.mask.size()),
                  r.mask.end(), 1) == r.mask.end()) {
      bad(where, "no trained token",
          "the sample has no trained token after its first");
      return;
    }
    writer.add_document(r.ids.data(), r.ids.size(), r.mask.data());
    ++formats[r.format];
  }

  void row(const std::string& where, std::string_view line, bool too_long) {
    if (too_long) {
      bad(where, "line too long",
          "the line is longer than max_line_bytes (" +
              format_limit(static_cast<uint64_t>(o.max_line_bytes())) + ")");
      return;
    }
    if (line.find_first_not_of(" \t") == std::string_view::npos) return;
    ordered_json j;
    try {
      LOWMEM_CHECK(json_nesting_depth(line, kMaxJsonDepth) <= kMaxJsonDepth,
                   "nesting deeper than ", kMaxJsonDepth);
      j = ordered_json::parse(line);
    } catch (const c10::Error& e) {
      bad(where, "invalid JSON", "invalid JSON: " + message_of(e));
      return;
    } catch (const std::exception& e) {
      bad(where, "invalid JSON", "invalid JSON: " + clip(e.what()));
      return;
    }
    sample(where, [&] { return tokenize_row(j, tok, chat, o.max_messages()); });
  }

  // Accepts what make() returns; its errors are bad rows.
  template <class F>
  void sample(const std::string& where, F&& make) {
    TokenizedRow r;
    try {
      r = make();
    } catch (const c10::Error& e) {
      bad(where, "bad row", message_of(e));
      return;
    }
    accept(where, std::move(r));
  }
};

}  // namespace

JsonlDataset::JsonlDataset(const std::string& path,
                           const text::Tokenizer& tokenizer,
                           JsonlOptions options)
    : path_(path), options_(std::move(options)) {
  LOWMEM_CHECK(options_.context() >= 1, "[data] context must be >= 1, got ",
               options_.context());
  LOWMEM_CHECK(options_.split() >= 0.0 && std::isfinite(options_.split()) &&
                   (options_.split() < 1.0 ||
                    options_.split() == std::floor(options_.split())),
               "[data] split must be a fraction in [0, 1) or a whole count, "
               "got ",
               options_.split());
  LOWMEM_CHECK(options_.max_line_bytes() > 0 && options_.max_file_bytes() > 0,
               "[data] max_line_bytes and max_file_bytes must be > 0");
  LOWMEM_CHECK(options_.max_messages() > 0,
               "[data] max_messages must be > 0, got ",
               options_.max_messages());
  vocab_size_ = tokenizer.vocab_size();
  const auto files = jsonl_input_files(path);
  for (const auto& f : files) check_input_file(f, options_.max_file_bytes());
  const auto chat = load_chat_template(tokenizer, options_.chat_template());
  const std::string key = cache_key(files, tokenizer, chat.get(), options_);
  const std::string dir = options_.cache_dir().empty()
                              ? text::default_token_cache_dir()
                              : options_.cache_dir();
  const std::string cache_path = (fs::path(dir) / (key + ".tokens")).string();
  const std::string meta_path = (fs::path(dir) / (key + ".json")).string();
  if (options_.cache() && fs::exists(cache_path) && fs::exists(meta_path)) {
    try {
      text::TokenFile f = text::TokenFile::open(cache_path);
      const auto meta = read_json_file(meta_path);
      if (f.key() == key && f.mask() != nullptr &&
          f.vocab_size() == vocab_size_ && meta.at("key") == key) {
        skipped_ = meta.at("skipped").get<int64_t>();
        skipped_by_reason_ =
            meta.at("by_reason").get<std::map<std::string, int64_t>>();
        first_skipped_ = meta.at("first_skipped").get<std::string>();
        formats_ = meta.at("formats").get<std::map<std::string, int64_t>>();
        file_ = std::move(f);
        from_cache_ = true;
      }
    } catch (const std::exception&) {
      from_cache_ = false;  // a damaged entry: tokenized again below
    }
  }
  if (!from_cache_) tokenize_all(files, tokenizer, chat.get(), key, cache_path);
  LOWMEM_CHECK(size() > 0, "[data] ", quote(path), " holds no usable sample",
               skipped_ > 0
                   ? " (" + std::to_string(skipped_) +
                         " bad rows skipped; first: " + first_skipped_ + ")"
                   : std::string());
  split();
}

void JsonlDataset::tokenize_all(const std::vector<std::string>& files,
                                const text::Tokenizer& tokenizer,
                                const text::ChatTemplate* chat,
                                const std::string& key,
                                const std::string& cache_path) {
  std::string out = cache_path;
  if (options_.cache()) {
    std::error_code ec;
    fs::create_directories(fs::path(cache_path).parent_path(), ec);
    LOWMEM_CHECK(!ec, "[data] cannot create the token cache folder ",
                 quote(fs::path(cache_path).parent_path().string()), ": ",
                 ec.message());
  } else {
    out = (fs::temp_directory_path() /
           ("lowmem_jsonl_" + key.substr(0, 16) + "_" +
            std::to_string(::getpid()) + ".tokens"))
              .string();
  }
  text::TokenFileWriter writer(out, key, vocab_size_, /*with_mask=*/true);
  RowSink sink{options_, tokenizer,          chat,           writer,
               skipped_, skipped_by_reason_, first_skipped_, formats_};
  for (const auto& f : files) {
    if (is_txt(f)) {
      const std::string text =
          read_file_limited(f, static_cast<uint64_t>(options_.max_file_bytes()),
                            "[data] text file");
      sink.sample(f, [&] { return text_sample(text, tokenizer); });
      continue;
    }
    for_each_line(f, options_.max_line_bytes(),
                  [&](int64_t line, std::string_view text, bool too_long) {
                    sink.row(f + ":" + std::to_string(line), text, too_long);
                  });
  }
  if (options_.cache()) {
    ordered_json meta = {{"key", key},
                         {"skipped", skipped_},
                         {"by_reason", skipped_by_reason_},
                         {"first_skipped", first_skipped_},
                         {"formats", formats_}};
    io::atomic_write_file(
        (fs::path(cache_path).parent_path() / (key + ".json")).string(),
        meta.dump(1) + "\n");
  }
  file_ = writer.finish();
  if (!options_.cache()) fs::remove(out);  // the mapping stays valid
}

void JsonlDataset::split() {
  const int64_t n = size();
  const double s = options_.split();
  const int64_t n_val = s == 0.0
                            ? 0
                            : (s < 1.0 ? static_cast<int64_t>(std::ceil(s * n))
                                       : static_cast<int64_t>(s));
  LOWMEM_CHECK(n_val < n, "[data] split ", s, " leaves no training sample (", n,
               " samples, ", n_val, " for validation)");
  const auto p = permutation(n, mix64(options_.seed() ^ 0x73706c6974ULL));
  validation_.assign(p.begin(), p.begin() + n_val);
  train_.assign(p.begin() + n_val, p.end());
  std::sort(train_.begin(), train_.end());
}

int64_t JsonlDataset::size() const { return file_.documents(); }

std::pair<const int32_t*, int64_t> JsonlDataset::tokens(int64_t i) const {
  const auto [b, e] = file_.document(i);
  return {file_.tokens() + b, e - b};
}

const uint8_t* JsonlDataset::mask(int64_t i) const {
  return file_.mask() + file_.document(i).first;
}

int64_t JsonlDataset::total_tokens() const { return file_.size(); }

int64_t JsonlDataset::trained_tokens() const {
  int64_t n = 0;
  for (int64_t d = 0; d < size(); ++d) {
    const auto [b, e] = file_.document(d);
    for (int64_t i = b + 1; i < e; ++i) n += file_.mask()[i];
  }
  return n;
}

std::string JsonlDataset::describe() const {
  std::ostringstream s;
  s << path_ << ": " << size() << " samples (";
  bool first = true;
  for (const auto& [format, count] : formats_) {
    s << (first ? "" : ", ") << count << " " << format;
    first = false;
  }
  s << "), " << total_tokens() << " tokens, " << trained_tokens()
    << " trained; " << train_.size() << " train / " << validation_.size()
    << " validation";
  if (skipped_ > 0) {
    s << "; " << skipped_ << " bad rows skipped (";
    first = true;
    for (const auto& [reason, count] : skipped_by_reason_) {
      s << (first ? "" : ", ") << reason << ": " << count;
      first = false;
    }
    s << "; first: " << first_skipped_ << ")";
  }
  if (from_cache_) s << " [token cache]";
  return s.str();
}

// ---------------------------------------------------------------- batches

JsonlBatches::JsonlBatches(std::shared_ptr<const JsonlDataset> dataset,
                           std::vector<int64_t> samples,
                           JsonlBatchOptions options, std::string name)
    : dataset_(std::move(dataset)),
      samples_(std::move(samples)),
      options_(std::move(options)),
      name_(std::move(name)) {
  LOWMEM_CHECK(dataset_ != nullptr, "[data] jsonl batches need a dataset");
  LOWMEM_CHECK(!samples_.empty(), "[data] ", name_, ": no samples");
  LOWMEM_CHECK(options_.batch_size() >= 1,
               "[data] batch_size must be >= 1, "
               "got ",
               options_.batch_size());
  LOWMEM_CHECK(options_.context() >= 1 &&
                   options_.context() <= dataset_->options().context(),
               "[data] ", name_, ": context ", options_.context(),
               " must be in [1, the dataset's context ",
               dataset_->options().context(), "]");
  for (const int64_t i : samples_) {
    LOWMEM_CHECK(i >= 0 && i < dataset_->size(), "[data] ", name_, ": sample ",
                 i, " is not in the dataset");
    LOWMEM_CHECK(dataset_->tokens(i).second - 1 <= options_.context(),
                 "[data] ", name_, ": sample ", i, " has ",
                 dataset_->tokens(i).second, " tokens, more than context + 1");
  }
}

const JsonlBatches::Epoch& JsonlBatches::epoch(int64_t e) const {
  if (e == cached_epoch_) return cached_;
  Epoch ep;
  if (options_.shuffle()) {
    const auto p =
        permutation(static_cast<int64_t>(samples_.size()),
                    mix64(options_.seed() ^
                          mix64(static_cast<uint64_t>(e) ^ 0x6a736f6e6cULL)));
    ep.order.reserve(p.size());
    for (const int64_t k : p)
      ep.order.push_back(samples_[static_cast<size_t>(k)]);
  } else {
    ep.order = samples_;
  }
  int64_t used = 0;
  for (size_t k = 0; k < ep.order.size(); ++k) {
    const int64_t len = dataset_->tokens(ep.order[k]).second - 1;
    if (!options_.pack() || used == 0 || used + len > options_.context()) {
      ep.row_starts.push_back(static_cast<int64_t>(k));
      used = 0;
    }
    used += len;
  }
  cached_ = std::move(ep);
  cached_epoch_ = e;
  return cached_;
}

int64_t JsonlBatches::rows_per_epoch(int64_t e) const {
  return static_cast<int64_t>(epoch(e).row_starts.size());
}

std::pair<int64_t, int64_t> JsonlBatches::locate(int64_t r) const {
  // One sample per row, or the same order every epoch: equal epochs.
  if (!options_.pack() || !options_.shuffle()) {
    const int64_t rows = rows_per_epoch(0);
    return {r / rows, r % rows};
  }
  int64_t e = 0;
  while (true) {
    if (static_cast<size_t>(e) == epoch_rows_.size())
      epoch_rows_.push_back(rows_per_epoch(e));
    const int64_t rows = epoch_rows_[static_cast<size_t>(e)];
    if (r < rows) return {e, r};
    r -= rows;
    ++e;
  }
}

Batch JsonlBatches::next() {
  const int64_t B = options_.batch_size();
  std::vector<std::vector<int64_t>> rows(static_cast<size_t>(B));
  int64_t width = options_.pack() ? options_.context() : 1;
  for (int64_t b = 0; b < B; ++b) {
    const auto [e, k] = locate(position_ * B + b);
    const Epoch& ep = epoch(e);
    const auto begin =
        static_cast<size_t>(ep.row_starts[static_cast<size_t>(k)]);
    const size_t end =
        static_cast<size_t>(k) + 1 < ep.row_starts.size()
            ? static_cast<size_t>(ep.row_starts[static_cast<size_t>(k) + 1])
            : ep.order.size();
    auto& row = rows[static_cast<size_t>(b)];
    row.assign(ep.order.begin() + static_cast<std::ptrdiff_t>(begin),
               ep.order.begin() + static_cast<std::ptrdiff_t>(end));
    if (!options_.pack())
      width = std::max(width, dataset_->tokens(row.front()).second - 1);
  }
  const auto opts = at::TensorOptions().dtype(at::kLong);
  at::Tensor input = at::full({B, width}, options_.pad_id(), opts);
  at::Tensor target = at::full({B, width}, kIgnoreTarget, opts);
  at::Tensor segments = at::zeros({B, width}, opts);
  at::Tensor positions = at::zeros({B, width}, opts);
  auto in = input.accessor<int64_t, 2>();
  auto tg = target.accessor<int64_t, 2>();
  auto sg = segments.accessor<int64_t, 2>();
  auto ps = positions.accessor<int64_t, 2>();
  for (int64_t b = 0; b < B; ++b) {
    int64_t t = 0, segment = 0;
    for (const int64_t i : rows[static_cast<size_t>(b)]) {
      const auto [ids, n] = dataset_->tokens(i);
      const uint8_t* m = dataset_->mask(i);
      for (int64_t j = 0; j + 1 < n; ++j, ++t) {
        in[b][t] = ids[j];
        tg[b][t] = m[j + 1] ? ids[j + 1] : kIgnoreTarget;
        sg[b][t] = segment;
        ps[b][t] = j;
      }
      ++segment;
    }
    for (int64_t j = 0; t < width; ++t, ++j) {  // padding: its own segment
      sg[b][t] = segment;
      ps[b][t] = j;
    }
  }
  position_ += 1;
  Batch batch{input, target};
  if (options_.pack()) {
    batch.segments = segments;
    batch.positions = positions;
  }
  return batch;
}

void JsonlBatches::seek(int64_t position) {
  LOWMEM_CHECK(position >= 0, "[data] seek position must be >= 0, got ",
               position);
  position_ = position;
}

std::string JsonlBatches::describe() const {
  std::ostringstream s;
  s << name_ << ": " << samples_.size() << " samples, "
    << (options_.pack() ? "packed into " : "one per row, padded; ")
    << rows_per_epoch(0) << " rows of " << options_.context()
    << " tokens per epoch, batch " << options_.batch_size();
  return s.str();
}

}  // namespace lowmem::data
