#include "lowmem/core/profile.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

namespace lowmem::profile {
namespace {

void sleep_ms(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
}

TEST(Profile, OffByDefaultAndCountsNothing) {
  set_enabled(false);
  reset();
  {
    Scope s(Phase::kForward);
    sleep_ms(2);
  }
  const Totals t = totals();
  EXPECT_EQ(t.calls[static_cast<int>(Phase::kForward)], 0);
  EXPECT_EQ(t.seconds[static_cast<int>(Phase::kForward)], 0.0);
}

TEST(Profile, NestedScopesCountExclusiveTime) {
  reset();
  set_enabled(true);
  const auto t0 = std::chrono::steady_clock::now();
  {
    Scope backward(Phase::kBackward);
    sleep_ms(20);
    {
      Scope recompute(Phase::kRecompute);
      sleep_ms(30);
      {
        Scope dq(Phase::kDequantize);
        sleep_ms(10);
      }
    }
    {
      Scope opt(Phase::kOptimizer);
      sleep_ms(10);
    }
  }
  const double wall =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
          .count();
  set_enabled(false);
  const Totals t = totals();
  auto sec = [&](Phase p) { return t.seconds[static_cast<int>(p)]; };
  // Each phase holds its own sleep, not its children's.
  EXPECT_GE(sec(Phase::kBackward), 0.020);
  EXPECT_LT(sec(Phase::kBackward), 0.040);
  EXPECT_GE(sec(Phase::kRecompute), 0.030);
  EXPECT_LT(sec(Phase::kRecompute), 0.040);
  EXPECT_GE(sec(Phase::kDequantize), 0.010);
  EXPECT_GE(sec(Phase::kOptimizer), 0.010);
  double sum = 0.0;
  for (double s : t.seconds) sum += s;
  EXPECT_LE(sum, wall + 1e-6);  // exclusive times never exceed the wall time
  EXPECT_EQ(t.calls[static_cast<int>(Phase::kBackward)], 1);
  EXPECT_EQ(t.calls[static_cast<int>(Phase::kDequantize)], 1);
  reset();
  EXPECT_EQ(totals().seconds[static_cast<int>(Phase::kRecompute)], 0.0);
}

TEST(Profile, PhaseNames) {
  EXPECT_STREQ(phase_name(Phase::kForward), "forward");
  EXPECT_STREQ(phase_name(Phase::kRecompute), "recompute");
  EXPECT_STREQ(phase_name(Phase::kStateQuantize), "state quantize");
  for (int i = 0; i < kPhaseCount; ++i)
    EXPECT_STRNE(phase_name(static_cast<Phase>(i)), "?");
}

}  // namespace
}  // namespace lowmem::profile
