// Llama's KV cache: a cached forward, fed the sequence in chunks, gives the
// logits the uncached forward gives on the whole sequence, for every
// attention variant (MHA, GQA, biases, Qwen3 q/k norm with its own head_dim,
// Mistral's sliding window, llama3 rope scaling, tied head); the same for
// GPT's cache (batch of 2, bias and no bias).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "lowmem/models/gpt.h"
#include "lowmem/models/llama.h"

namespace {

using namespace lowmem::models;  // NOLINT
using torch::indexing::Slice;

LlamaConfig base() {
  return LlamaConfig()
      .vocab_size(64)
      .hidden_size(32)
      .intermediate_size(48)
      .num_attention_heads(4)
      .num_hidden_layers(2)
      .max_position_embeddings(24);
}

struct Variant {
  const char* name;
  LlamaConfig config;
};

std::vector<Variant> variants() {
  RopeScaling llama3;
  llama3.rope_type("llama3").factor(8.0).original_max_position_embeddings(8);
  return {
      {"mha", base()},
      {"gqa_bias", base().num_key_value_heads(2).qkv_bias(true)},
      {"qwen3", base().num_key_value_heads(1).head_dim(12).qk_norm(true)},
      {"sliding", base().num_key_value_heads(2).sliding_window(3)},
      {"llama3_tied",
       base().rope_scaling(llama3).tie_word_embeddings(true).attention_bias(
           true)},
  };
}

std::string cache_error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(LlamaKVCache, ChunkedCachedForwardEqualsFullForward) {
  for (const auto& v : variants()) {
    SCOPED_TRACE(v.name);
    torch::manual_seed(1);
    Llama m(v.config);
    torch::NoGradGuard no_grad;
    auto idx = torch::randint(0, 64, {2, 20}, torch::kLong);
    const auto full = m.forward(idx);
    auto cache = m.make_cache(2, 24);
    EXPECT_EQ(cache.keys[0].sizes(),
              (std::vector<int64_t>{2, resolved_kv_heads(v.config), 24,
                                    resolved_head_dim(v.config)}));
    // A prompt of 7, then 1, 1, 4, 1, ... tokens.
    std::vector<at::Tensor> parts;
    int64_t pos = 0;
    for (int64_t n : {7, 1, 1, 4, 1, 6}) {
      parts.push_back(
          m.forward(idx.index({Slice(), Slice(pos, pos + n)}), cache));
      pos += n;
      EXPECT_EQ(cache.length, pos);
    }
    const auto cached = torch::cat(parts, 1);
    EXPECT_TRUE(torch::allclose(cached, full, 1e-5, 1e-5))
        << (cached - full).abs().max().item<double>();
    EXPECT_TRUE(torch::equal(cached.argmax(-1), full.argmax(-1)));
  }
}

TEST(LlamaKVCache, Bf16CachedForwardFollowsFullForward) {
  torch::manual_seed(2);
  Llama m(base().num_key_value_heads(2).dtype(torch::kBFloat16));
  torch::NoGradGuard no_grad;
  auto idx = torch::randint(0, 64, {1, 12}, torch::kLong);
  const auto full = m.forward(idx);
  auto cache = m.make_cache(1, 12);
  EXPECT_EQ(cache.keys[0].scalar_type(), torch::kBFloat16);
  auto a = m.forward(idx.index({Slice(), Slice(0, 5)}), cache);
  auto b = m.forward(idx.index({Slice(), Slice(5, 12)}), cache);
  const auto cached = torch::cat({a, b}, 1);
  EXPECT_EQ(cached.scalar_type(), torch::kBFloat16);
  // Both round to bf16 at every op; the summation orders differ.
  EXPECT_TRUE(torch::allclose(cached.to(torch::kFloat), full.to(torch::kFloat),
                              3e-2, 3e-2))
      << (cached - full).abs().max().item<double>();
}

TEST(LlamaKVCache, ResetAndRefusals) {
  torch::manual_seed(3);
  Llama m(base());
  torch::NoGradGuard no_grad;
  auto idx = torch::randint(0, 64, {1, 6}, torch::kLong);
  auto cache = m.make_cache(1, 8);
  EXPECT_EQ(cache.bytes(), 2 * 2 * 1 * 4 * 8 * 8 * 4);
  const auto first = m.forward(idx, cache);
  cache.reset();
  EXPECT_TRUE(torch::equal(m.forward(idx, cache), first));
  EXPECT_NE(cache_error_of([&] { m.forward(idx, cache); })
                .find("the KV cache holds 8 positions; 6 are filled and 6 "
                      "more do not fit"),
            std::string::npos);
  auto two = m.make_cache(2, 8);
  EXPECT_NE(cache_error_of([&] {
              m.forward(idx, two);
            }).find("the KV cache holds 2 rows, the input has 1"),
            std::string::npos);
  EXPECT_NE(cache_error_of([&] {
              m.make_cache(1, 25);
            }).find("max_position_embeddings 24"),
            std::string::npos);
  LlamaKVCache empty;
  EXPECT_NE(cache_error_of([&] {
              m.forward(idx, empty);
            }).find("the KV cache has 0 layers, the model 2"),
            std::string::npos);
}

TEST(GptKVCache, ChunkedCachedForwardEqualsFullForward) {
  for (bool bias : {true, false}) {
    SCOPED_TRACE(bias ? "bias" : "no bias");
    torch::manual_seed(4);
    GPT m(GPTConfig()
              .n_layer(2)
              .n_head(4)
              .n_embd(32)
              .block_size(24)
              .vocab_size(64)
              .bias(bias));
    m.eval();
    torch::NoGradGuard no_grad;
    for (auto& p : m.parameters()) p.normal_(0, 0.3);
    auto idx = torch::randint(0, 64, {2, 20}, torch::kLong);
    const auto full = m.forward(idx);
    auto cache = m.make_cache(2, 24);
    EXPECT_EQ(cache.keys[1].sizes(), (std::vector<int64_t>{8, 24, 8}));
    std::vector<at::Tensor> parts;
    int64_t pos = 0;
    for (int64_t n : {7, 1, 1, 4, 1, 6}) {
      parts.push_back(
          m.forward(idx.index({Slice(), Slice(pos, pos + n)}), cache));
      pos += n;
      EXPECT_EQ(cache.length, pos);
    }
    const auto cached = torch::cat(parts, 1);
    EXPECT_TRUE(torch::allclose(cached, full, 1e-5, 1e-5))
        << (cached - full).abs().max().item<double>();
    EXPECT_TRUE(torch::equal(cached.argmax(-1), full.argmax(-1)));
    cache.reset();
    EXPECT_TRUE(torch::allclose(m.forward(idx, cache), full, 1e-5, 1e-5));
  }
}

TEST(GptKVCache, Refusals) {
  torch::manual_seed(5);
  GPT m(
      GPTConfig().n_layer(1).n_head(2).n_embd(16).block_size(8).vocab_size(32));
  torch::NoGradGuard no_grad;
  auto idx = torch::randint(0, 32, {1, 6}, torch::kLong);
  auto cache = m.make_cache(1, 8);
  m.forward(idx, cache);
  EXPECT_NE(cache_error_of([&] { m.forward(idx, cache); })
                .find("the KV cache holds 8 positions; 6 are filled and 6 "
                      "more do not fit"),
            std::string::npos);
  auto two = m.make_cache(2, 8);
  EXPECT_NE(cache_error_of([&] {
              m.forward(idx, two);
            }).find("the KV cache holds 2 rows, the input has 1"),
            std::string::npos);
  EXPECT_NE(cache_error_of([&] { m.make_cache(1, 9); }).find("block_size 8"),
            std::string::npos);
  GPTKVCache empty;
  EXPECT_NE(cache_error_of([&] {
              m.forward(idx, empty);
            }).find("the KV cache has 0 blocks, the model 1"),
            std::string::npos);
}

}  // namespace
