// A thin handle on PyTorch's c10d engine: TCPStore rendezvous plus
// ProcessGroupGloo (CPU) or ProcessGroupNCCL (CUDA builds of LibTorch), with
// byte accounting and errors that name the rank and the timeout. No paper.
// Deviation from torch.distributed: a world of one needs no store or group.
#pragma once

#include "lowmem/dist/env.h"

#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace lowmem::dist {

/// Options of Communicator::init.
struct InitOptions {
  /// "gloo", "nccl" or "auto" (nccl when LibTorch has CUDA and `device` is a
  /// CUDA device, else gloo), as torch.distributed.init_process_group.
  TORCH_ARG(std::string, backend) = "auto";
  /// Seconds a collective may wait for peers before failing.
  /// torch.distributed's default is 1800 s (default_pg_timeout); lowmem uses
  /// 300 s so a dead worker is noticed in minutes, not half an hour.
  TORCH_ARG(double, timeout_s) = 300.0;
  /// Seconds the rendezvous (all ranks joining the TCPStore and connecting
  /// Gloo) may take; workers start at different times. torchrun's join
  /// timeout default is 600 s.
  TORCH_ARG(double, rendezvous_timeout_s) = 600.0;
  /// Device the collectives run on (tensors passed in must live there).
  TORCH_ARG(std::string, device) = "cpu";
};

/// Bytes and calls handed to collectives since the last reset (payload sizes;
/// a ring all-reduce puts about 2 (W-1)/W times the payload on the wire).
struct CommStats {
  int64_t allreduce_bytes = 0;
  int64_t allreduce_calls = 0;
  int64_t allgather_bytes = 0;  // bytes this rank contributes
  int64_t broadcast_bytes = 0;
  int64_t reduce_bytes = 0;  // bytes this rank hands to reduce (any root)
  int64_t total_bytes() const {
    return allreduce_bytes + allgather_bytes + broadcast_bytes + reduce_bytes;
  }
};

class Communicator;

/// An in-flight collective. wait() rethrows its failure as "[dist] ..." with
/// the operation, rank and timeout.
class Work {
 public:
  Work() = default;
  /// Blocks until done; throws if a peer died or the timeout passed.
  void wait();
  bool valid() const {
    return impl_ != nullptr;
  }

 private:
  friend class Communicator;
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

class Communicator {
 public:
  /// Joins the job described by `env` (blocks until all ranks arrived or the
  /// timeout passed). A world of one returns at once and every collective is
  /// the identity.
  static std::shared_ptr<Communicator> init(
      const DistEnv& env,
      const InitOptions& options = {});
  /// init(env_from_environment(), options).
  static std::shared_ptr<Communicator> from_environment(
      const InitOptions& options = {});
  ~Communicator();

  int rank() const {
    return env_.rank;
  }
  int world_size() const {
    return env_.world_size;
  }
  int local_rank() const {
    return env_.local_rank;
  }
  bool is_main() const {
    return env_.rank == 0;
  }
  const DistEnv& env() const {
    return env_;
  }
  const InitOptions& options() const {
    return options_;
  }
  /// "gloo", "nccl" or "local" (world of one).
  std::string backend() const;

  /// Sums `tensors` in place across ranks (one collective), asynchronously.
  /// The tensors must stay alive and untouched until wait().
  Work allreduce_sum_async(std::vector<at::Tensor> tensors);
  /// Sums in place and blocks.
  void allreduce_sum(std::vector<at::Tensor> tensors);
  /// Averages in place (sum, then divide by world_size) and blocks.
  void allreduce_mean(std::vector<at::Tensor> tensors);
  /// Copies rank `root`'s `tensor` into every rank's `tensor` (in place).
  void broadcast(at::Tensor tensor, int root = 0);
  /// broadcast, asynchronously (the tensor must stay untouched until wait()).
  Work broadcast_async(at::Tensor tensor, int root);
  /// Sums every rank's `tensor` into rank `root`'s `tensor` (the others' are
  /// left unspecified), asynchronously. ProcessGroupGloo of LibTorch 1.13 has
  /// no reduce_scatter; ZeRO-2 (dist/zero.h) reduces each owner's bucket to
  /// its owner with this instead.
  Work reduce_sum_async(at::Tensor tensor, int root);
  /// Every rank's `tensor` (same shape on all ranks), indexed by rank.
  std::vector<at::Tensor> allgather(const at::Tensor& tensor);
  /// Blocks until every rank arrived (fails after the timeout).
  void barrier();

  const CommStats& stats() const {
    return stats_;
  }
  void reset_stats() {
    stats_ = {};
  }

  struct Impl;

 private:
  Communicator(DistEnv env, InitOptions options);
  [[noreturn]] void rethrow(const char* op, const std::exception& e) const;

  DistEnv env_;
  InitOptions options_;
  CommStats stats_;
  std::unique_ptr<Impl> impl_;  // null for a world of one
};

}  // namespace lowmem::dist
