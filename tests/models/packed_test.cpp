// Packed rows (models::PackedLayout) in the GPT: several samples in one row
// with a block-diagonal causal mask and per-sample positions give each
// sample the loss and gradients it has alone.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "lowmem/models/gpt.h"
#include "testing/errors.h"

namespace lowmem::testing {
namespace {

using models::GPT;
using models::GPTConfig;
using models::kIgnoreIndex;
using models::PackedLayout;

struct Packed {
  at::Tensor input, target, segments, positions;
  std::vector<at::Tensor> alone_input, alone_target;
};

// Samples of lengths `lens` packed into one row of `T` (padding after them
// is a segment of its own with ignored targets).
Packed pack(const std::vector<int64_t>& lens, int64_t T, int64_t vocab) {
  Packed p;
  p.input = torch::zeros({1, T}, torch::kLong);
  p.target = torch::full({1, T}, kIgnoreIndex, torch::kLong);
  p.segments = torch::zeros({1, T}, torch::kLong);
  p.positions = torch::zeros({1, T}, torch::kLong);
  int64_t t = 0, seg = 0;
  for (const int64_t n : lens) {
    at::Tensor in = torch::randint(vocab, {1, n}, torch::kLong);
    at::Tensor tg = torch::randint(vocab, {1, n}, torch::kLong);
    tg[0][0] = kIgnoreIndex;  // a masked prompt token
    p.input.narrow(1, t, n).copy_(in);
    p.target.narrow(1, t, n).copy_(tg);
    p.segments.narrow(1, t, n).fill_(seg);
    p.positions.narrow(1, t, n).copy_(torch::arange(n).unsqueeze(0));
    p.alone_input.push_back(in);
    p.alone_target.push_back(tg);
    t += n;
    ++seg;
  }
  p.segments.narrow(1, t, T - t).fill_(seg);
  p.positions.narrow(1, t, T - t).copy_(torch::arange(T - t).unsqueeze(0));
  return p;
}

// One sample's targets kept, the others ignored.
at::Tensor only(const Packed& p, int64_t seg) {
  return torch::where(p.segments.eq(seg), p.target,
                      torch::full_like(p.target, kIgnoreIndex));
}

TEST(Packed, GptSamplesInOneRowHaveTheirLossesAndGradientsAlone) {
  for (const bool checkpointing : {false, true}) {
    torch::manual_seed(0);
    auto cfg = GPTConfig()
                   .n_layer(2)
                   .n_head(2)
                   .n_embd(16)
                   .block_size(16)
                   .vocab_size(50)
                   .activation_checkpointing(checkpointing);
    GPT model(cfg);
    const Packed p = pack({5, 7, 3}, 16, 50);
    const PackedLayout layout{p.segments, p.positions};
    for (int64_t s = 0; s < 3; ++s) {
      model.zero_grad();
      at::Tensor packed = model.loss(p.input, only(p, s), layout);
      packed.backward();
      std::vector<at::Tensor> g_packed;
      for (const auto& q : model.parameters())
        g_packed.push_back(q.grad().clone());
      model.zero_grad();
      at::Tensor alone = model.loss(p.alone_input[static_cast<size_t>(s)],
                                    p.alone_target[static_cast<size_t>(s)]);
      alone.backward();
      EXPECT_NEAR(packed.item<double>(), alone.item<double>(), 1e-5)
          << "sample " << s << " checkpointing " << checkpointing;
      const auto params = model.parameters();
      for (size_t i = 0; i < params.size(); ++i) {
        EXPECT_TRUE(torch::allclose(g_packed[i], params[i].grad(), 1e-4, 1e-6))
            << "sample " << s << " parameter " << i;
      }
      const auto stats = model.evaluate(p.input, only(p, s), layout);
      EXPECT_EQ(stats.count, p.alone_target[static_cast<size_t>(s)]
                                 .ne(kIgnoreIndex)
                                 .sum()
                                 .item<int64_t>());
      EXPECT_NEAR(stats.loss_sum / static_cast<double>(stats.count),
                  alone.item<double>(), 1e-5);
    }
    // Without the layout the same row is one sequence: sample 1 then sees
    // sample 0, so its loss differs (the mask is what keeps them apart).
    EXPECT_GT(std::abs(model.loss(p.input, only(p, 1)).item<double>() -
                       model.loss(p.input, only(p, 1), layout).item<double>()),
              1e-6);
  }
}

TEST(Packed, LayoutShapesAreChecked) {
  GPT model(GPTConfig().n_layer(1).n_head(1).n_embd(8).block_size(8));
  const auto idx = torch::zeros({2, 8}, torch::kLong);
  expect_error_containing(
      [&] {
        model.loss(idx, idx,
                   PackedLayout{torch::zeros({2, 7}, torch::kLong),
                                torch::zeros({2, 8}, torch::kLong)});
      },
      "[gpt] packed layout: segments [2, 7]");
}

}  // namespace
}  // namespace lowmem::testing
