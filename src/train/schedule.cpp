#include "lowmem/train/schedule.h"

#include <algorithm>
#include <cmath>

#include "lowmem/core/check.h"

namespace lowmem::train {

void validate(const ScheduleOptions& o) {
  LOWMEM_CHECK(
      o.warmup_steps >= 0,
      "[schedule] warmup_steps must be >= 0, got ",
      o.warmup_steps);
  LOWMEM_CHECK(
      o.total_steps >= 1,
      "[schedule] total_steps must be >= 1, got ",
      o.total_steps);
  LOWMEM_CHECK(
      o.min_lr_ratio >= 0.0 && o.min_lr_ratio <= 1.0,
      "[schedule] min_lr_ratio must be in [0, 1], got ",
      o.min_lr_ratio);
}

double lr_factor(const ScheduleOptions& o, int64_t step) {
  if (step < o.warmup_steps) {
    return static_cast<double>(step) /
        static_cast<double>(std::max<int64_t>(1, o.warmup_steps));
  }
  const double progress = std::clamp(
      static_cast<double>(step - o.warmup_steps) /
          static_cast<double>(
              std::max<int64_t>(1, o.total_steps - o.warmup_steps)),
      0.0,
      1.0);
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * progress));
  return o.min_lr_ratio + (1.0 - o.min_lr_ratio) * cosine;
}

}  // namespace lowmem::train
