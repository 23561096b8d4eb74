#include "lowmem/core/memory.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "lowmem/core/check.h"

namespace {

using lowmem::MemoryTracker;

TEST(MemoryTracker, CountsExactBytesOfKnownAllocations) {
  MemoryTracker tracker;
  ASSERT_TRUE(MemoryTracker::installed());
  int64_t base = tracker.current_bytes();
  {
    at::Tensor a = at::empty({1000}, at::kFloat);           // 4000 B
    EXPECT_EQ(tracker.current_bytes() - base, 4000);
    at::Tensor b = at::empty({3, 7}, at::kDouble);          // 168 B
    EXPECT_EQ(tracker.current_bytes() - base, 4168);
    at::Tensor c = at::empty({5}, at::kBFloat16);           // 10 B
    EXPECT_EQ(tracker.current_bytes() - base, 4178);
    at::Tensor v = a.view({10, 100});  // a view allocates nothing
    EXPECT_EQ(tracker.current_bytes() - base, 4178);
  }
  EXPECT_EQ(tracker.current_bytes(), base);  // freeing returns to baseline
}

TEST(MemoryTracker, PeakAndReset) {
  MemoryTracker tracker;
  int64_t base = tracker.current_bytes();
  tracker.reset_peak();
  {
    at::Tensor a = at::empty({2048}, at::kFloat);  // 8192 B
  }
  EXPECT_EQ(tracker.current_bytes(), base);
  EXPECT_EQ(tracker.peak_bytes(), base + 8192);
  tracker.reset_peak();
  EXPECT_EQ(tracker.peak_bytes(), base);
}

TEST(MemoryTracker, NestedScopesHaveTheirOwnPeaks) {
  MemoryTracker tracker;
  auto outer = tracker.scope();
  int64_t base = outer.start_bytes();
  at::Tensor keep = at::empty({100}, at::kFloat);  // 400 B, stays live
  {
    auto inner = tracker.scope();
    EXPECT_EQ(inner.start_bytes(), base + 400);
    { at::Tensor t = at::empty({250}, at::kFloat); }  // 1000 B transient
    EXPECT_EQ(inner.peak_delta(), 1000);
    EXPECT_EQ(inner.peak_bytes(), base + 1400);
  }
  {
    auto later = tracker.scope();
    { at::Tensor t = at::empty({10}, at::kFloat); }
    EXPECT_EQ(later.peak_delta(), 40);  // the earlier 1400 does not leak in
  }
  EXPECT_EQ(outer.peak_bytes(), base + 1400);
  outer.stop();
  { at::Tensor big = at::empty({100000}, at::kFloat); }
  EXPECT_EQ(outer.peak_bytes(), base + 1400);  // frozen after stop()
}

TEST(MemoryTracker, AutogradTemporariesAreCounted) {
  MemoryTracker tracker;
  at::Tensor w = at::randn({64, 64}).requires_grad_(true);
  auto scope = tracker.scope();
  at::Tensor y = (w * 2).sum();  // w*2 is saved? no: mul by scalar saves none
  y.backward();
  // The gradient (16 KiB) is live now; the scope saw at least it.
  EXPECT_GE(scope.peak_delta(), 64 * 64 * 4);
  EXPECT_EQ(lowmem::storage_bytes({w.grad()}), 64 * 64 * 4);
}

// c10's raw_allocate (used by oneDNN and convolution workspaces) asserts that
// the DataPtr's context is its data pointer; this must hold under the tracker
// for empty (0-byte) allocations too, which the default CPU allocator returns
// as nullptr.
TEST(MemoryTracker, RawAllocationsIncludingEmptyOnesWork) {
  MemoryTracker tracker;
  c10::Allocator* a = c10::GetAllocator(c10::kCPU);
  const int64_t base = tracker.current_bytes();
  void* empty = a->raw_allocate(0);
  EXPECT_EQ(tracker.current_bytes(), base);
  a->raw_deallocate(empty);
  void* p = a->raw_allocate(96);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(tracker.current_bytes() - base, 96);
  a->raw_deallocate(p);
  EXPECT_EQ(tracker.current_bytes(), base);
  // Empty tensors and a convolution over an empty batch allocate 0 bytes.
  at::Tensor e = at::empty({0, 3}, at::kFloat);
  at::Tensor y = at::conv2d(at::zeros({0, 2, 5, 5}), at::ones({3, 2, 3, 3}));
  EXPECT_EQ(y.size(0), 0);
}

TEST(StorageBytes, CountsDistinctStoragesOnce) {
  at::Tensor a = at::zeros({10, 10});
  at::Tensor b = a[3];
  at::Tensor c = at::zeros({5}, at::kDouble);
  EXPECT_EQ(lowmem::storage_bytes({a, b, a, c, at::Tensor()}), 400 + 40);
}

TEST(MemoryBreakdown, ClassifiesByRole) {
  MemoryTracker tracker;
  at::Tensor frozen = at::zeros({10});                       // 40
  at::Tensor train = at::zeros({20}).requires_grad_(true);   // 80
  train.mutable_grad() = at::zeros({20});                    // 80
  at::Tensor state = at::zeros({30});                        // 120
  auto b = lowmem::memory_breakdown({frozen, train}, {state}, &tracker);
  EXPECT_EQ(b.frozen_weights, 40);
  EXPECT_EQ(b.trainable_params, 80);
  EXPECT_EQ(b.gradients, 80);
  EXPECT_EQ(b.optimizer_state, 120);
  EXPECT_GE(b.total_tracked, 320);
  EXPECT_EQ(b.other, b.total_tracked - 320);
  EXPECT_GT(b.peak_rss, 0);
  EXPECT_NE(b.to_string().find("optimizer 120 B"), std::string::npos);
}

TEST(MemoryTracker, RejectsUnsupportedDevice) {
  try {
    MemoryTracker t(c10::Device(c10::kMeta));
    FAIL() << "expected a throw";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("meta"), std::string::npos);
  }
}

TEST(FormatBytes, Units) {
  EXPECT_EQ(lowmem::format_bytes(512), "512 B");
  EXPECT_EQ(lowmem::format_bytes(1536), "1.50 KiB");
  EXPECT_EQ(lowmem::format_bytes(3 * 1024 * 1024), "3.00 MiB");
}

}  // namespace

#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))  // mallinfo2
#include <malloc.h>
TEST(KeepFreedCpuMemory, SetsGlibcThresholdsAndAllocationsStillWork) {
  EXPECT_TRUE(lowmem::keep_freed_cpu_memory());
  // A 16 MiB block now comes from the heap: freeing and reallocating it must
  // not change the mmap'd byte count glibc reports.
  struct mallinfo2 before = mallinfo2();
  void* p = std::malloc(16 << 20);
  ASSERT_NE(p, nullptr);
  struct mallinfo2 during = mallinfo2();
  EXPECT_EQ(during.hblkhd, before.hblkhd) << "16 MiB still went to mmap";
  std::free(p);
  auto t = at::ones({4 << 20});  // 16 MiB tensor through the allocator
  EXPECT_EQ(t.sum().item<double>(), 4 << 20);
}
#endif
