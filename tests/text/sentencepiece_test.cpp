// Sentencepiece tokenizer.model files: models trained on fortunes with
// Debian's spm_train (unigram with the default nmt_nfkc normalization, and
// BPE with byte fallback like LLaMA's) give the ids and text of Debian's
// python3-sentencepiece.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

#include "lowmem/text/sentencepiece_trainer.h"
#include "lowmem/text/tokenizer.h"
#include "reference.h"
#include "testing/errors.h"
#include "testing/files.h"
#include "testing/golden.h"

namespace lowmem::testing {
namespace {

namespace fs = std::filesystem;
using text::TokenId;
using text::Tokenizer;

struct SpmFixture {
  fs::path dir;
  std::string model;
};

// Trains a model on 4000 fortune lines (about a second).
SpmFixture train(const std::string& name, const std::string& options) {
  SpmFixture f;
  f.dir = fresh_temp_dir("text_spm_" + name);
  {
    std::ofstream corpus(f.dir / "corpus.txt", std::ios::binary);
    for (const auto& l : fortune_lines(4000)) corpus << l << "\n";
  }
  const std::string cmd =
      "spm_train --input='" + (f.dir / "corpus.txt").string() +
      "' --model_prefix='" + (f.dir / "m").string() +
      "' --num_threads=1 --minloglevel=2 " + options + " >/dev/null 2>&1";
  EXPECT_EQ(std::system(cmd.c_str()), 0)
      << cmd
      << " (spm_train comes with Debian's sentencepiece: scripts/setup.sh)";
  f.model = (f.dir / "m.model").string();
  return f;
}

struct SpmRef {
  std::vector<TokenId> ids;
  std::string decoded;
};

std::vector<SpmRef> python_reference(const SpmFixture& f,
                                     const std::vector<std::string>& inputs) {
  {
    std::ofstream in(f.dir / "in.jsonl", std::ios::binary);
    for (const auto& s : inputs) in << nlohmann::json(s).dump() << "\n";
  }
  const std::string cmd = "/usr/bin/python3 '" +
                          source_path("tests/text/spm_reference.py") + "' '" +
                          f.model + "' '" + (f.dir / "in.jsonl").string() +
                          "' '" + (f.dir / "out.jsonl").string() + "'";
  EXPECT_EQ(std::system(cmd.c_str()), 0)
      << cmd << " (needs Debian's python3-sentencepiece)";
  std::vector<SpmRef> out;
  std::ifstream o(f.dir / "out.jsonl", std::ios::binary);
  std::string line;
  while (std::getline(o, line)) {
    auto j = nlohmann::json::parse(line);
    out.push_back({j["ids"].get<std::vector<TokenId>>(),
                   j["decoded"].get<std::string>()});
  }
  return out;
}

// Inputs without the control pieces' strings (lowmem splits those out as
// special tokens, as transformers' slow tokenizers do; sentencepiece itself
// does not).
std::vector<std::string> inputs() {
  std::vector<std::string> in = fortune_lines(1500);
  for (auto& e : fortune_entries(100)) in.push_back(e);
  for (auto& e : edge_cases()) {
    if (e.find("<s>") == std::string::npos &&
        e.find("</s>") == std::string::npos &&
        e.find("<unk>") == std::string::npos) {
      in.push_back(e);
    }
  }
  return in;
}

void expect_same_as_python(const SpmFixture& f) {
  const Tokenizer t = Tokenizer::from_file(f.model);
  const auto in = inputs();
  const auto ref = python_reference(f, in);
  ASSERT_EQ(ref.size(), in.size());
  size_t bad = 0;
  for (size_t i = 0; i < in.size(); ++i) {
    const auto ids = t.encode(in[i], /*add_special_tokens=*/false);
    if (ids != ref[i].ids && ++bad <= 5) {
      ADD_FAILURE() << "input " << i << " " << show(in[i]);
    }
    EXPECT_EQ(t.decode(ids), ref[i].decoded) << show(in[i]);
  }
  EXPECT_EQ(bad, 0u) << "of " << in.size();
  // BOS by default (LlamaTokenizer's add_bos_token); control pieces in text
  // are special tokens.
  ASSERT_TRUE(t.bos_id().has_value() && t.eos_id().has_value());
  const auto hello = t.encode("Hello", false);
  auto with_bos = hello;
  with_bos.insert(with_bos.begin(), *t.bos_id());
  EXPECT_EQ(t.encode("Hello"), with_bos);
  auto split = t.encode("Hello</s>Hello", false);
  auto expect = hello;
  expect.push_back(*t.eos_id());
  expect.insert(expect.end(), hello.begin(), hello.end());
  EXPECT_EQ(split, expect);
  EXPECT_TRUE(t.is_special(*t.eos_id()));
  EXPECT_EQ(t.decode(split, true),
            "Hello Hello");  // each section has its dummy prefix
  EXPECT_EQ(t.vocab_size(), 600);
  EXPECT_EQ(t.id_to_token(*t.eos_id()), "</s>");
}

TEST(SentencePiece, UnigramModelMatchesPython) {
  expect_same_as_python(
      train("unigram", "--vocab_size=600 --model_type=unigram"));
}

TEST(SentencePiece, BpeModelWithByteFallbackMatchesPython) {
  expect_same_as_python(
      train("bpe",
            "--vocab_size=600 --model_type=bpe --byte_fallback=true "
            "--normalization_rule_name=identity --add_dummy_prefix=true "
            "--remove_extra_whitespaces=false"));
}

TEST(SentencePiece, ConfigBesideTheModelSetsSpecialTokens) {
  const SpmFixture f = train("config", "--vocab_size=600 --model_type=bpe");
  fs::copy_file(f.model, f.dir / "tokenizer.model");
  std::ofstream(f.dir / "tokenizer_config.json")
      << R"({"add_bos_token": false, "add_eos_token": true, "eos_token": "</s>"})";
  const Tokenizer t = Tokenizer::from_file(f.dir.string());
  EXPECT_NE(t.describe().find("sentencepiece"), std::string::npos)
      << t.describe();
  const auto ids = t.encode("Hello");
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.back(), *t.eos_id());
  EXPECT_NE(ids.front(), *t.bos_id());
  std::ofstream(f.dir / "bad.model") << "not a model";
  expect_error_containing(
      [&] { Tokenizer::from_file((f.dir / "bad.model").string()); },
      "not a sentencepiece model");
}

// text::train_sentencepiece (in process, through the module) learns the
// same pieces as Debian's spm_train given the same settings, and the model
// it returns encodes as spm_train's does (python3-sentencepiece's ids).
TEST(SentencePieceTrain, InProcessEqualsSpmTrain) {
  const SpmFixture cli =
      train("train_cli",
            "--vocab_size=600 --model_type=bpe --byte_fallback=true "
            "--split_digits=true --character_coverage=0.9995 "
            "--normalization_rule_name=identity --add_dummy_prefix=true "
            "--remove_extra_whitespaces=false");
  const auto lines = fortune_lines(4000);
  std::vector<std::string_view> sentences(lines.begin(), lines.end());
  const std::string model = text::train_sentencepiece(
      sentences, text::SentencePieceTrainOptions().vocab_size(600));
  const fs::path path = cli.dir / "in_process.model";
  std::ofstream(path, std::ios::binary) << model;
  const Tokenizer ours = Tokenizer::from_file(path.string());
  const Tokenizer ref = Tokenizer::from_file(cli.model);
  ASSERT_EQ(ours.vocab_size(), 600);
  ASSERT_EQ(ref.vocab_size(), 600);
  for (TokenId id = 0; id < 600; ++id) {
    ASSERT_EQ(ours.id_to_token(id), ref.id_to_token(id)) << "piece " << id;
  }
  // Byte fallback and digit splitting as asked.
  EXPECT_EQ(ours.id_to_token(3), "<0x00>");
  const auto digits = ours.encode("2024", false);
  EXPECT_EQ(digits.size(), 5u) << "the dummy prefix, then one piece a digit";
  // Newlines and tabs are not in the pieces: bytes, and back exactly.
  const std::string text = "Two lines,\n\tand a tab.\n";
  EXPECT_EQ(ours.decode(ours.encode(text, false)), text);
}

TEST(SentencePieceTrain, RejectsBadOptionsAndSaysWhy) {
  const std::vector<std::string_view> two = {"a few words", "and more words"};
  expect_error_containing(
      [&] {
        text::train_sentencepiece(
            two, text::SentencePieceTrainOptions().vocab_size(100));
      },
      "vocab_size must be in [260, 2^20], got 100");
  expect_error_containing(
      [&] {
        text::train_sentencepiece(
            two, text::SentencePieceTrainOptions().model_type("wordpiece"));
      },
      "model_type must be bpe or unigram, got 'wordpiece'");
  expect_error_containing(
      [&] {
        text::train_sentencepiece({"", ""});
      },
      "at least one non-empty sentence");
  // More pieces than two lines can give: sentencepiece's own reason.
  expect_error_containing(
      [&] {
        text::train_sentencepiece(
            two, text::SentencePieceTrainOptions().vocab_size(5000));
      },
      "[text] sentencepiece training failed: ");
}

// Odd text trains or fails with a message, never ends the process
// (sentencepiece's CHECK failures exit; its log is silenced).
TEST(SentencePieceTrain, OddTextTrainsOrFailsWithAMessage) {
  const auto lines = fortune_lines(400);
  std::vector<std::string> odd(lines.begin(), lines.end());
  odd.push_back(std::string("nul \0 inside", 12));
  odd.push_back("invalid \xff\xfe utf-8 \xc3");
  odd.push_back("   \t  ");
  odd.push_back(std::string(10000, 'x'));  // over max_sentence_length: skipped
  odd.push_back("\xF0\x9F\x98\x80 emoji and accents: caf\xC3\xA9");
  std::vector<std::string_view> sentences(odd.begin(), odd.end());
  const std::string model = text::train_sentencepiece(
      sentences, text::SentencePieceTrainOptions().vocab_size(400));
  const fs::path path = fresh_temp_dir("text_spm_odd") / "odd.model";
  std::ofstream(path, std::ios::binary) << model;
  const Tokenizer t = Tokenizer::from_file(path.string());
  EXPECT_EQ(t.vocab_size(), 400);
  const std::string emoji = "\xF0\x9F\x98\x80 caf\xC3\xA9";
  EXPECT_EQ(t.decode(t.encode(emoji, false)), emoji);
  // One sentence of one character cannot give 5000 pieces: an error.
  expect_error_containing(
      [&] {
        text::train_sentencepiece(
            {"aaaa"}, text::SentencePieceTrainOptions().vocab_size(5000));
      },
      "[text] sentencepiece training failed");
}

TEST(SentencePieceTrain, TextLinesSplitsAtNewlines) {
  const auto lines = text::text_lines("one\r\n\ntwo\nthree");
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0], "one");
  EXPECT_EQ(lines[1], "two");
  EXPECT_EQ(lines[2], "three");
  EXPECT_TRUE(text::text_lines("\n\n").empty());
}

}  // namespace
}  // namespace lowmem::testing
