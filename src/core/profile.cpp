#include "lowmem/core/profile.h"

#include <atomic>

namespace lowmem::profile {
namespace {

std::atomic<bool> g_enabled{false};
std::array<std::atomic<int64_t>, kPhaseCount> g_nanos{};
std::array<std::atomic<int64_t>, kPhaseCount> g_calls{};
thread_local Scope* t_top = nullptr;

}  // namespace

const char* phase_name(Phase p) {
  switch (p) {
    case Phase::kData:
      return "data";
    case Phase::kForward:
      return "forward";
    case Phase::kBackward:
      return "backward";
    case Phase::kRecompute:
      return "recompute";
    case Phase::kDequantize:
      return "dequantize";
    case Phase::kProjection:
      return "projection";
    case Phase::kOptimizer:
      return "optimizer";
    case Phase::kStateQuantize:
      return "state quantize";
    case Phase::kCount:
      break;
  }
  return "?";
}

void set_enabled(bool on) { g_enabled.store(on, std::memory_order_relaxed); }
bool enabled() { return g_enabled.load(std::memory_order_relaxed); }

void reset() {
  for (int i = 0; i < kPhaseCount; ++i) {
    g_nanos[i].store(0, std::memory_order_relaxed);
    g_calls[i].store(0, std::memory_order_relaxed);
  }
}

Totals totals() {
  Totals t;
  for (int i = 0; i < kPhaseCount; ++i) {
    t.seconds[i] = static_cast<double>(g_nanos[i].load()) * 1e-9;
    t.calls[i] = g_calls[i].load();
  }
  return t;
}

Scope::Scope(Phase phase) : phase_(phase) {
  if (!enabled()) return;
  active_ = true;
  const Clock::time_point now = Clock::now();
  parent_ = t_top;
  if (parent_ != nullptr) parent_->pause(now);
  t_top = this;
  since_ = now;
}

Scope::~Scope() {
  if (!active_) return;
  const Clock::time_point now = Clock::now();
  pause(now);
  const int i = static_cast<int>(phase_);
  g_nanos[i].fetch_add(nanos_, std::memory_order_relaxed);
  g_calls[i].fetch_add(1, std::memory_order_relaxed);
  t_top = parent_;
  if (parent_ != nullptr) parent_->resume(now);
}

void Scope::pause(Clock::time_point now) {
  nanos_ += std::chrono::duration_cast<std::chrono::nanoseconds>(now - since_)
                .count();
}

void Scope::resume(Clock::time_point now) { since_ = now; }

}  // namespace lowmem::profile
