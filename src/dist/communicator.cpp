#include "lowmem/dist/communicator.h"

#include <ATen/ATen.h>

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>

#include "lowmem/core/check.h"
#include "lowmem/core/compat.h"
#if LOWMEM_TORCH_AT_LEAST(2, 0)
#include <torch/csrc/distributed/c10d/Backend.hpp>
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef LOWMEM_WITH_CUDA
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdlib>
#include <sstream>
#include <thread>

namespace lowmem::dist {

#if LOWMEM_TORCH_AT_LEAST(2, 0)
// Since LibTorch 2.0 ProcessGroupGloo/NCCL are c10d::Backends (a
// ProcessGroup dispatches to them); the collectives used here are the same.
using GroupPtr = c10::intrusive_ptr<c10d::Backend>;
#else
using GroupPtr = c10::intrusive_ptr<c10d::ProcessGroup>;
#endif

struct Communicator::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  GroupPtr pg;
  std::string backend;
};

struct Work::Impl {
  c10::intrusive_ptr<c10d::Work> work;
  std::vector<at::Tensor> keep_alive;
  std::string what;  // "allreduce of 3 tensors (1.2 MB) on rank 0 of 2"
  double timeout_s = 0;
  bool done = false;
};

namespace {

std::chrono::milliseconds to_ms(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000.0));
}

int64_t payload_bytes(const std::vector<at::Tensor>& tensors) {
  int64_t bytes = 0;
  for (const auto& t : tensors) {
    bytes += t.numel() * static_cast<int64_t>(t.element_size());
  }
  return bytes;
}

bool is_loopback(const std::string& addr) {
  return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1";
}

std::string resolve_backend(const InitOptions& o) {
  const at::Device device(o.device());
  std::string b = o.backend();
  if (b == "auto") {
#ifdef LOWMEM_WITH_CUDA
    b = device.is_cuda() ? "nccl" : "gloo";
#else
    b = "gloo";
#endif
  }
  LOWMEM_CHECK(b == "gloo" || b == "nccl",
               "[dist] backend must be gloo, nccl or auto, got '", o.backend(),
               "'");
#ifndef LOWMEM_WITH_CUDA
  LOWMEM_CHECK(
      b != "nccl",
      "[dist] backend nccl needs a CUDA build of LibTorch; this one is "
      "CPU-only (use gloo)");
#endif
  LOWMEM_CHECK(b != "nccl" || device.is_cuda(),
               "[dist] backend nccl needs a CUDA device, got device '",
               o.device(), "'");
  return b;
}

}  // namespace

void Work::wait() {
  if (!impl_ || impl_->done) {
    return;
  }
  try {
    impl_->work->wait();
  } catch (const std::exception& e) {
    impl_->done = true;
    LOWMEM_CHECK(false, "[dist] ", impl_->what,
                 " failed: a peer died, hung or disagreed (timeout ",
                 impl_->timeout_s, " s). Cause: ", e.what());
  }
  impl_->done = true;
  // The finished collective lets go of its tensors (c10d's work object holds
  // its inputs too): a caller dropping its own reference frees the memory.
  impl_->keep_alive.clear();
  impl_->work.reset();
}

Communicator::Communicator(DistEnv env, InitOptions options)
    : env_(std::move(env)), options_(std::move(options)) {}

Communicator::~Communicator() = default;

std::shared_ptr<Communicator> Communicator::from_environment(
    const InitOptions& options) {
  return init(env_from_environment(), options);
}

namespace {

/// Connects to (rank 0: serves) the TCP store at MASTER_ADDR:MASTER_PORT.
c10::intrusive_ptr<c10d::Store> connect_store(
    const DistEnv& env, const InitOptions& options,
    std::chrono::milliseconds join_timeout) {
  c10::intrusive_ptr<c10d::Store> store;
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(env.master_port);
    so.isServer = env.rank == 0;
    so.numWorkers = static_cast<size_t>(env.world_size);
    so.waitWorkers = true;
    so.timeout = join_timeout;
    store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
  } catch (const std::exception& e) {
    LOWMEM_CHECK(false, "[dist] rendezvous failed for rank ", env.rank, " of ",
                 env.world_size, " at MASTER_ADDR=", env.master_addr,
                 " MASTER_PORT=", env.master_port, " within ",
                 options.rendezvous_timeout_s(), " s (",
                 env.rank == 0
                     ? "another process may hold the port, or a worker "
                       "never arrived"
                     : "rank 0 is not listening there",
                 "). Cause: ", e.what());
  }
  return store;
}

/// Everyone meets in the store before the process group connects: Gloo's
/// connect runs under the collective timeout, which must not have to cover
/// the workers' start-up skew (timed by the join timeout instead).
void wait_for_all_ranks(c10d::Store* store, const DistEnv& env,
                        const InitOptions& options,
                        std::chrono::milliseconds join_timeout) {
  const auto deadline = std::chrono::steady_clock::now() + join_timeout;
  int64_t arrived = 0;
  try {
    arrived = store->add("lowmem/joined", 1);
    while (arrived < env.world_size &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      arrived = store->add("lowmem/joined", 0);
    }
  } catch (const std::exception& e) {
    LOWMEM_CHECK(false, "[dist] rendezvous failed for rank ", env.rank, " of ",
                 env.world_size,
                 " while waiting for the other ranks. Cause: ", e.what());
  }
  LOWMEM_CHECK(arrived >= env.world_size, "[dist] rendezvous failed for rank ",
               env.rank, " of ", env.world_size, ": only ", arrived,
               " ranks arrived within ", options.rendezvous_timeout_s(), " s");
}

/// The gloo or nccl process group over `store`.
GroupPtr connect_group(const std::string& backend,
                       const c10::intrusive_ptr<c10d::Store>& store,
                       const DistEnv& env, std::chrono::milliseconds timeout) {
  GroupPtr pg;
  try {
    if (backend == "gloo") {
      auto go = c10d::ProcessGroupGloo::Options::create(timeout);
      const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
      const char* local_addr = std::getenv("LOWMEM_LOCAL_ADDR");
      if (ifname != nullptr && *ifname != '\0') {
        go->devices.push_back(
            c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
      } else if (local_addr != nullptr && *local_addr != '\0') {
        go->devices.push_back(
            c10d::ProcessGroupGloo::createDeviceForHostname(local_addr));
      } else if (is_loopback(env.master_addr)) {
        go->devices.push_back(
            c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      } else {
        go->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, env.rank,
                                                       env.world_size, go);
    } else {
#ifdef LOWMEM_WITH_CUDA
      // Without blocking wait, NCCL collectives never report a timeout.
      ::setenv("NCCL_BLOCKING_WAIT", "1", 0);
      auto no = c10d::ProcessGroupNCCL::Options::create();
      no->timeout = timeout;
      pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, env.rank,
                                                       env.world_size, no);
#endif
    }
  } catch (const std::exception& e) {
    LOWMEM_CHECK(false, "[dist] creating the ", backend,
                 " process group failed on rank ", env.rank, " of ",
                 env.world_size, ". Cause: ", e.what());
  }
  return pg;
}

}  // namespace

std::shared_ptr<Communicator> Communicator::init(const DistEnv& env,
                                                 const InitOptions& options) {
  validate(env);
  LOWMEM_CHECK(options.timeout_s() > 0, "[dist] timeout_s must be > 0, got ",
               options.timeout_s());
  LOWMEM_CHECK(options.rendezvous_timeout_s() > 0,
               "[dist] rendezvous_timeout_s must be > 0, got ",
               options.rendezvous_timeout_s());
  const std::string backend = resolve_backend(options);
  std::shared_ptr<Communicator> comm(new Communicator(env, options));
  if (env.world_size == 1) {
    return comm;
  }
  auto impl = std::make_unique<Impl>();
  impl->backend = backend;
  const auto timeout = to_ms(options.timeout_s());
  const auto join_timeout = to_ms(options.rendezvous_timeout_s());
  impl->store = connect_store(env, options, join_timeout);
  wait_for_all_ranks(impl->store.get(), env, options, join_timeout);
  impl->pg = connect_group(backend, impl->store, env, timeout);
  comm->impl_ = std::move(impl);
  return comm;
}

std::string Communicator::backend() const {
  return impl_ ? impl_->backend : "local";
}

void Communicator::rethrow(const char* op, const std::exception& e) const {
  LOWMEM_CHECK(false, "[dist] ", op, " failed on rank ", env_.rank, " of ",
               env_.world_size, ": a peer died, hung or disagreed (timeout ",
               options_.timeout_s(), " s). Cause: ", e.what());
}

Work Communicator::allreduce_sum_async(std::vector<at::Tensor> tensors) {
  Work w;
  if (!impl_ || tensors.empty()) {
    return w;
  }
  const int64_t bytes = payload_bytes(tensors);
  stats_.allreduce_bytes += bytes;
  stats_.allreduce_calls += 1;
  auto wi = std::make_shared<Work::Impl>();
  std::ostringstream what;
  what << "allreduce of " << tensors.size() << " tensor(s), " << bytes
       << " bytes, on rank " << env_.rank << " of " << env_.world_size;
  wi->what = what.str();
  wi->timeout_s = options_.timeout_s();
  try {
    wi->work = impl_->pg->allreduce(tensors, c10d::AllreduceOptions());
  } catch (const std::exception& e) {
    rethrow("allreduce", e);
  }
  wi->keep_alive = std::move(tensors);
  w.impl_ = std::move(wi);
  return w;
}

void Communicator::allreduce_sum(std::vector<at::Tensor> tensors) {
  allreduce_sum_async(std::move(tensors)).wait();
}

void Communicator::allreduce_mean(std::vector<at::Tensor> tensors) {
  allreduce_sum(tensors);
  if (env_.world_size > 1) {
    for (auto& t : tensors) {
      t.div_(env_.world_size);
    }
  }
}

void Communicator::broadcast(at::Tensor tensor, int root) {
  broadcast_async(std::move(tensor), root).wait();
}

namespace {

/// "reduce of 400 bytes (root 1) on rank 0 of 2", for errors.
std::string describe_work(const char* op, int64_t bytes, int root,
                          const DistEnv& env) {
  std::ostringstream what;
  what << op << " of " << bytes << " bytes (root " << root << ") on rank "
       << env.rank << " of " << env.world_size;
  return what.str();
}

}  // namespace

Work Communicator::broadcast_async(at::Tensor tensor, int root) {
  LOWMEM_CHECK(root >= 0 && root < env_.world_size,
               "[dist] broadcast root must be in [0, ", env_.world_size,
               "), got ", root);
  Work w;
  if (!impl_) {
    return w;
  }
  const int64_t bytes =
      tensor.numel() * static_cast<int64_t>(tensor.element_size());
  stats_.broadcast_bytes += bytes;
  auto wi = std::make_shared<Work::Impl>();
  wi->what = describe_work("broadcast", bytes, root, env_);
  wi->timeout_s = options_.timeout_s();
  std::vector<at::Tensor> v{tensor};
  c10d::BroadcastOptions o;
  o.rootRank = root;
  try {
    wi->work = impl_->pg->broadcast(v, o);
  } catch (const std::exception& e) {
    rethrow("broadcast", e);
  }
  wi->keep_alive = std::move(v);
  w.impl_ = std::move(wi);
  return w;
}

Work Communicator::reduce_sum_async(at::Tensor tensor, int root) {
  LOWMEM_CHECK(root >= 0 && root < env_.world_size,
               "[dist] reduce root must be in [0, ", env_.world_size, "), got ",
               root);
  Work w;
  if (!impl_) {
    return w;
  }
  const int64_t bytes =
      tensor.numel() * static_cast<int64_t>(tensor.element_size());
  stats_.reduce_bytes += bytes;
  auto wi = std::make_shared<Work::Impl>();
  wi->what = describe_work("reduce", bytes, root, env_);
  wi->timeout_s = options_.timeout_s();
  std::vector<at::Tensor> v{tensor};
  c10d::ReduceOptions o;
  o.rootRank = root;
  o.reduceOp = c10d::ReduceOp::SUM;
  try {
    wi->work = impl_->pg->reduce(v, o);
  } catch (const std::exception& e) {
    rethrow("reduce", e);
  }
  wi->keep_alive = std::move(v);
  w.impl_ = std::move(wi);
  return w;
}

std::vector<at::Tensor> Communicator::allgather(const at::Tensor& tensor) {
  if (!impl_) {
    return {tensor.clone()};
  }
  stats_.allgather_bytes +=
      tensor.numel() * static_cast<int64_t>(tensor.element_size());
  std::vector<at::Tensor> in{tensor.contiguous()};
  std::vector<std::vector<at::Tensor>> out(1);
  for (int r = 0; r < env_.world_size; ++r) {
    out[0].push_back(at::empty_like(in[0]));
  }
  try {
    impl_->pg->allgather(out, in)->wait();
  } catch (const std::exception& e) {
    rethrow("allgather", e);
  }
  return out[0];
}

void Communicator::barrier() {
  if (!impl_) {
    return;
  }
  try {
    impl_->pg->barrier()->wait();
  } catch (const std::exception& e) {
    rethrow("barrier", e);
  }
}

}  // namespace lowmem::dist
