#include "lowmem/dist/consistency.h"

#include "lowmem/core/check.h"
#include "lowmem/optim/extras.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>

namespace lowmem::dist {
namespace {

uint64_t mix(uint64_t h, uint64_t v) {
  // splitmix64-style avalanche of each 8-byte word, chained.
  h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebULL;
  h ^= h >> 31;
  return h;
}

}  // namespace

int64_t fingerprint(const at::Tensor& tensor) {
  uint64_t h = 0x6a09e667f3bcc909ULL;
  if (!tensor.defined()) {
    return static_cast<int64_t>(h);
  }
  h = mix(h, static_cast<uint64_t>(tensor.scalar_type()));
  for (const auto s : tensor.sizes()) {
    h = mix(h, static_cast<uint64_t>(s));
  }
  const at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
  const auto* bytes = static_cast<const unsigned char*>(t.data_ptr());
  const size_t n = static_cast<size_t>(t.numel()) * t.element_size();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w = 0;
    std::memcpy(&w, bytes + i, 8);
    h = mix(h, w);
  }
  uint64_t tail = 0;
  std::memcpy(&tail, bytes + i, n - i);
  h = mix(h, tail ^ (static_cast<uint64_t>(n - i) << 56));
  return static_cast<int64_t>(h);
}

void check_identical(
    Communicator& comm,
    const std::vector<at::Tensor>& tensors,
    const std::string& what,
    bool ordered) {
  if (comm.world_size() == 1) {
    return;
  }
  // Slot 0 carries the count, so ranks with different counts are caught too.
  const int64_t n = static_cast<int64_t>(tensors.size());
  auto local = at::empty({n + 1}, at::kLong);
  auto* p = local.data_ptr<int64_t>();
  p[0] = n;
  for (int64_t i = 0; i < n; ++i) {
    p[i + 1] = fingerprint(tensors[i]);
  }
  if (!ordered) {
    std::sort(p + 1, p + n + 1);
  }
  const at::Device device(comm.options().device());
  // Ranks may differ in count; gather the counts first to size the buffers.
  auto count = at::full({1}, n, at::kLong).to(device);
  const auto counts = comm.allgather(count);
  for (int r = 0; r < comm.world_size(); ++r) {
    const int64_t cr = counts[r].to(at::kCPU).item<int64_t>();
    LOWMEM_CHECK(
        cr == n,
        "[dist] ranks disagree on ",
        what,
        ": rank ",
        comm.rank(),
        " has ",
        n,
        " tensors, rank ",
        r,
        " has ",
        cr);
  }
  const auto all = comm.allgather(local.to(device));
  for (int r = 0; r < comm.world_size(); ++r) {
    const auto theirs = all[r].to(at::kCPU);
    const auto* q = theirs.data_ptr<int64_t>();
    for (int64_t i = 0; i < n && !ordered; ++i) {
      LOWMEM_CHECK(
          q[i + 1] == p[i + 1],
          "[dist] ranks disagree on ",
          what,
          ": the ",
          n,
          " tensors of rank ",
          comm.rank(),
          " and rank ",
          r,
          " are not the same (compared as an unordered set; data-parallel "
          "replicas have diverged: non-deterministic ops, a missed gradient "
          "sync, or ranks loading different checkpoints)");
    }
    for (int64_t i = 0; i < n && ordered; ++i) {
      LOWMEM_CHECK(
          q[i + 1] == p[i + 1],
          "[dist] ranks disagree on ",
          what,
          ": tensor ",
          i,
          " of ",
          n,
          " (shape ",
          tensors[i].sizes(),
          ") differs between rank ",
          comm.rank(),
          " and rank ",
          r,
          " (data-parallel replicas have diverged: non-deterministic "
          "ops, a missed gradient sync, or ranks loading different "
          "checkpoints)");
    }
  }
}

void check_identical(
    Communicator& comm,
    const std::vector<at::Tensor>& params,
    const torch::optim::Optimizer* optimizer) {
  check_identical(comm, params, "weights");
  if (optimizer != nullptr) {
    // state_tensors() of torch's optimizers follows a hash map's order, which
    // differs between processes: compare as a multiset.
    check_identical(
        comm,
        lowmem::optim::state_tensors(*optimizer),
        "optimizer state",
        /*ordered=*/false);
  }
}

void run_on_main(
    Communicator& comm,
    const std::function<void()>& fn,
    const std::string& what) {
  std::exception_ptr failure;
  if (comm.is_main()) {
    try {
      fn();
    } catch (...) {
      failure = std::current_exception();
    }
  }
  if (comm.world_size() > 1) {
    auto ok = at::full({1}, failure ? 0 : 1, at::kLong)
                  .to(at::Device(comm.options().device()));
    comm.broadcast(ok, 0);
    const bool fine = ok.to(at::kCPU).item<int64_t>() == 1;
    if (!comm.is_main()) {
      LOWMEM_CHECK(
          fine,
          "[dist] rank 0 failed to ",
          what,
          " (see rank 0's error); rank ",
          comm.rank(),
          " stops too");
    }
  }
  if (failure) {
    std::rethrow_exception(failure);
  }
}

void run_on_every_rank(Communicator& comm, const std::function<void()>& fn,
                       const std::string& what) {
  std::exception_ptr failure;
  try {
    fn();
  } catch (...) {
    failure = std::current_exception();
  }
  if (comm.world_size() > 1) {
    // The lowest failed rank (world_size if none), as a minimum of all.
    const int64_t mine = failure ? comm.rank() : comm.world_size();
    auto all = comm.allgather(
        at::full({1}, mine, at::kLong).to(at::Device(comm.options().device())));
    int64_t first = comm.world_size();
    for (const auto& t : all) {
      first = std::min(first, t.to(at::kCPU).item<int64_t>());
    }
    if (!failure) {
      LOWMEM_CHECK(first == comm.world_size(), "[dist] rank ", first,
                   " failed to ", what, " (see rank ", first,
                   "'s error); rank ", comm.rank(), " stops too");
    }
  }
  if (failure) {
    std::rethrow_exception(failure);
  }
}

}  // namespace lowmem::dist
