// The path bench/llama_step.cpp takes for the 7B step, on a tiny LLaMA: bf16
// weights, activation checkpointing, GaLore layer-wise with a seeded random
// basis that is never stored, GaLoreAdamW (fp32 state) inner for the matrices
// and for the embeddings / norms / lm_head.
#include <torch/torch.h>

#include <gtest/gtest.h>

#include "lowmem/models/llama.h"
#include "lowmem/optim/galore.h"
#include "lowmem/optim/galore_adamw.h"

namespace {

namespace lo = lowmem::optim;
namespace lm = lowmem::models;

std::unique_ptr<lo::GaLore> galore_for(lm::Llama& m, bool layerwise) {
  auto [projected, plain] = lo::GaLore::route(m);
  return std::make_unique<lo::GaLore>(
      projected,
      plain,
      [](std::vector<torch::optim::OptimizerParamGroup> g) {
        return std::make_unique<lo::GaLoreAdamW>(
            std::move(g), lo::GaLoreAdamWOptions(1e-2));
      },
      lo::GaLoreOptions()
          .projector(lowmem::projection::ProjectorOptions()
                         .rank(4)
                         .basis("gaussian")
                         .cache_sketch(false)
                         .seed(7))
          .layerwise(layerwise));
}

TEST(GaLoreLlama, BFloat16LayerwiseCheckpointedEqualsPlainSteps) {
  auto cfg = lm::LlamaConfig()
                 .vocab_size(64)
                 .hidden_size(16)
                 .intermediate_size(24)
                 .num_attention_heads(2)
                 .num_hidden_layers(2)
                 .dtype(torch::kBFloat16);
  torch::manual_seed(0);
  lm::Llama a(cfg);  // plain GaLore step, activations stored
  torch::manual_seed(0);
  lm::Llama b(lm::LlamaConfig(cfg).activation_checkpointing(true));
  auto ga = galore_for(a, false), gb = galore_for(b, true);
  EXPECT_EQ(ga->num_projected(), 14u);  // 7 slots x 2 layers
  auto before = a.named_parameters()["model.layers.1.mlp.up_proj.weight"].clone();
  for (int t = 0; t < 3; ++t) {
    auto idx = torch::randint(0, 64, {2, 10}, torch::kLong);
    ga->zero_grad();
    a.loss(idx, idx.roll(1, 1)).backward();
    ga->step();
    gb->zero_grad();
    b.loss(idx, idx.roll(1, 1)).backward();
    gb->step();  // no-op: every param was updated inside backward
    for (auto& p : b.parameters()) {
      EXPECT_FALSE(p.grad().defined());
    }
  }
  EXPECT_EQ(gb->max_live_full_grads(), 1);
  auto pa = a.named_parameters();
  for (const auto& kv : b.named_parameters()) {
    EXPECT_EQ(kv.value().scalar_type(), torch::kBFloat16) << kv.key();
    EXPECT_TRUE(torch::equal(kv.value(), pa[kv.key()])) << kv.key();
  }
  EXPECT_FALSE(torch::equal(
      before, pa["model.layers.1.mlp.up_proj.weight"]));
  // State fp32, and no stored basis (the sketch is regenerated from its
  // seed): only the inner moments remain, r-sized for the matrices.
  int64_t state_elems = 0;
  for (const auto& t : gb->state_tensors()) {
    if (t.numel() == 0)
      continue;
    EXPECT_EQ(t.scalar_type(), torch::kFloat);
    state_elems += t.numel();
  }
  // Moments (x2) of embed + lm_head + 5 norms (full size), and of every
  // projected slot: m x r for m >= n (std: right side), else r x n.
  int64_t want = 2 * (2 * 64 * 16 + 5 * 16);
  for (const auto& ref : lowmem::nn::find_slots(b)) {
    auto w = ref.layer()->base_weight();
    const int64_t m = w.size(0), n = w.size(1);
    want += 2 * (m >= n ? m * 4 : 4 * n);
  }
  EXPECT_EQ(state_elems, want);
}

}  // namespace
