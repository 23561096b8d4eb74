#include "lowmem/core/dtype.h"

#include <gtest/gtest.h>

namespace lowmem {
namespace {

TEST(DtypeNames, EverySpellingRoundTrips) {
  for (const auto t : {c10::kFloat, c10::kHalf, c10::kBFloat16, c10::kDouble}) {
    ASSERT_NE(dtype_long_name(t), nullptr);
    ASSERT_NE(dtype_short_name(t), nullptr);
    EXPECT_EQ(dtype_from_name(dtype_long_name(t)), t);
    EXPECT_EQ(dtype_from_name(dtype_short_name(t)), t);
  }
  EXPECT_STREQ(dtype_long_name(c10::kBFloat16), "bfloat16");
  EXPECT_STREQ(dtype_short_name(c10::kBFloat16), "bf16");
  EXPECT_EQ(dtype_from_name("half"), c10::kHalf);
  EXPECT_EQ(dtype_from_name("float"), c10::kFloat);
  EXPECT_EQ(dtype_from_name("double"), c10::kDouble);
}

TEST(DtypeNames, OthersAreAbsent) {
  EXPECT_EQ(dtype_long_name(c10::kInt), nullptr);
  EXPECT_EQ(dtype_short_name(c10::kLong), nullptr);
  EXPECT_FALSE(dtype_from_name("int8").has_value());
  EXPECT_FALSE(dtype_from_name("").has_value());
  EXPECT_FALSE(dtype_from_name("BF16").has_value());
}

}  // namespace
}  // namespace lowmem
