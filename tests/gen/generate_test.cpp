// gen::generate: KV-cached greedy decoding gives exactly the tokens of the
// uncached forward (argmax of the full-sequence logits, re-run every step)
// for several Llama variants, GPT, and with a LoRA adapter injected; the logit
// warpers against hand-computed examples; seeded sampling reproducible;
// top_k = 1 equals greedy; stops (EOS, stop string, length, context);
// streaming keeps multi-byte characters whole.
#include "lowmem/gen/generate.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <set>

#include "lowmem/adapters/lora.h"
#include "lowmem/models/gpt.h"
#include "lowmem/models/llama.h"

namespace {

using namespace lowmem;  // NOLINT
using models::LlamaConfig;

LlamaConfig base() {
  return LlamaConfig()
      .vocab_size(50)
      .hidden_size(32)
      .intermediate_size(48)
      .num_attention_heads(4)
      .num_hidden_layers(2)
      .max_position_embeddings(40)
      .initializer_range(0.2);  // peaked logits: argmax far from ties
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what();
  }
  return "(no error)";
}

// The reference: argmax of the last row of the full forward, re-run on the
// growing sequence (no cache, no gen code).
std::vector<int64_t> reference_greedy(models::Model& m,
                                      std::vector<int64_t> seq, int64_t n) {
  torch::NoGradGuard no_grad;
  std::vector<int64_t> out;
  for (int64_t i = 0; i < n; ++i) {
    auto idx = torch::tensor(seq, torch::kLong).view({1, -1});
    const int64_t t = m.forward(idx)[0][-1].argmax().item<int64_t>();
    out.push_back(t);
    seq.push_back(t);
  }
  return out;
}

const std::vector<int64_t> kPrompt = {3, 17, 9, 41, 5};

TEST(Generate, CachedGreedyEqualsUncachedForward) {
  const std::vector<std::pair<const char*, LlamaConfig>> configs = {
      {"mha", base()},
      {"gqa", base().num_key_value_heads(2).qkv_bias(true)},
      {"qwen3", base().num_key_value_heads(1).head_dim(16).qk_norm(true)},
      {"sliding", base().num_key_value_heads(2).sliding_window(4)},
  };
  for (const auto& [name, c] : configs) {
    SCOPED_TRACE(name);
    torch::manual_seed(11);
    models::Llama m(c);
    const auto want = reference_greedy(m, kPrompt, 30);
    auto cached =
        gen::generate(m, kPrompt, gen::GenerateOptions().max_new_tokens(30));
    EXPECT_EQ(cached.tokens, want);
    EXPECT_EQ(cached.stop_reason, "length");
    auto uncached = gen::generate(
        m, kPrompt, gen::GenerateOptions().max_new_tokens(30).use_cache(false));
    EXPECT_EQ(uncached.tokens, want);
    // Not a constant sequence (the comparison would be weak).
    EXPECT_GT(std::set<int64_t>(want.begin(), want.end()).size(), 3u);
  }
}

TEST(Generate, CachedGreedyWithLoraEqualsUncachedForward) {
  torch::manual_seed(12);
  auto m = std::make_shared<models::Llama>(base().num_key_value_heads(2));
  auto lora = adapters::inject_lora(
      m, adapters::TargetOptions::from_list("q_proj,v_proj,o_proj,down_proj"),
      adapters::LoraOptions().r(4));
  {  // lora_B starts at zero: make the adapter change the output
    torch::NoGradGuard no_grad;
    for (auto& p : m->named_parameters())
      if (p.key().find("lora_B") != std::string::npos)
        p.value().normal_(0, 0.3);
  }
  const auto want = reference_greedy(*m, kPrompt, 25);
  auto got =
      gen::generate(*m, kPrompt, gen::GenerateOptions().max_new_tokens(25));
  EXPECT_EQ(got.tokens, want);
  lora->merge_and_unload();  // the merged model generates the same
  EXPECT_EQ(
      gen::generate(*m, kPrompt, gen::GenerateOptions().max_new_tokens(25))
          .tokens,
      want);
}

// GPT's KV cache: greedy tokens equal the uncached forward's while the
// sequence fits block_size (with LoRA on every slot too); beyond, both crop
// to the last block_size tokens, step by step.
TEST(Generate, GptCachedGreedyEqualsUncachedAndCropsToBlockSize) {
  torch::manual_seed(13);
  auto m = std::make_shared<models::GPT>(models::GPTConfig()
                                             .n_layer(2)
                                             .n_embd(32)
                                             .n_head(2)
                                             .block_size(24)
                                             .vocab_size(50));
  {  // nanoGPT's N(0, 0.02) gives near-uniform logits: sharpen the matrices
    torch::NoGradGuard no_grad;
    for (auto& p : m->parameters())
      if (p.dim() == 2) p.normal_(0, 0.5);
  }
  const auto want = reference_greedy(*m, kPrompt, 19);  // 24 in all: fits
  EXPECT_GT(std::set<int64_t>(want.begin(), want.end()).size(), 3u);
  EXPECT_EQ(
      gen::generate(*m, kPrompt, gen::GenerateOptions().max_new_tokens(19))
          .tokens,
      want);
  auto lora = adapters::inject_lora(
      m, adapters::TargetOptions::from_list("qkv,proj,fc"),
      adapters::LoraOptions().r(2));
  {
    torch::NoGradGuard no_grad;
    for (auto& p : m->named_parameters())
      if (p.key().find("lora_B") != std::string::npos)
        p.value().normal_(0, 0.3);
  }
  const auto with_lora = reference_greedy(*m, kPrompt, 19);
  EXPECT_NE(with_lora, want);
  EXPECT_EQ(
      gen::generate(*m, kPrompt, gen::GenerateOptions().max_new_tokens(19))
          .tokens,
      with_lora);
  // 30 new tokens: past block_size the window of the last 24 tokens.
  for (bool cache : {true, false}) {
    SCOPED_TRACE(cache ? "cached" : "uncached");
    auto r = gen::generate(
        *m, kPrompt,
        gen::GenerateOptions().max_new_tokens(30).use_cache(cache));
    ASSERT_EQ(r.tokens.size(), 30u);
    std::vector<int64_t> seq = kPrompt;
    torch::NoGradGuard no_grad;
    for (int64_t t : r.tokens) {
      std::vector<int64_t> win(seq.end() - std::min<size_t>(24, seq.size()),
                               seq.end());
      auto idx = torch::tensor(win, torch::kLong).view({1, -1});
      EXPECT_EQ(m->forward(idx)[0][-1].argmax().item<int64_t>(), t);
      seq.push_back(t);
    }
  }
}

TEST(Generate, TopPAgainstHandComputedExample) {
  // probabilities 0.5, 0.3, 0.15, 0.05 (logits = their logs), top_p 0.8:
  // ascending cumulative 0.05, 0.20, 0.50, 1.0; removed where <= 0.2:
  // 0.05 and 0.15; kept 0.5 and 0.3.
  auto logits =
      torch::tensor({0.3, 0.05, 0.5, 0.15}, torch::kFloat).log().view({1, 4});
  auto f = gen::top_p_filter(logits, 0.8);
  EXPECT_TRUE(std::isinf(f[0][1].item<float>()));
  EXPECT_TRUE(std::isinf(f[0][3].item<float>()));
  EXPECT_FLOAT_EQ(f[0][0].item<float>(), std::log(0.3f));
  EXPECT_FLOAT_EQ(f[0][2].item<float>(), std::log(0.5f));
  // top_p below the top probability keeps only the top token.
  auto one = gen::top_p_filter(logits, 0.1);
  EXPECT_EQ(torch::isinf(one).sum().item<int64_t>(), 3);
  EXPECT_FALSE(std::isinf(one[0][2].item<float>()));
  EXPECT_TRUE(torch::equal(gen::top_p_filter(logits, 1.0), logits));
}

TEST(Generate, TopKKeepsTiesAndTemperatureDivides) {
  auto logits =
      torch::tensor({1.0, 3.0, 2.0, 2.0, 0.5}, torch::kFloat).view({1, 5});
  auto f = gen::top_k_filter(logits, 2);  // 3 and both 2s (ties with the 2nd)
  EXPECT_EQ(torch::isinf(f).sum().item<int64_t>(), 2);
  EXPECT_TRUE(std::isinf(f[0][0].item<float>()));
  EXPECT_TRUE(std::isinf(f[0][4].item<float>()));
  EXPECT_TRUE(torch::equal(gen::top_k_filter(logits, 0), logits));
  EXPECT_TRUE(torch::allclose(gen::temperature_warp(logits, 0.5), logits * 2));
  // HF order: temperature, then top-k, then top-p. With temperature 0.5 the
  // probabilities of {3, 2, 2} are e^6, e^4, e^4 over their sum: top 0.787,
  // so top_p 0.7 keeps only index 1.
  auto w = gen::warp_logits(
      logits, gen::GenerateOptions().temperature(0.5).top_k(2).top_p(0.7));
  EXPECT_EQ(torch::isinf(w).sum().item<int64_t>(), 4);
  EXPECT_FLOAT_EQ(w[0][1].item<float>(), 6.0f);
}

TEST(Generate, SeededSamplingReproducibleAndTopK1IsGreedy) {
  torch::manual_seed(14);
  models::Llama m(base());
  auto sample = gen::GenerateOptions()
                    .max_new_tokens(20)
                    .do_sample(true)
                    .top_k(0)
                    .temperature(1.5);
  const auto a = gen::generate(m, kPrompt, sample.seed(7)).tokens;
  EXPECT_EQ(gen::generate(m, kPrompt, sample.seed(7)).tokens, a);
  EXPECT_NE(gen::generate(m, kPrompt, sample.seed(8)).tokens, a);
  EXPECT_NE(a,
            gen::generate(m, kPrompt, gen::GenerateOptions().max_new_tokens(20))
                .tokens);
  const auto greedy =
      gen::generate(m, kPrompt, gen::GenerateOptions().max_new_tokens(20))
          .tokens;
  EXPECT_EQ(gen::generate(m, kPrompt, sample.top_k(1).seed(3)).tokens, greedy);
}

std::string bytes_of(const std::vector<int64_t>& ids) {
  std::string s;
  for (int64_t i : ids) s += static_cast<char>(i);
  return s;
}

TEST(Generate, StopsAtEosStopStringLengthAndContext) {
  torch::manual_seed(15);
  models::Llama m(base().vocab_size(256).max_position_embeddings(12));
  const auto free_run =
      gen::generate(m, kPrompt, gen::GenerateOptions().max_new_tokens(6));
  ASSERT_EQ(free_run.tokens.size(), 6u);
  auto eos =
      gen::generate(m, kPrompt,
                    gen::GenerateOptions().max_new_tokens(6).eos_token_id(
                        {free_run.tokens[2]}));
  EXPECT_EQ(eos.stop_reason, "eos");
  EXPECT_EQ(eos.tokens.size(), 3u);
  // A stop string made of the text of tokens 1..2 (bytes).
  const std::string stop = bytes_of({free_run.tokens[1], free_run.tokens[2]});
  auto s = gen::generate(
      m, kPrompt, gen::GenerateOptions().max_new_tokens(6).stop_strings({stop}),
      bytes_of);
  EXPECT_EQ(s.stop_reason, "stop_string");
  EXPECT_EQ(s.tokens.size(), 3u);
  auto ctx =
      gen::generate(m, kPrompt, gen::GenerateOptions().max_new_tokens(30));
  EXPECT_EQ(ctx.stop_reason, "context");
  EXPECT_EQ(ctx.tokens.size(), 12u - kPrompt.size());
  EXPECT_NE(error_of([&] {
              gen::generate(m, kPrompt,
                            gen::GenerateOptions().stop_strings({"x"}));
            }).find("stop strings need a decoder"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              gen::generate(
                  m, kPrompt,
                  gen::GenerateOptions().do_sample(true).temperature(0));
            }).find("temperature must be > 0 when sampling, got 0"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              gen::generate(m, {}, {});
            }).find("the prompt has no tokens"),
            std::string::npos);
}

TEST(Generate, StreamKeepsMultiByteCharactersWhole) {
  // A lossy decoder as a byte-level tokenizer's: incomplete sequences ->
  // U+FFFD.
  auto lossy = [](const std::vector<int64_t>& ids) {
    std::string s = bytes_of(ids);
    if (!s.empty() && (static_cast<unsigned char>(s.back()) & 0x80))
      return s.substr(0, s.size() - 1) + "\xEF\xBF\xBD";
    return s;
  };
  gen::TextStream lossy_stream(lossy);
  gen::TextStream raw_stream(bytes_of);
  // "a" then "é" (C3 A9) split over two tokens, then "€" (E2 82 AC) in three.
  std::vector<std::string> lossy_out, raw_out;
  for (int64_t t : {0x61, 0xC3, 0xA9, 0xE2, 0x82, 0xAC}) {
    raw_out.push_back(raw_stream.push(t));
  }
  EXPECT_EQ(raw_out, (std::vector<std::string>{"a", "", "\xC3\xA9", "", "",
                                               "\xE2\x82\xAC"}));
  // The lossy decoder here only marks a final high byte: check the hold-back.
  EXPECT_EQ(lossy_stream.push(0x61), "a");
  EXPECT_EQ(lossy_stream.push(0xC3), "");
  EXPECT_EQ(lossy_stream.finish(), "\xEF\xBF\xBD");
}

TEST(Generate, CallbackStreamsTheText) {
  torch::manual_seed(16);
  models::Llama m(base().vocab_size(128));
  std::string streamed;
  std::vector<int64_t> seen;
  auto r = gen::generate(m, kPrompt, gen::GenerateOptions().max_new_tokens(10),
                         bytes_of, [&](int64_t t, const std::string& piece) {
                           seen.push_back(t);
                           streamed += piece;
                         });
  EXPECT_EQ(seen, r.tokens);
  EXPECT_EQ(streamed, r.text);
  EXPECT_EQ(r.text, bytes_of(r.tokens));
  EXPECT_GT(r.tokens_per_second(), 0.0);
  EXPECT_GT(r.prompt_tokens_per_second(), 0.0);
}

TEST(Generate, ReadsGenerationConfig) {
  const std::string path = ::testing::TempDir() + "/generation_config.json";
  {
    std::ofstream f(path);
    f << R"({"bos_token_id": 1, "eos_token_id": [2, 7], "do_sample": true,
            "temperature": 0.6, "top_p": 0.9, "top_k": null})";
  }
  auto o = gen::read_generation_config(path);
  EXPECT_EQ(o.eos_token_id(), (std::vector<int64_t>{2, 7}));
  EXPECT_TRUE(o.do_sample());
  EXPECT_DOUBLE_EQ(o.temperature(), 0.6);
  EXPECT_DOUBLE_EQ(o.top_p(), 0.9);
  EXPECT_EQ(o.top_k(), 50);
  {
    std::ofstream f(path);
    f << R"({"eos_token_id": 2, "temperature": "hot"})";
  }
  EXPECT_NE(error_of([&] {
              gen::read_generation_config(path);
            }).find("temperature has the wrong type: \"hot\""),
            std::string::npos);
}

}  // namespace
