// A user's plain LibTorch model -- a torch::nn::Sequential of
// torch::nn::Linear, no lowmem module anywhere -- trains with GaLore-AdamW
// (parameters chosen by name through train/routing, no slots needed), with
// LoRA (through nn::adopt_linears) and with SINGD (idem), all by the Trainer.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "lowmem/adapters/lora.h"
#include "lowmem/nn/slot_module.h"
#include "lowmem/optim/adamw.h"
#include "lowmem/optim/galore.h"
#include "lowmem/optim/galore_adamw.h"
#include "lowmem/optim/singd.h"
#include "lowmem/train/routing.h"
#include "lowmem/train/run.h"
#include "lowmem/train/trainer.h"
#include "testing/files.h"
#include "train/tiny.h"

namespace {

namespace lo = lowmem::optim;
namespace lt = lowmem::train;

torch::nn::Sequential plain_mlp() {
  torch::manual_seed(0);
  return torch::nn::Sequential(torch::nn::Linear(4, 16), torch::nn::Tanh(),
                               torch::nn::Linear(16, 16), torch::nn::Tanh(),
                               torch::nn::Linear(16, 1));
}

std::vector<std::pair<std::string, at::Tensor>> named(torch::nn::Module& m) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& kv : m.named_parameters())
    out.emplace_back(kv.key(), kv.value());
  return out;
}

// Trains `slots` on the tiny regression task; returns (first, last) loss.
std::pair<double, double> fit(torch::nn::Sequential seq,
                              std::vector<lt::OptimizerSlot> slots,
                              int64_t steps = 40) {
  lt::TrainerOptions o;
  o.max_steps = steps;
  o.clip_norm = 0;
  lt::Trainer trainer(
      seq.ptr(),
      [seq](const lowmem::data::Batch& b) mutable {
        return torch::mse_loss(seq->forward(b.input), b.target);
      },
      std::move(slots), o);
  lowmem::testing::RegressionSource data(16);
  const double first = trainer.step(data).loss;
  double last = first;
  for (int64_t i = 1; i < steps; ++i) last = trainer.step(data).loss;
  return {first, last};
}

TEST(PlainModel, SequentialOfLinearsTrainsWithGaLoreAdamW) {
  auto seq = plain_mlp();
  // GaLore takes the weights by name: "<index>.weight" of 2+ dims.
  lt::RouteRule weights;
  weights.target = "galore";
  weights.pattern = "\\.weight$";
  weights.min_dim = 2;
  lt::RouteRule rest;
  rest.target = "adamw";
  const auto routes = lt::route_parameters(named(*seq), {weights, rest});
  ASSERT_EQ(routes.size(), 2u);
  EXPECT_EQ(routes[0].names,
            (std::vector<std::string>{"0.weight", "2.weight", "4.weight"}));
  auto inner = [](std::vector<torch::optim::OptimizerParamGroup> g) {
    return std::unique_ptr<torch::optim::Optimizer>(
        new lo::GaLoreAdamW(std::move(g), lo::GaLoreAdamWOptions(1e-2)));
  };
  auto galore = std::make_shared<lo::GaLore>(
      routes[0].params, std::vector<at::Tensor>{}, inner,
      lo::GaLoreOptions().projector(
          lowmem::projection::ProjectorOptions().rank(2).update_proj_gap(10)));
  EXPECT_EQ(galore->num_projected(), 3u);
  auto adamw =
      std::make_shared<lo::AdamW>(routes[1].params, lo::AdamWOptions(1e-2));
  // Rank 2 of 16 moves slower than full AdamW: 120 steps.
  const auto [first, last] = fit(
      seq,
      {{"galore", galore, routes[0].names}, {"adamw", adamw, routes[1].names}},
      120);
  EXPECT_LT(last, 0.5 * first);
  // The projected weights' inner state is low-rank.
  EXPECT_EQ(galore->projector(1).low_rank_shape(),
            (std::vector<int64_t>{16, 2}));
}

TEST(PlainModel, SequentialOfLinearsTrainsWithLoraThroughAdoption) {
  auto seq = plain_mlp();
  EXPECT_EQ(lowmem::nn::adopt_linears(*seq), 3);
  const auto w2 = seq->named_parameters()["2.weight"].detach().clone();
  auto lora = lowmem::adapters::inject_lora(
      seq.ptr(), lowmem::adapters::TargetOptions({"0", "2"}),
      lowmem::adapters::LoraOptions().r(2).lora_alpha(4));
  EXPECT_EQ(lora->layers().size(), 2u);
  auto names = seq->named_parameters();
  EXPECT_TRUE(names.contains("2.base_layer.weight"));  // PEFT's names
  EXPECT_TRUE(names.contains("2.lora_A.weight"));
  auto opt = std::make_shared<lo::AdamW>(
      lora->trainable_parameters(), lo::AdamWOptions(3e-2).weight_decay(0));
  const auto [first, last] = fit(seq, {{"adamw", opt, {}}});
  EXPECT_LT(last, 0.8 * first);
  // Only the adapters trained: the base weight is untouched.
  EXPECT_TRUE(at::equal(seq->named_parameters()["2.base_layer.weight"], w2));
}

TEST(PlainModel, SequentialOfLinearsTrainsWithSingdThroughAdoption) {
  auto seq = plain_mlp();
  lowmem::nn::adopt_linears(*seq);
  auto singd = std::make_shared<lo::SINGD>(*seq, lo::SingdOptions(1e-2));
  EXPECT_EQ(singd->layers().size(), 3u);
  const auto [first, last] = fit(seq, {{"singd", singd, {}}});
  EXPECT_LT(last, 0.8 * first);
}

// lowmem train's galore.targets: a regex over parameter names picks what
// GaLore projects (any rank >= 2), the rest goes to the aux optimizer.
TEST(PlainModel, GaloreTargetsChooseParametersByName) {
  const auto dir = lowmem::testing::fresh_temp_dir("galore_targets");
  const auto corpus = dir / "corpus.txt";
  {
    std::ofstream f(corpus);
    for (int i = 0; i < 200; ++i) f << "sphinx of black quartz, judge my vow\n";
  }
  lt::Config c;
  c.set("text.path", corpus.string());
  c.set("gpt.n_layer", "2");
  c.set("gpt.n_head", "2");
  c.set("gpt.n_embd", "16");
  c.set("gpt.block_size", "16");
  c.set("method", "galore");
  c.set("galore.targets", "mlp\\.fc\\.weight$");
  c.set("galore.rank", "4");
  c.batch_size = 4;
  c.threads = 1;
  auto s = lt::build_session(c);
  ASSERT_EQ(s->routes.size(), 2u);
  EXPECT_EQ(s->routes[0].target, "galore");
  EXPECT_EQ(s->routes[0].names, (std::vector<std::string>{
                                    "h.0.mlp.fc.weight", "h.1.mlp.fc.weight"}));
  EXPECT_EQ(s->routes[1].target, "adamw");
  auto* g =
      dynamic_cast<lo::GaLore*>(s->trainer->optimizers()[0].optimizer.get());
  ASSERT_NE(g, nullptr);
  EXPECT_EQ(g->num_projected(), 2u);
  EXPECT_TRUE(std::isfinite(s->trainer->step(*s->train_data).loss));
}

}  // namespace
