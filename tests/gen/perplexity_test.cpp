// gen::perplexity: windows that do not overlap, each token predicted once,
// masked tokens not counted; the sums equal a direct log-softmax computation.
#include "lowmem/gen/perplexity.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "lowmem/models/llama.h"

namespace {

using namespace lowmem;  // NOLINT

// -log p(ids[t] | ids[from..t-1]) by hand from the logits of one forward.
double nll(models::Llama& m, const std::vector<int64_t>& ids, int64_t from,
           int64_t t) {
  torch::NoGradGuard no_grad;
  std::vector<int64_t> in(ids.begin() + from, ids.begin() + t);
  auto logits = m.forward(torch::tensor(in, torch::kLong).view({1, -1}));
  return -torch::log_softmax(logits[0][-1], -1)[ids[static_cast<size_t>(t)]]
              .item<double>();
}

TEST(Perplexity, WindowsMaskAndHandComputedLoss) {
  torch::manual_seed(21);
  models::Llama m(models::LlamaConfig()
                      .vocab_size(30)
                      .hidden_size(16)
                      .intermediate_size(24)
                      .num_attention_heads(2)
                      .num_hidden_layers(1)
                      .max_position_embeddings(16));
  const std::vector<int64_t> ids = {1, 5, 9, 2, 7, 7, 3, 11, 4, 8};
  gen::PerplexityResult r;
  gen::add_sample(m, ids, {}, 4, r);
  EXPECT_EQ(r.windows, 3);  // inputs 0..3, 4..7, 8
  EXPECT_EQ(r.tokens, 9);
  double want = 0.0;
  for (int64_t t = 1; t < 10; ++t) want += nll(m, ids, (t - 1) / 4 * 4, t);
  EXPECT_NEAR(r.loss_sum, want, 1e-4);
  EXPECT_NEAR(r.perplexity(), std::exp(want / 9), 1e-4);
  // Only tokens 6..9 counted: the first window is skipped.
  std::vector<uint8_t> mask = {0, 0, 0, 0, 0, 0, 1, 1, 1, 1};
  gen::PerplexityResult masked;
  gen::add_sample(m, ids, mask, 4, masked);
  EXPECT_EQ(masked.windows, 2);
  EXPECT_EQ(masked.tokens, 4);
  double want_masked = 0.0;
  for (int64_t t = 6; t < 10; ++t)
    want_masked += nll(m, ids, (t - 1) / 4 * 4, t);
  EXPECT_NEAR(masked.loss_sum, want_masked, 1e-4);
}

}  // namespace
