// Test harness for data-parallel runs: a tiny deterministic model and data
// source, one training loop shared by the in-process 1-rank reference and the
// launched workers, and helpers to launch this test binary as N workers.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "lowmem/data/batch.h"
#include "lowmem/dist/communicator.h"
#include "lowmem/dist/launcher.h"

namespace lowmem::dist::testing {

/// Batch i is a pure function of (seed, i): inputs [B, 8], targets [B, 4].
class RegressionSource final : public data::BatchSource {
 public:
  RegressionSource(int64_t batch, uint64_t seed) : batch_(batch), seed_(seed) {}
  data::Batch next() override;
  int64_t position() const override {
    return pos_;
  }
  void seek(int64_t p) override {
    pos_ = p;
  }
  std::string describe() const override {
    return "regression";
  }

 private:
  int64_t batch_;
  uint64_t seed_;
  int64_t pos_ = 0;
};

/// Everything a run needs, passed to workers as "k=v;k=v" in
/// LOWMEM_TEST_CONFIG.
struct RunConfig {
  std::map<std::string, std::string> kv;
  std::string get(const std::string& k, const std::string& def) const;
  int64_t get_int(const std::string& k, int64_t def) const;
  double get_double(const std::string& k, double def) const;
  std::string encode() const;
  static RunConfig decode(const std::string& s);
};

struct RunResult {
  std::vector<at::Tensor> params;
  at::Tensor losses;       // [steps] this rank's local losses
  at::Tensor global_loss;  // [steps] loss averaged over ranks
  int64_t bytes_per_step = 0;  // last step
  int64_t bytes_total = 0;
  int64_t early_buckets = 0;
  double seconds_per_step = 0;
};

/// Trains the tiny model. Keys: optim (adamw|sgd|came|galore), width, steps,
/// batch, overlap, bucket_mb, sync (full|none|lowrank_shared|
/// lowrank_per_worker|lowrank_galore), rank_r, gap,
/// save_at + ckpt (dir), resume (dir), die_rank/die_at, hang_rank/hang_at,
/// check_every, corrupt_rank.
RunResult run_training(Communicator& comm, const RunConfig& cfg);

/// Launches this test binary as `n` workers running the worker test
/// DistWorker.DISABLED_Train with `cfg`; each worker saves its RunResult to
/// <dir>/rank<r>.pt. Output lines are collected into `log`.
LaunchResult launch_workers(
    int n,
    const RunConfig& cfg,
    std::string* log,
    double kill_grace_s = 30.0);

void save_result(const RunResult& r, const std::string& path);
RunResult load_result(const std::string& path);

/// Runs `fn` as ranks 0..n-1 of one job, each a thread of this process with
/// its own TCPStore client and Gloo group on 127.0.0.1 (a free port); returns
/// each rank's error text ("" if it finished).
std::vector<std::string> run_thread_ranks(
    int n, const std::function<void(std::shared_ptr<Communicator>)>& fn,
    double timeout_s = 30.0);

/// A fresh empty directory under /tmp.
std::string temp_dir();

}  // namespace lowmem::dist::testing
