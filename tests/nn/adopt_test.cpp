// nn::adopt_linears: a plain LibTorch Sequential's torch::nn::Linear entries
// become nn::Linear slots sharing the same tensors (same outputs, same
// parameter names), visible to find_slots and find_curvature_layers; a
// torch::nn::Linear held by a typed member is refused, saying what to change.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "lowmem/nn/curvature_tap.h"
#include "lowmem/nn/slot_module.h"
#include "testing/errors.h"

namespace {

namespace nn = lowmem::nn;

TEST(Adopt, SequentialLinearsBecomeSlotsSharingTheirTensors) {
  torch::manual_seed(0);
  torch::nn::Sequential seq(
      torch::nn::Linear(4, 8), torch::nn::Tanh(),
      torch::nn::Linear(torch::nn::LinearOptions(8, 2).bias(false)));
  const auto x = torch::randn({3, 4});
  const auto before = seq->forward(x);
  const auto w0 = seq->named_parameters()["0.weight"];
  EXPECT_TRUE(nn::find_slots(*seq).empty());
  EXPECT_EQ(nn::adopt_linears(*seq), 2);
  EXPECT_TRUE(at::equal(seq->forward(x), before));
  // Same tensors, same names: optimizers and checkpoints built before still
  // see them.
  auto names = seq->named_parameters();
  EXPECT_EQ(names.size(), 3u);
  EXPECT_TRUE(names["0.weight"].is_same(w0));
  EXPECT_FALSE(names.contains("2.bias"));
  auto slots = nn::find_slots(*seq);
  ASSERT_EQ(slots.size(), 2u);
  EXPECT_EQ(slots[0].path, "0");
  EXPECT_EQ(slots[1].path, "2");
  EXPECT_TRUE(slots[0].layer()->base_weight().is_same(w0));
  EXPECT_EQ(nn::find_curvature_layers(*seq).size(), 2u);
  // A replaced slot runs in the Sequential's forward.
  auto zero = std::make_shared<nn::Linear>(torch::zeros({2, 8}));
  slots[1].replace(zero);
  EXPECT_TRUE(at::equal(seq->forward(x), torch::zeros({3, 2})));
  EXPECT_TRUE(seq->named_parameters()["2.weight"].is_same(zero->base_weight()));
  EXPECT_EQ(nn::adopt_linears(*seq), 0);  // nothing left to adopt
}

struct Typed : torch::nn::Module {
  Typed() : fc(register_module("fc", torch::nn::Linear(4, 4))) {}
  torch::nn::Linear fc;
};

TEST(Adopt, ALinearHeldByATypedMemberIsRefusedWithTheFix) {
  struct Net : torch::nn::Module {
    Net() {
      register_module("block", std::make_shared<Typed>());
      register_module("seq", torch::nn::Sequential(torch::nn::Linear(4, 4)));
    }
  } net;
  lowmem::testing::expect_error_containing(
      [&] { nn::adopt_linears(net); },
      "cannot adopt torch::nn::Linear 'block.fc': its parent calls it "
      "through its own handle");
  lowmem::testing::expect_error_containing([&] { nn::adopt_linears(net); },
                                           "lowmem::nn::SlotModule");
  // Nothing was changed: the Sequential's entry is still torch's.
  EXPECT_TRUE(nn::find_slots(net).empty());
}

}  // namespace
