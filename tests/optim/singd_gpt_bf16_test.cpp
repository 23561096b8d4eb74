// SINGD with K and C in bf16 on a tiny GPT (lowmem::models::GPT): the Kronecker
// factors are stored and updated in bf16 and training stays finite and close
// to the fp32-factor run; KFAC with bf16 factors on the same GPT is compared
// (arXiv 2312.05705 Fig. 1 / Sec. 3). Uncovered parameters (embeddings,
// LayerNorms) go to AdamW as the trainer routes them.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "lowmem/models/gpt.h"
#include "lowmem/nn/curvature_tap.h"
#include "lowmem/optim/extras.h"
#include "lowmem/optim/kfac.h"
#include "lowmem/optim/singd.h"

namespace {

namespace lm = lowmem::models;
namespace lo = lowmem::optim;

struct GptRun {
  double first_loss = 0;
  double final_loss = 0;  // mean of the last 5 steps
  bool finite = true;
};

// Sequences x_t = (s + 7 t) mod 31 (one random start s per row): the next
// token is a fixed function of the current one, learnable in a few steps.
std::pair<at::Tensor, at::Tensor> batch(int64_t b, int64_t t) {
  at::Tensor s = torch::randint(31, {b, 1}, torch::kLong);
  at::Tensor seq = (s + 7 * torch::arange(t + 1, torch::kLong).unsqueeze(0)) % 31;
  return {seq.narrow(1, 0, t), seq.narrow(1, 1, t)};
}


// `make` builds the curvature optimizer for the GPT's block linears.
template <class Make>
GptRun train_gpt(Make make, int steps) {
  torch::manual_seed(0);
  lm::GPT gpt(lm::GPTConfig().n_layer(2).n_head(2).n_embd(32).block_size(16).vocab_size(32));
  auto split = lowmem::nn::split_curvature_parameters(gpt);
  std::vector<at::Tensor> rest;
  for (auto& kv : split.uncovered) rest.push_back(kv.second);
  std::shared_ptr<torch::optim::Optimizer> curv = make(gpt);
  torch::optim::AdamW adamw(rest, torch::optim::AdamWOptions(3e-3).weight_decay(0));
  torch::manual_seed(1);
  GptRun r;
  double tail = 0;
  for (int s = 0; s < steps; ++s) {
    auto [x, y] = batch(8, 16);
    lo::before_forward(*curv);
    at::Tensor loss = gpt.loss(x, y);
    curv->zero_grad();
    adamw.zero_grad();
    loss.backward();
    double l = loss.item<double>();
    if (s == 0) r.first_loss = l;
    if (s >= steps - 5) tail += l / 5;
    if (!std::isfinite(l)) {
      r.finite = false;
      r.final_loss = l;
      return r;
    }
    curv->step();
    adamw.step();
  }
  for (const auto& p : gpt.parameters())
    if (!torch::isfinite(p).all().item<bool>()) r.finite = false;
  r.final_loss = tail;
  return r;
}

// T = 1 and 120 steps: KFAC's running factors start at the identity and
// decay by stat_decay = 0.95 per refresh, so only after ~100 refreshes are the
// damped inverses dominated by the (rounded) curvature. Damping 1e-4 and
// lr_cov 5e-3 for SINGD (lr_cov 5e-2 diverges in fp32 and bf16 alike).
constexpr int kSteps = 120;

GptRun singd(const char* dtype) {
  return train_gpt([&](torch::nn::Module& m) {
    return std::make_shared<lo::SINGD>(
        m, lo::SingdOptions(3e-3).T(1).lr_cov(5e-3).damping(1e-4).structures("dense")
               .preconditioner_dtype(dtype));
  }, kSteps);
}

GptRun kfac(const char* dtype) {
  return train_gpt([&](torch::nn::Module& m) {
    return std::make_shared<lo::KFAC>(
        m, lo::KfacOptions(3e-3).T(1).damping(1e-4).factor_dtype(dtype));
  }, kSteps);
}

// Measured (this setup; two other seeds of data and init agree to a few %):
// SINGD fp32 3.49 -> 0.189, bf16 -> 0.175; KFAC fp32 -> 0.798, bf16 -> 3.44
// (no progress). See docs/singd.md.
TEST(GptHalfPrecisionFactors, SingdTrainsInBf16WhileKfacStalls) {
  GptRun s32 = singd("float32"), s16 = singd("bfloat16");
  GptRun k32 = kfac("float32"), k16 = kfac("bfloat16");
  ASSERT_TRUE(s32.finite && s16.finite && k32.finite);
  EXPECT_LT(s32.final_loss, 0.2 * s32.first_loss);
  EXPECT_LT(s16.final_loss, 0.2 * s16.first_loss);
  EXPECT_LT(s16.final_loss, 1.25 * s32.final_loss)
      << "singd fp32 " << s32.final_loss << " bf16 " << s16.final_loss;
  EXPECT_LT(k32.final_loss, 0.5 * k32.first_loss);
  EXPECT_TRUE(!k16.finite ||
              (k16.final_loss > 0.8 * k16.first_loss && k16.final_loss > 2.0 * k32.final_loss))
      << "kfac fp32 " << k32.final_loss << " bf16 " << k16.final_loss << " (first "
      << k16.first_loss << ")";
}

}  // namespace
