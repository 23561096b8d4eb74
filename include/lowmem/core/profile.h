// Where a training step's time goes: a per-phase wall-clock profile.
//
// Code marks a phase with a scope (`profile::Scope
// s(profile::Phase::kForward)`); while profiling is on, each scope adds its
// *exclusive* wall time (nested scopes on the same thread pause their parent)
// to a process-wide total per phase, so the phases of one step add up to at
// most its wall time and the rest is "other". Off by default: a scope then
// costs one relaxed atomic load.
//
// The phases are the ones issue 18 asks to see for big steps: forward,
// recompute (activation checkpointing's second forward, inside backward),
// backward, dequantization of NF4 weights, the low-rank projection (GaLore's
// basis refresh, project and project back), the optimizer's update and the
// 8-bit state's (de)quantization. Scopes opened on other threads (autograd's
// device threads, a pool) count on their own and may overlap the main
// thread's; on CPU, LibTorch runs backward on the calling thread.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <string>

namespace lowmem::profile {

enum class Phase : int {
  kData = 0,       // drawing the batch
  kForward,        // the loss's forward pass
  kBackward,       // autograd's backward (what no nested phase claims)
  kRecompute,      // checkpointed blocks re-run in backward
  kDequantize,     // NF4 weights expanded to bf16/fp32
  kProjection,     // GaLore/projector: basis refresh, project, project back
  kOptimizer,      // optimizer updates (also those run inside backward)
  kStateQuantize,  // 8-bit optimizer state: quantize / dequantize
  kCount
};
constexpr int kPhaseCount = static_cast<int>(Phase::kCount);

/// The phase's name as printed ("forward", "recompute", ...).
const char* phase_name(Phase p);

/// Turns profiling on or off for the whole process (off by default).
void set_enabled(bool on);
bool enabled();
/// Zeroes the totals.
void reset();

struct Totals {
  std::array<double, kPhaseCount> seconds{};  // exclusive wall seconds
  std::array<int64_t, kPhaseCount> calls{};   // scopes closed
};
/// The totals since the last reset().
Totals totals();

/// Adds the wall time between construction and destruction to `phase`,
/// minus the time spent in scopes nested inside it on the same thread.
class Scope {
 public:
  explicit Scope(Phase phase);
  ~Scope();
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  using Clock = std::chrono::steady_clock;
  void pause(Clock::time_point now);
  void resume(Clock::time_point now);
  Phase phase_;
  bool active_ = false;
  Scope* parent_ = nullptr;
  Clock::time_point since_;
  int64_t nanos_ = 0;
};

}  // namespace lowmem::profile
