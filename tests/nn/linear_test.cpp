// nn::Linear built from given tensors: no init, no copy, checked shapes.
#include "lowmem/nn/linear.h"

#include <gtest/gtest.h>

#include "testing/errors.h"

namespace {

using lowmem::nn::Linear;
using lowmem::testing::expect_error_containing;

TEST(Linear, WrapsGivenTensorsWithoutCopyOrInit) {
  at::Tensor w = at::randn({3, 5}).to(at::kBFloat16);
  at::Tensor b = at::randn({3}).to(at::kBFloat16);
  const at::Tensor w0 = w.clone(), b0 = b.clone();
  Linear l(w, b);
  EXPECT_EQ(l.in_features(), 5);
  EXPECT_EQ(l.out_features(), 3);
  EXPECT_EQ(l.base_weight().data_ptr(), w.data_ptr());  // the same storage
  EXPECT_TRUE(at::equal(l.base_weight(), w0));           // not re-drawn
  EXPECT_TRUE(at::equal(l.bias(), b0));
  EXPECT_EQ(l.base_weight().scalar_type(), at::kBFloat16);
  EXPECT_TRUE(l.base_weight().requires_grad());
  EXPECT_EQ(l.named_parameters().size(), 2u);
  const at::Tensor x = at::randn({4, 5}).to(at::kBFloat16);
  EXPECT_TRUE(at::equal(l.forward(x), at::linear(x, w0, b0)));
  Linear no_bias(at::randn({2, 4}));
  EXPECT_FALSE(no_bias.bias().defined());
  EXPECT_EQ(no_bias.named_parameters().size(), 1u);
}

TEST(Linear, WrappedTensorsAreChecked) {
  expect_error_containing([] { Linear l(at::Tensor{}); }, "[linear] weight must be");
  expect_error_containing([] { Linear l(at::randn({4})); }, "got [4]");
  expect_error_containing([] { Linear l(at::randn({0, 3})); }, "got [0, 3]");
  expect_error_containing([] { Linear l(at::randn({2, 3}), at::randn({3})); },
                          "bias must be [2], got [3]");
  expect_error_containing(
      [] { Linear l(at::randn({2, 3}), at::randn({2}).to(at::kDouble)); },
      "bias must have the weight's dtype");
}

}  // namespace
