// Learning-rate schedule of the trainer: linear warmup, then cosine decay to a
// floor. Same curve as Hugging Face transformers'
// get_cosine_schedule_with_warmup (num_cycles 0.5), plus nanoGPT's floor
// (min_lr_ratio); the factor multiplies every param group's base lr.
#pragma once

#include <cstdint>

namespace lowmem::train {

struct ScheduleOptions {
  int64_t warmup_steps = 0;  // linear ramp 0 -> 1 over these steps
  int64_t total_steps = 1;   // cosine reaches the floor here
  double min_lr_ratio = 0.0; // floor, as a fraction of the base lr
};

/// Checks ranges (warmup >= 0, total >= 1, 0 <= min_lr_ratio <= 1).
void validate(const ScheduleOptions& o);

/// The lr factor for the update with index `step` (0-based: the first update
/// uses step 0). During warmup: step / warmup_steps (HF convention, so the
/// first update has factor 0 when warmup_steps > 0). Afterwards:
/// min + (1 - min) * 0.5 * (1 + cos(pi * progress)), progress =
/// (step - warmup) / max(1, total - warmup), clamped to [0, 1].
double lr_factor(const ScheduleOptions& o, int64_t step);

}  // namespace lowmem::train
