// The adapters on the reference models (lowmem::models::GPT / ViT).
#include <gtest/gtest.h>

#include "lowmem/adapters/adapter_file.h"
#include "lowmem/adapters/inject.h"
#include "lowmem/adapters/lora.h"
#include "lowmem/adapters/lotr.h"
#include "lowmem/adapters/snell.h"
#include "lowmem/models/gpt.h"
#include "lowmem/models/vit.h"
#include "lowmem/nn/slot_module.h"

namespace {

using namespace lowmem::adapters;
using lowmem::models::GPT;
using lowmem::models::GPTConfig;

std::shared_ptr<GPT> small_gpt() {
  torch::manual_seed(0);
  return std::make_shared<GPT>(GPTConfig().n_layer(2).n_head(2).n_embd(16).block_size(8));
}

TEST(AdaptersOnModels, GptLoraCountsAndMerge) {
  auto gpt = small_gpt();
  const int64_t C = 16, r = 4, L = 2;
  at::Tensor idx = torch::randint(0, 256, {2, 8}, torch::kLong);
  at::Tensor base_out = gpt->forward(idx).detach();
  auto lora = inject_lora(gpt, TargetOptions({"qkv", "attn.proj"}), LoraOptions(r));
  ASSERT_EQ(lora->layers().size(), 4u);
  EXPECT_EQ(lora->layers()[0].path, "h.0.attn.proj");
  EXPECT_EQ(lora->num_trainable_parameters(), L * (r * (C + 3 * C) + r * (C + C)));
  EXPECT_TRUE(torch::equal(gpt->forward(idx), base_out));  // B = 0
  {
    torch::NoGradGuard g;
    for (auto& l : lora->layers()) static_cast<LoraLinear*>(l.layer.get())->lora_B().normal_(0, 0.2);
  }
  at::Tensor unmerged = gpt->forward(idx).detach();
  EXPECT_GT((unmerged - base_out).abs().max().item<double>(), 1e-3);
  gpt->loss(idx, idx).backward();  // gradients reach the adapters only
  for (const auto& p : gpt->named_parameters())
    EXPECT_EQ(p.value().grad().defined(), p.key().find(".lora_") != std::string::npos) << p.key();
  lora->merge_and_unload();
  EXPECT_LE((gpt->forward(idx) - unmerged).abs().max().item<double>(), 1e-5);
}

TEST(AdaptersOnModels, GptLotrGroupsPerProjectionType) {
  auto gpt = small_gpt();
  const int64_t C = 16, r = 3, L = 2;
  // attn.proj [C, C] and mlp.proj [C, 4C] share a slot name but not a group.
  auto lotr = inject_lotr(gpt, TargetOptions({"qkv", "proj"}), LotrOptions(r));
  ASSERT_EQ(lotr->groups().size(), 3u);
  std::vector<std::string> names;
  for (const auto& g : lotr->groups()) names.push_back(g->name());
  EXPECT_EQ(names, (std::vector<std::string>{"h_attn_proj", "h_attn_qkv", "h_mlp_proj"}));
  int64_t want = (r * (C + C) + L * r * r) + (r * (C + 3 * C) + L * r * r) +
                 (r * (4 * C + C) + L * r * r);
  EXPECT_EQ(lotr->num_trainable_parameters(), want);
  at::Tensor idx = torch::randint(0, 256, {2, 8}, torch::kLong);
  gpt->loss(idx, idx).backward();
  EXPECT_TRUE(lotr->groups()[0]->lhs.grad().defined());
}

TEST(AdaptersOnModels, VitSnellWithTrainableHeadRoundTrips) {
  torch::manual_seed(1);
  auto cfg = lowmem::models::ViTConfig().n_layer(1).n_embd(16).n_head(2).n_classes(5);
  auto vit = std::make_shared<lowmem::models::ViT>(cfg);
  auto snell = inject_snell(vit, TargetOptions({"qkv", "fc"}).modules_to_save({"head"}),
                            SnellOptions(4).sparsity(0.5));
  EXPECT_TRUE(snell->state_tensors().count("base_model.model.head.weight"));
  at::Tensor images = torch::randn({3, 1, 28, 28});
  vit->train();
  vit->forward(images).sum().backward();
  auto* l = static_cast<SnellLinear*>(snell->layers()[0].layer.get());
  EXPECT_TRUE(l->snell_A().grad().defined());
  vit->eval();
  at::Tensor out = vit->forward(images).detach();
  snell->merge();
  EXPECT_LE((vit->forward(images) - out).abs().max().item<double>(), 1e-5);
  snell->unmerge();
}

// Targets no slot matches: one short line naming the wanted modules and the
// slots' distinct names, not every slot path of a deep model.
TEST(AdaptersOnModels, MissingTargetsNameTheSlotNames) {
  torch::manual_seed(0);
  auto gpt = std::make_shared<GPT>(
      GPTConfig().n_layer(24).n_head(2).n_embd(8).block_size(8));
  try {
    find_targets(*gpt, TargetOptions().target_modules({"q_proj", "v_proj"}));
    ADD_FAILURE() << "targets that match nothing were accepted";
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    const size_t slots = lowmem::nn::find_slots(*gpt).size();
    EXPECT_GE(slots, 24u * 4);
    const size_t at = msg.find(
        "target modules {q_proj, v_proj} not found in "
        "the model; its " +
        std::to_string(slots) + " slots are named {");
    ASSERT_NE(at, std::string::npos) << msg;
    for (const char* name : {"qkv", "proj", "fc"})
      EXPECT_NE(msg.find(name, at), std::string::npos) << name;
    EXPECT_LT(msg.size(), 400u) << msg;
  }
}

}  // namespace
