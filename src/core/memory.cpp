#include "lowmem/core/memory.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/Storage.h>
#include <sys/resource.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include "lowmem/core/check.h"

#if defined(LOWMEM_WITH_CUDA)
#include <ATen/ATen.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace lowmem {
namespace {

constexpr int kMaxScopes = 64;

struct Counters {
  std::atomic<int64_t> current{0};
  std::atomic<int64_t> peak{0};
  std::atomic<uint64_t> active_mask{0};
  std::atomic<int64_t> scope_peak[kMaxScopes];
  Counters() {
    for (auto& p : scope_peak) p.store(0);
  }
};

Counters& counters() {
  static Counters* c = new Counters();  // never destroyed: deleters may run late
  return *c;
}

void atomic_max(std::atomic<int64_t>& a, int64_t v) {
  int64_t prev = a.load(std::memory_order_relaxed);
  while (prev < v &&
         !a.compare_exchange_weak(prev, v, std::memory_order_relaxed)) {
  }
}

// The context our DataPtr carries: the inner allocation and its size.
struct TrackedContext {
  c10::DataPtr inner;
  int64_t bytes;
};

void tracked_delete(void* ctx) {
  auto* t = static_cast<TrackedContext*>(ctx);
  counters().current.fetch_sub(t->bytes, std::memory_order_relaxed);
  delete t;  // frees the inner allocation through its own deleter
}

// Allocations whose inner DataPtr has context == data (the default CPU
// allocator) keep that property, so c10's raw_allocate/raw_deallocate (used by
// oneDNN for bf16 matmuls and by convolutions) work: the size and the inner
// deleter live in a side table keyed by the data pointer.
struct RawEntry {
  int64_t bytes;
  c10::DeleterFnPtr deleter;
};

std::mutex& raw_mutex() {
  static auto* m = new std::mutex();
  return *m;
}

std::unordered_map<void*, RawEntry>& raw_table() {
  static auto* t = new std::unordered_map<void*, RawEntry>();
  return *t;
}

void tracked_raw_delete(void* data) {
  if (data == nullptr) return;
  RawEntry e{};
  {
    std::lock_guard<std::mutex> lock(raw_mutex());
    auto it = raw_table().find(data);
    TORCH_INTERNAL_ASSERT(it != raw_table().end(),
                          "[memory] freeing an untracked pointer");
    e = it->second;
    raw_table().erase(it);
  }
  counters().current.fetch_sub(e.bytes, std::memory_order_relaxed);
  e.deleter(data);
}

class TrackingAllocator final : public c10::Allocator {
 public:
  explicit TrackingAllocator(c10::Allocator* inner) : inner_(inner) {}

  // c10::Allocator::allocate is const up to LibTorch 2.2 and non-const from
  // 2.3, which also adds the pure virtual copy_data: declaring both forms
  // (without `override`) overrides whichever the headers have.
  c10::DataPtr allocate(size_t n) const { return tracked_allocate(n); }
  c10::DataPtr allocate(size_t n) { return tracked_allocate(n); }
  void copy_data(void* dest, const void* src, std::size_t count) const {
    std::memcpy(dest, src, count);
  }

  c10::DeleterFnPtr raw_deleter() const override { return &tracked_raw_delete; }

 private:
  c10::DataPtr tracked_allocate(size_t n) const {
    c10::DataPtr inner = inner_->allocate(n);
    void* data = inner.get();
    c10::Device dev = inner.device();
    count(static_cast<int64_t>(n));
    c10::DeleterFnPtr inner_deleter = inner.get_deleter();
    if (data == nullptr && inner.get_context() == nullptr) {
      // Empty allocation (n == 0 on the default CPU allocator): keep
      // context == data so that raw_allocate(0) works (oneDNN/conv workspaces).
      return c10::DataPtr(nullptr, nullptr, &tracked_raw_delete, dev);
    }
    if (data != nullptr && data == inner.get_context() && inner_deleter) {
      inner.release_context();
      {
        std::lock_guard<std::mutex> lock(raw_mutex());
        raw_table()[data] = RawEntry{static_cast<int64_t>(n), inner_deleter};
      }
      return c10::DataPtr(data, data, &tracked_raw_delete, dev);
    }
    auto* ctx = new TrackedContext{std::move(inner), static_cast<int64_t>(n)};
    return c10::DataPtr(data, ctx, &tracked_delete, dev);
  }

  static void count(int64_t n) {
    Counters& c = counters();
    int64_t now = c.current.fetch_add(n, std::memory_order_relaxed) + n;
    atomic_max(c.peak, now);
    uint64_t mask = c.active_mask.load(std::memory_order_relaxed);
    while (mask) {
      int i = __builtin_ctzll(mask);
      atomic_max(c.scope_peak[i], now);
      mask &= mask - 1;
    }
  }

  c10::Allocator* inner_;
};

std::atomic<bool> g_installed{false};

int acquire_slot(int64_t start) {
  Counters& c = counters();
  uint64_t mask = c.active_mask.load();
  while (true) {
    uint64_t free_bits = ~mask;
    LOWMEM_CHECK(free_bits != 0, "[memory] more than ", kMaxScopes,
                 " memory scopes open at once");
    int i = __builtin_ctzll(free_bits);
    c.scope_peak[i].store(start);
    if (c.active_mask.compare_exchange_weak(mask, mask | (uint64_t{1} << i)))
      return i;
  }
}

void release_slot(int i) {
  counters().active_mask.fetch_and(~(uint64_t{1} << i));
}

#if defined(LOWMEM_WITH_CUDA)
int64_t cuda_stat(c10::Device d, bool peak) {
  auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(d.index() < 0 ? 0 : d.index());
  const auto& s = stats.allocated_bytes[0];  // StatType::AGGREGATE
  return peak ? s.peak : s.current;
}
#endif

}  // namespace

// ---------------------------------------------------------------- MemoryScope
MemoryScope::MemoryScope(c10::Device device, int slot, int64_t start)
    : device_(device), slot_(slot), start_(start) {}

MemoryScope::MemoryScope(MemoryScope&& o) noexcept
    : device_(o.device_), slot_(o.slot_), start_(o.start_),
      frozen_peak_(o.frozen_peak_) {
  o.slot_ = -1;
  o.frozen_peak_ = 0;
}

MemoryScope::~MemoryScope() {
  if (slot_ >= 0) release_slot(slot_);
}

int64_t MemoryScope::peak_bytes() const {
  if (slot_ < 0) return frozen_peak_;
  if (device_.is_cpu()) return counters().scope_peak[slot_].load();
#if defined(LOWMEM_WITH_CUDA)
  return cuda_stat(device_, /*peak=*/true);
#else
  return 0;
#endif
}

void MemoryScope::stop() {
  if (slot_ < 0) return;
  frozen_peak_ = peak_bytes();
  release_slot(slot_);
  slot_ = -1;
}

// -------------------------------------------------------------- MemoryTracker
MemoryTracker::MemoryTracker(c10::Device device) : device_(device) {
  if (device_.is_cpu()) install();
  LOWMEM_CHECK(device_.is_cpu() || device_.is_cuda(),
               "[memory] MemoryTracker supports cpu and cuda, got ", device_);
#if !defined(LOWMEM_WITH_CUDA)
  LOWMEM_CHECK(device_.is_cpu(), "[memory] this build has no CUDA support; "
               "cannot track ", device_);
#else
  // The caching allocator's statistics exist only once CUDA is initialised
  // (lazily, at the first CUDA tensor): make one and free it.
  if (device_.is_cuda()) (void)at::empty({1}, at::TensorOptions().device(device_));
#endif
}

void MemoryTracker::install() {
  static std::once_flag once;
  std::call_once(once, [] {
    c10::Allocator* inner = c10::GetCPUAllocator();
    static TrackingAllocator* tracking = new TrackingAllocator(inner);
    c10::SetAllocator(c10::DeviceType::CPU, tracking, /*priority=*/200);
    g_installed = true;
  });
}

bool MemoryTracker::installed() { return g_installed.load(); }

int64_t MemoryTracker::current_bytes() const {
  if (device_.is_cpu()) return counters().current.load();
#if defined(LOWMEM_WITH_CUDA)
  return cuda_stat(device_, /*peak=*/false);
#else
  return 0;
#endif
}

int64_t MemoryTracker::peak_bytes() const {
  if (device_.is_cpu()) return counters().peak.load();
#if defined(LOWMEM_WITH_CUDA)
  return cuda_stat(device_, /*peak=*/true);
#else
  return 0;
#endif
}

void MemoryTracker::reset_peak() {
  if (device_.is_cpu()) {
    counters().peak.store(counters().current.load());
    return;
  }
#if defined(LOWMEM_WITH_CUDA)
  c10::cuda::CUDACachingAllocator::resetPeakStats(device_.index() < 0 ? 0 : device_.index());
#endif
}

MemoryScope MemoryTracker::scope() const {
  if (device_.is_cpu()) {
    int64_t start = current_bytes();
    int slot = acquire_slot(start);
    // An allocation between the read and the slot's activation is caught by
    // re-reading: the peak register is at least the current value.
    atomic_max(counters().scope_peak[slot], current_bytes());
    return MemoryScope(device_, slot, start);
  }
  const_cast<MemoryTracker*>(this)->reset_peak();  // CUDA: one peak register per device, scopes do not nest
  return MemoryScope(device_, 0, current_bytes());
}

int64_t MemoryTracker::peak_rss_bytes() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<int64_t>(ru.ru_maxrss) * 1024;  // Linux: KiB
}

int64_t MemoryTracker::current_rss_bytes() {
  long pages = 0, resident = 0;
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
  std::fclose(f);
  return static_cast<int64_t>(resident) * sysconf(_SC_PAGESIZE);
}

// ------------------------------------------------------------------- helpers
int64_t storage_bytes(const std::vector<at::Tensor>& tensors) {
  std::unordered_set<const void*> seen;
  int64_t total = 0;
  for (const auto& t : tensors) {
    if (!t.defined() || !t.has_storage()) continue;
    const c10::StorageImpl* impl = t.storage().unsafeGetStorageImpl();
    if (seen.insert(impl).second) total += static_cast<int64_t>(t.storage().nbytes());
  }
  return total;
}

MemoryBreakdown memory_breakdown(const std::vector<at::Tensor>& params,
                                 const std::vector<at::Tensor>& optimizer_state,
                                 const MemoryTracker* tracker) {
  std::vector<at::Tensor> frozen, trainable, grads;
  for (const auto& p : params) {
    if (!p.defined()) continue;
    (p.requires_grad() ? trainable : frozen).push_back(p);
    if (p.grad().defined()) grads.push_back(p.grad());
  }
  MemoryBreakdown b;
  b.frozen_weights = storage_bytes(frozen);
  b.trainable_params = storage_bytes(trainable);
  b.gradients = storage_bytes(grads);
  b.optimizer_state = storage_bytes(optimizer_state);
  if (tracker) {
    b.total_tracked = tracker->current_bytes();
    int64_t known = b.frozen_weights + b.trainable_params + b.gradients +
                    b.optimizer_state;
    b.other = b.total_tracked > known ? b.total_tracked - known : 0;
  }
  b.peak_rss = MemoryTracker::peak_rss_bytes();
  return b;
}

std::string format_bytes(int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (std::abs(v) >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  char buf[64];
  if (u == 0)
    std::snprintf(buf, sizeof(buf), "%lld B", static_cast<long long>(bytes));
  else
    std::snprintf(buf, sizeof(buf), "%.2f %s", v, units[u]);
  return buf;
}

std::string MemoryBreakdown::to_string() const {
  return "frozen " + format_bytes(frozen_weights) + ", trainable " +
         format_bytes(trainable_params) + ", grads " + format_bytes(gradients) +
         ", optimizer " + format_bytes(optimizer_state) + ", other " +
         format_bytes(other) + ", peak RSS " + format_bytes(peak_rss);
}

bool keep_freed_cpu_memory() {
#if defined(__GLIBC__)
  // 32 MiB is the largest mmap threshold glibc accepts on 64-bit
  // (DEFAULT_MMAP_THRESHOLD_MAX); setting it also fixes the trim threshold's
  // dynamic adjustment, so set that too.
  const bool mmap_ok = mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1;
  const bool trim_ok = mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1;
  return mmap_ok && trim_ok;
#else
  return false;
#endif
}

}  // namespace lowmem
