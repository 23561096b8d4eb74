// Adapters on a 4-bit NF4 base (nn/nf4.h, QLoRA's setting): LoRA, LoTR,
// SNELL and the projected adapter train on a quantized TinyModel (the loss
// of a regression onto a dense teacher falls, the 4-bit storage is not
// touched), and merging into the 4-bit base fails with a message that says what
// to do.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>

#include "lowmem/adapters/lora.h"
#include "lowmem/adapters/lotr.h"
#include "lowmem/adapters/snell.h"
#include "lowmem/nn/nf4.h"
#include "lowmem/projection/projected_linear.h"
#include "tiny_model.h"

namespace lowmem::adapters {
namespace {

using testing::error_of;
using testing::TinyModel;

std::shared_ptr<TinyModel> quantized_model(int64_t d) {
  torch::manual_seed(7);
  auto m = std::make_shared<TinyModel>(d);
  const int64_t n =
      nn::quantize_linears_nf4(*m, [](const std::string&) { return true; });
  EXPECT_EQ(n, 8);  // 2 blocks x {q, v, up, down}; the head is no slot
  return m;
}

std::map<std::string, at::Tensor> storage(torch::nn::Module& m) {
  std::map<std::string, at::Tensor> out;
  for (const auto& b : m.named_buffers()) out[b.key()] = b.value().clone();
  return out;
}

// Trains `params` for 40 Adam steps on a regression onto a dense teacher's
// output; returns (first loss, last loss).
std::pair<double, double> train(TinyModel& m,
                                const std::vector<at::Tensor>& params,
                                const std::function<void()>& before_step = {}) {
  torch::manual_seed(8);
  TinyModel teacher(16);
  const auto x = torch::randn({64, 16});
  at::Tensor target;
  {
    at::NoGradGuard g;
    target = teacher.forward(x);
  }
  torch::optim::Adam opt(params, torch::optim::AdamOptions(1e-2));
  double first = 0, last = 0;
  for (int step = 0; step < 40; ++step) {
    if (before_step) before_step();
    opt.zero_grad();
    auto loss = torch::mse_loss(m.forward(x), target);
    loss.backward();
    opt.step();
    (step == 0 ? first : last) = loss.item<double>();
  }
  return {first, last};
}

void expect_trains(TinyModel& m, AdapterModel& a) {
  const auto before = storage(m);
  ASSERT_FALSE(before.empty());
  // Only the adapters (and the unquantized head's frozen weights) remain.
  for (const auto& p : a.trainable_parameters()) EXPECT_TRUE(p.requires_grad());
  auto [first, last] = train(m, a.trainable_parameters());
  EXPECT_LT(last, 0.7 * first) << first << " -> " << last;
  for (const auto& [name, t] : storage(m))
    EXPECT_TRUE(torch::equal(t, before.at(name))) << name;
}

TEST(Nf4Base, LoraTrains) {
  auto m = quantized_model(16);
  auto lora = inject_lora(m, TargetOptions({"q", "v", "up", "down"}),
                          LoraOptions(4).lora_alpha(8));
  expect_trains(*m, *lora);
}

TEST(Nf4Base, LotrTrains) {
  auto m = quantized_model(16);
  auto lotr = inject_lotr(m, TargetOptions({"q", "v"}), LotrOptions(4));
  expect_trains(*m, *lotr);
}

TEST(Nf4Base, SnellTrains) {
  auto m = quantized_model(16);
  auto snell = inject_snell(m, TargetOptions({"q", "v", "up", "down"}),
                            SnellOptions(4).dropout(0).drop_path(0));
  expect_trains(*m, *snell);
}

TEST(Nf4Base, MergingIntoTheFourBitBaseIsAnErrorThatSaysWhatToDo) {
  auto m = quantized_model(16);
  auto lora = inject_lora(m, TargetOptions({"q"}), LoraOptions(4));
  const std::string msg = error_of([&] { lora->merge(); });
  EXPECT_NE(msg.find("cannot merge into a 4-bit (NF4) base weight"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("Merge into a bf16 copy of the base"), std::string::npos)
      << msg;
  EXPECT_FALSE(lora->merged());
  EXPECT_NE(error_of([&] { lora->merge_and_unload(); }), "");
  // Unloading (no merge) still works and gives the NF4 layers back.
  lora->unload();
  EXPECT_TRUE(m->list[0]->as<testing::TinyBlock>()->linear("q").is_quantized());
}

TEST(Nf4Base, ProjectedAdapterTrainsAndRefreshesIntoTheFourBitBase) {
  auto m = quantized_model(16);
  auto o = projection::ProjectorOptions()
               .rank(4)
               .basis("gaussian")
               .update_proj_gap(20);
  std::vector<std::shared_ptr<projection::ProjectedLinear>> layers =
      projection::inject_projected(*m, o);
  ASSERT_EQ(layers.size(), 8u);
  std::vector<at::Tensor> params;
  for (auto& l : layers) {
    EXPECT_TRUE(l->is_quantized());
    l->rebase({});  // the first basis (a sketch needs no gradient)
    params.push_back(l->a());
  }
  // Only A trains (the bases' biases stay as they are).
  for (auto& p : m->parameters()) p.set_requires_grad(false);
  for (auto& p : params) p.set_requires_grad(true);
  // A refresh at step 20 merges A into the 4-bit weight (re-quantized).
  int step = 0;
  auto [first, last] = train(*m, params, [&] {
    if (++step == 21) {
      for (auto& l : layers) l->rebase({});
    }
  });
  EXPECT_LT(last, 0.7 * first) << first << " -> " << last;
  // svd/rsvd need the full gradient of a dense weight.
  auto m2 = quantized_model(16);
  const std::string msg = error_of([&] {
    projection::inject_projected(*m2, projection::ProjectorOptions().rank(4));
  });
  EXPECT_NE(msg.find("quantized (NF4) base"), std::string::npos) << msg;
}

}  // namespace
}  // namespace lowmem::adapters
