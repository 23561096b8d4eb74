// Tokenizer semantics on small hand-made tokenizer.json files, where each
// expected id sequence follows from the Rust crate's rules (cited per test),
// and the errors for unsupported or oversized input.
#include "lowmem/text/tokenizer.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "reference.h"
#include "testing/errors.h"
#include "testing/files.h"

namespace lowmem::testing {
namespace {

using nlohmann::json;
using text::TokenId;
using text::Tokenizer;
using Ids = std::vector<TokenId>;

// A BPE over a, b, c with merges a+b (rank 0) and ab+c (rank 1).
json small_bpe() {
  return json::parse(R"({
    "version": "1.0",
    "added_tokens": [],
    "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
    "model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": false, "byte_fallback": false,
              "vocab": {"<unk>": 0, "a": 1, "b": 2, "c": 3, "ab": 4, "abc": 5, " ": 6, "bc": 7,
                        "<0x41>": 8, "<0xC3>": 9, "<0xA9>": 10},
              "merges": ["a b", "ab c", "b c"]}
  })");
}

Tokenizer load(const json& j, const std::string& config = "") {
  return Tokenizer::from_json(j.dump(), config);
}

json added(const std::string& content, int id, bool special = true) {
  return json{
      {"id", id},          {"content", content}, {"single_word", false},
      {"lstrip", false},   {"rstrip", false},    {"normalized", !special},
      {"special", special}};
}

TEST(Tokenizer, BpeMergesByRankAndBothMergeFormatsAgree) {
  const Tokenizer t = load(small_bpe());
  EXPECT_EQ(t.encode("abc"),
            (Ids{5}));  // a+b (rank 0) before b+c (rank 2), then ab+c
  EXPECT_EQ(t.encode("bca"), (Ids{7, 1}));  // b+c
  EXPECT_EQ(t.encode("abab"), (Ids{4, 4}));
  json pairs = small_bpe();
  pairs["model"]["merges"] =
      json::array({json::array({"a", "b"}), json::array({"ab", "c"}),
                   json::array({"b", "c"})});
  EXPECT_EQ(load(pairs).encode("abcab bc"), t.encode("abcab bc"));
  EXPECT_EQ(t.vocab_size(), 11);
  EXPECT_EQ(t.kind(), "tokenizer.json");
  EXPECT_EQ(t.merges(), (std::vector<std::pair<std::string, std::string>>{
                            {"a", "b"}, {"ab", "c"}, {"b", "c"}}));
  EXPECT_EQ(t.token_to_id("abc"), 5);
  EXPECT_FALSE(t.token_to_id("zzz").has_value());
  EXPECT_EQ(t.id_to_token(7), "bc");
  expect_error_containing([&] { t.id_to_token(99); },
                          "token id 99 is not in the vocabulary");
  expect_error_containing(
      [&] {
        t.decode({1, 42});
      },
      "token id 42 is not in the vocabulary");
}

TEST(Tokenizer, UnknownCharactersUseByteFallbackOrAFusedUnk) {
  // models/bpe/model.rs merge_word: a character missing from the vocabulary
  // becomes its bytes' <0xHH> tokens when all exist, else the unk token;
  // fuse_unk joins consecutive unks.
  json j = small_bpe();
  EXPECT_EQ(load(j).encode("axxb"), (Ids{1, 0, 0, 2}));
  j["model"]["fuse_unk"] = true;
  EXPECT_EQ(load(j).encode("axxb"), (Ids{1, 0, 2}));
  j["model"]["byte_fallback"] = true;
  EXPECT_EQ(load(j).encode("a\u00e9b"), (Ids{1, 9, 10, 2}));  // é = C3 A9
  EXPECT_EQ(load(j).encode("axb"), (Ids{1, 0, 2}));           // no <0x78>: unk
  j["model"]["unk_token"] = nullptr;
  EXPECT_EQ(load(j).encode("axb"),
            (Ids{4}));  // no unk token: x dropped, a+b merge
}

TEST(Tokenizer, IgnoreMergesTakesWholeVocabularyWords) {
  // LLaMA-3's ignore_merges: a word found in the vocabulary is one token even
  // when merges would split it differently.
  json j = small_bpe();
  j["model"]["vocab"]["abcb"] = 11;
  j["model"]["merges"].push_back("abc b");
  j["pre_tokenizer"] = json::parse(R"({"type": "WhitespaceSplit"})");
  EXPECT_EQ(load(j).encode("abcb bcab"), (Ids{11, 7, 4}));
  j["model"]["vocab"]["bcab"] = 12;
  EXPECT_EQ(load(j).encode("abcb bcab"), (Ids{11, 7, 4}));
  j["model"]["ignore_merges"] = true;
  EXPECT_EQ(load(j).encode("abcb bcab"), (Ids{11, 12}));
}

TEST(Tokenizer, ContinuingSubwordPrefixAndEndOfWordSuffix) {
  // merge_word adds the prefix to every character but the first and the
  // suffix to the last; merges join a + ##b into "ab" (prefix dropped).
  json j = json::parse(R"({
    "added_tokens": [], "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
    "post_processor": null, "decoder": {"type": "BPEDecoder", "suffix": "</w>"},
    "model": {"type": "BPE", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
              "end_of_word_suffix": "</w>",
              "vocab": {"[UNK]": 0, "a": 1, "##b": 2, "##c</w>": 3, "ab": 4, "ab##c</w>": 5,
                        "b": 6, "##c": 7, "c</w>": 8, "a</w>": 9},
              "merges": [["a", "##b"]]}
  })");
  const Tokenizer t = load(j);
  EXPECT_EQ(t.encode("abc a c"), (Ids{4, 3, 9, 8}));
}

TEST(Tokenizer, AddedTokensHonourLstripRstripSingleWordAndNormalized) {
  // added_vocabulary.rs find_matches.
  json j = small_bpe();
  j["normalizer"] = json::parse(R"({"type": "Lowercase"})");
  j["added_tokens"] = json::array();
  auto l = added("[L]", 11);
  l["lstrip"] = true;
  auto r = added("[R]", 12);
  r["rstrip"] = true;
  auto w = added("[W]", 13);
  w["single_word"] = true;
  auto n = added(
      "[N]", 14,
      /*special=*/false);  // normalized: matched as "[n]" after lowercasing
  for (auto& t : {l, r, w, n}) j["added_tokens"].push_back(t);
  const Tokenizer t = load(j);
  EXPECT_EQ(t.encode("a  [L]"), (Ids{1, 11}));  // the spaces before [L] join it
  EXPECT_EQ(t.encode("[R]  b"), (Ids{12, 2}));  // the spaces after [R] join it
  EXPECT_EQ(t.encode("a [W] b"), (Ids{1, 6, 13, 6, 2}));
  EXPECT_EQ(t.encode("a[W] b"),
            t.encode("a[w] b"));  // glued to a word: not the token
  EXPECT_EQ(t.encode("[N]").size(), 1u);
  EXPECT_EQ(t.encode("[N]"), (Ids{14}));  // via the normalized form "[n]"
  EXPECT_EQ(t.encode("x[n]x", false), (Ids{0, 14, 0}));
  EXPECT_TRUE(t.is_special(11));
  EXPECT_FALSE(t.is_special(14));
  EXPECT_EQ(t.decode({1, 11, 14}, false), "a [L] [n]")
      << "no decoder: tokens joined by spaces";
  EXPECT_EQ(t.decode({1, 11, 14}, true), "a [n]");
  EXPECT_EQ(t.vocab_size(), 15);
}

TEST(Tokenizer, SplitSpecialTokensEncodesThemAsText) {
  json j = small_bpe();
  j["added_tokens"] = json::array({added("ab c", 11)});
  EXPECT_EQ(load(j).encode("ab c"), (Ids{11}));
  EXPECT_EQ(load(j, R"({"split_special_tokens": true})").encode("ab c"),
            (Ids{4, 6, 3}));
}

TEST(Tokenizer, PostProcessorAndConfigSpecialTokens) {
  json j = small_bpe();
  j["added_tokens"] = json::array({added("<s>", 11), added("</s>", 12)});
  j["post_processor"] = json::parse(R"({"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "</s>", "type_id": 0}}],
      "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [11], "tokens": ["<s>"]},
                                     "</s>": {"id": "</s>", "ids": [12], "tokens": ["</s>"]}}})");
  const std::string cfg =
      R"({"bos_token": {"content": "<s>", "__type": "AddedToken"},
      "eos_token": "</s>", "pad_token": null, "chat_template": "{{ messages }}"})";
  const Tokenizer t = load(j, cfg);
  EXPECT_EQ(t.encode("ab"), (Ids{11, 4, 12}));
  EXPECT_EQ(t.encode("ab", false), (Ids{4}));
  EXPECT_EQ(t.special_affixes().first, (Ids{11}));
  EXPECT_EQ(t.bos_id(), 11);
  EXPECT_EQ(t.eos_id(), 12);
  EXPECT_FALSE(t.pad_id().has_value());
  EXPECT_EQ(t.bos_token(), "<s>");
  EXPECT_EQ(t.chat_template(), "{{ messages }}");
  // LlamaTokenizerFast rebuilds the template from add_bos_token/add_eos_token.
  const Tokenizer llama =
      load(j, R"({"tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>",
      "eos_token": "</s>", "add_bos_token": false, "add_eos_token": true})");
  EXPECT_EQ(llama.encode("ab"), (Ids{4, 12}));
  // A named template list.
  const Tokenizer named =
      load(j, R"({"chat_template": [{"name": "default", "template": "D"},
      {"name": "tool_use", "template": "T"}]})");
  EXPECT_EQ(named.chat_template(), "D");
  EXPECT_EQ(named.chat_template("tool_use"), "T");
}

TEST(Tokenizer, DecodersRestoreText) {
  // decoders: Replace ▁ -> ' ', ByteFallback, Fuse, Strip (the LLaMA-2 chain).
  json j = small_bpe();
  j["model"]["vocab"]["\u2581a"] = 11;
  j["decoder"] = json::parse(R"({"type": "Sequence", "decoders": [
      {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
      {"type": "ByteFallback"}, {"type": "Fuse"},
      {"type": "Strip", "content": " ", "start": 1, "stop": 0}]})");
  const Tokenizer t = load(j);
  EXPECT_EQ(t.decode({11, 9, 10, 2}), "a\u00e9b");
  EXPECT_EQ(t.decode({9, 2}), "\uFFFDb");  // a lone C3: one U+FFFD per byte
  EXPECT_EQ(t.decode({9, 9, 2}), "\uFFFD\uFFFDb");
  // clean_up_tokenization_spaces (transformers' decode).
  j["model"]["vocab"][" ."] = 12;
  EXPECT_EQ(
      load(j, R"({"clean_up_tokenization_spaces": true})").decode({1, 12}),
      "a.");
  EXPECT_EQ(load(j).decode({1, 12}), "a .");
}

TEST(Tokenizer, MetaspaceAndDigitsPreTokenizers) {
  // pre_tokenizers/metaspace.rs: spaces -> ▁, prefix ▁, split before each ▁;
  // digits.rs: Unicode numerics split off (individually when asked).
  json j = small_bpe();
  j["model"]["vocab"] =
      json::parse(R"({"<unk>": 0, "\u2581": 1, "a": 2, "\u2581a": 3, "1": 4,
                                        "2": 5, "12": 6, "\u0663": 7})");
  j["model"]["merges"] = json::parse(R"(["\u2581 a", "1 2"])");
  j["pre_tokenizer"] = json::parse(R"({"type": "Sequence", "pretokenizers": [
      {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": true},
      {"type": "Digits", "individual_digits": false}]})");
  j["decoder"] = json::parse(
      R"({"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": true})");
  const Tokenizer t = load(j);
  EXPECT_EQ(t.encode("a a12\u0663"), (Ids{3, 3, 6, 7}));
  EXPECT_EQ(t.decode({3, 3, 6}), "a a12");
  j["pre_tokenizer"]["pretokenizers"][1]["individual_digits"] = true;
  EXPECT_EQ(load(j).encode("a12"), (Ids{3, 4, 5}));
}

TEST(Tokenizer, UnsupportedComponentsAreOneErrorNamingThem) {
  json j = small_bpe();
  j["normalizer"] =
      json::parse(R"({"type": "Precompiled", "precompiled_charsmap": ""})");
  expect_error_containing([&] { load(j); },
                          "normalizer type 'Precompiled' is not supported");
  j = small_bpe();
  j["pre_tokenizer"] = json::parse(R"({"type": "UnicodeScripts"})");
  expect_error_containing(
      [&] { load(j); }, "pre_tokenizer type 'UnicodeScripts' is not supported");
  j = small_bpe();
  j["decoder"] = json::parse(R"({"type": "CTC"})");
  expect_error_containing([&] { load(j); },
                          "decoder type 'CTC' is not supported");
  j = small_bpe();
  j["model"]["type"] = "Unigram";
  expect_error_containing([&] { load(j); },
                          "model type 'Unigram' is not supported");
  j = small_bpe();
  j["model"]["dropout"] = 0.1;
  expect_error_containing([&] { load(j); }, "dropout 0.1 is not supported");
  j = small_bpe();
  j["pre_tokenizer"] =
      json::parse(R"({"type": "Split", "pattern": {"Regex": "(?<=a)b"},
                                       "behavior": "Isolated", "invert": false})");
  expect_error_containing([&] { load(j); }, "lookbehind is not supported");
}

TEST(Tokenizer, BadFilesAreRejectedWithLimits) {
  json j = small_bpe();
  j["model"]["merges"].push_back("a z");
  expect_error_containing([&] { load(j); }, "'z' is not in the vocabulary");
  j = small_bpe();
  j["model"]["merges"].push_back("a b c");
  expect_error_containing([&] { load(j); },
                          "is not two tokens separated by one space");
  j = small_bpe();
  j["model"]["vocab"]["dup"] = 1;
  expect_error_containing([&] { load(j); }, "gives id 1 to both");
  expect_error_containing(
      [] {
        Tokenizer::from_json("{\"model\": [[[[[[[[[[[[1]]]]]]]]]]]]}", "",
                             text::TokenizerLimits().max_json_depth(8));
      },
      "deeper than 8 levels");
  expect_error_containing(
      [] {
        Tokenizer::from_json(small_bpe().dump(), "",
                             text::TokenizerLimits().max_vocab(5));
      },
      "outside [0, 5)");
  expect_error_containing(
      [] {
        Tokenizer::from_json(small_bpe().dump(), "",
                             text::TokenizerLimits().max_file_bytes(100));
      },
      "over the limit of 100");
  expect_error_containing([] { Tokenizer::from_json("{\"model\": ", ""); },
                          "not valid JSON");
  const Tokenizer t = load(small_bpe());
  expect_error_containing([&] { t.encode("a\xff"); },
                          "not valid UTF-8 at byte 1");
  expect_error_containing(
      [] { Tokenizer::from_file("/nonexistent/tokenizer.json"); },
      "does not exist");
  const auto dir = fresh_temp_dir("text_empty_folder");
  expect_error_containing([&] { Tokenizer::from_file(dir.string()); },
                          "holds neither tokenizer.json nor tokenizer.model");
}

// Issue 20: tokenizer.json and tokenizer_config.json through core's bounded
// readers: deep nesting and huge values give one short error.
TEST(Tokenizer, HostileFilesGiveOneShortError) {
  const auto dir = fresh_temp_dir("text_hostile");
  const std::string tok = (dir / "tokenizer.json").string();
  const std::string cfg = (dir / "tokenizer_config.json").string();
  auto write = [](const std::string& path, const std::string& text) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
  };
  write(tok, "{\"model\": " + deep_json(300000) + "}");
  expect_short_error([&] { Tokenizer::from_file(tok); }, "deeper than");
  write(tok, small_bpe().dump());
  write(cfg, deep_json(300000));
  expect_short_error([&] { Tokenizer::from_file(tok); },
                     "nesting deeper than the limit of 64 levels");
  write(cfg, "{\"bos_token\": \"" + std::string(20 << 20, 'x') + "\"}");
  expect_short_error([&] { Tokenizer::from_file(tok); },
                     "exceed the limit of 16777216 bytes");
  write(cfg, "{\"bos_token\": [1]}");
  expect_short_error([&] { Tokenizer::from_file(tok); },
                     "\"bos_token\" is neither a string");
}

TEST(Tokenizer, HashFollowsTheFilesContent) {
  const Tokenizer a = load(small_bpe());
  const Tokenizer b = load(small_bpe());
  json changed = small_bpe();
  changed["model"]["vocab"]["zz"] = 30;
  EXPECT_EQ(a.hash(), b.hash());
  EXPECT_EQ(a.hash().size(), 64u);
  EXPECT_NE(a.hash(), load(changed).hash());
  EXPECT_NE(a.hash(), load(small_bpe(), "{}").hash());
  EXPECT_EQ(text::sha256_hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(text::sha256_hex(std::string(1000, 'a')),
            "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3");
}

}  // namespace
}  // namespace lowmem::testing
