// Exact memory accounting. On CPU a tracking allocator wraps c10's default CPU
// allocator and counts the bytes of every live tensor storage it hands out
// (byte-exact: the requested nbytes, not the allocator's rounding). On CUDA the
// figures come from the caching allocator's statistics (allocated bytes).
// Process peak RSS sits beside them. See docs/memory.md.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <string>
#include <vector>

namespace lowmem {

class MemoryTracker;

/// A scoped peak: the highest live-byte count reached between construction and
/// now (or `stop()`), relative to nothing (absolute bytes) — see `peak_delta`.
class MemoryScope {
 public:
  MemoryScope(MemoryScope&& other) noexcept;
  MemoryScope& operator=(MemoryScope&&) = delete;
  MemoryScope(const MemoryScope&) = delete;
  ~MemoryScope();

  /// Live bytes when the scope opened.
  int64_t start_bytes() const { return start_; }
  /// Highest live bytes (absolute) since the scope opened.
  int64_t peak_bytes() const;
  /// peak_bytes() - start_bytes(): what the scoped code added at its worst.
  int64_t peak_delta() const { return peak_bytes() - start_; }
  /// Freezes the peak; later allocations no longer count.
  void stop();

 private:
  friend class MemoryTracker;
  MemoryScope(c10::Device device, int slot, int64_t start);
  c10::Device device_;
  int slot_;        // CPU: index of this scope's peak register; -1 if stopped
  int64_t start_;
  int64_t frozen_peak_ = -1;
};

/// Byte-exact live and peak tensor memory for one device type.
///
///   lowmem::MemoryTracker tracker;            // installs the CPU hook once
///   auto scope = tracker.scope();
///   ... train step ...
///   int64_t peak = scope.peak_bytes();
class MemoryTracker {
 public:
  explicit MemoryTracker(c10::Device device = c10::Device(c10::kCPU));

  /// Installs the tracking CPU allocator (idempotent, process-wide, permanent).
  /// Storages allocated before the first install are not counted.
  static void install();
  static bool installed();

  c10::Device device() const { return device_; }
  /// Bytes of live tensor storage allocated through the tracked allocator.
  int64_t current_bytes() const;
  /// Highest current_bytes() since the last reset_peak() (process-wide).
  int64_t peak_bytes() const;
  void reset_peak();
  /// Opens a scoped peak (nesting is allowed; up to 64 open at once).
  MemoryScope scope() const;

  /// Peak resident set size of the process (getrusage), bytes.
  static int64_t peak_rss_bytes();
  /// Current resident set size (/proc/self/statm), bytes.
  static int64_t current_rss_bytes();

 private:
  c10::Device device_;
};

/// Bytes of the distinct storages behind `tensors` (views of one storage and
/// repeated tensors are counted once). Undefined tensors are skipped.
int64_t storage_bytes(const std::vector<at::Tensor>& tensors);

/// What a training setup holds, by role. Every figure counts distinct storages.
struct MemoryBreakdown {
  int64_t frozen_weights = 0;      // parameters with requires_grad == false
  int64_t trainable_params = 0;    // parameters with requires_grad == true
  int64_t gradients = 0;           // .grad of the parameters
  int64_t optimizer_state = 0;     // the optimizer's state tensors
  int64_t other = 0;               // live bytes minus the above (activations,
                                   // temporaries, data); 0 if not tracked
  int64_t total_tracked = 0;       // tracker's live bytes at the time
  int64_t peak_rss = 0;

  std::string to_string() const;
};

/// Breakdown of `params` (each classified by requires_grad) and the given
/// optimizer state tensors, with `other` = tracker live bytes - the rest.
MemoryBreakdown memory_breakdown(
    const std::vector<at::Tensor>& params,
    const std::vector<at::Tensor>& optimizer_state,
    const MemoryTracker* tracker = nullptr);

/// "1.50 MiB" style formatting.
std::string format_bytes(int64_t bytes);

/// Keeps freed CPU memory inside the process for reuse: glibc malloc serves
/// blocks up to 32 MiB from its heap instead of fresh mmap()s and stops giving
/// the heap back after every large free. Without it a training step page-faults
/// its activation buffers in again on every step (measured: the small GPT step
/// 525 -> 364 ms, one thread, docs/benchmarks/train_step.md). Process-wide, so
/// the library never calls it by itself: the `lowmem` CLI and the benchmarks do
/// at start-up. Returns false where the C library has no such control.
bool keep_freed_cpu_memory();

}  // namespace lowmem
