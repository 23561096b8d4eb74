// Multi-process tests: this binary launches itself as workers (the
// DistWorker.DISABLED_Train test, run only when launched) over Gloo on
// 127.0.0.1 with a free port, and compares against in-process 1-rank runs.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdlib>

#include "dist_testing.h"
#include "lowmem/dist/communicator.h"

namespace {

using lowmem::dist::Communicator;
using lowmem::dist::DistEnv;
using namespace lowmem::dist::testing;

TEST(DistWorker, DISABLED_Train) {
  const char* c = std::getenv("LOWMEM_TEST_CONFIG");
  ASSERT_NE(c, nullptr);
  const auto cfg = RunConfig::decode(c);
  auto comm = Communicator::from_environment(
      lowmem::dist::InitOptions().timeout_s(cfg.get_double("timeout", 20)));
  const auto res = run_training(*comm, cfg);
  save_result(
      res, cfg.get("out", "/tmp") + "/rank" + std::to_string(comm->rank()) + ".pt");
}

RunResult reference(RunConfig cfg) {
  auto comm = Communicator::init(DistEnv{});
  cfg.kv.erase("save_at");
  return run_training(*comm, cfg);
}

void expect_params_close(
    const std::vector<at::Tensor>& a,
    const std::vector<at::Tensor>& b,
    double rtol,
    double atol) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(torch::allclose(a[i], b[i], rtol, atol))
        << "param " << i << " max diff " << (a[i] - b[i]).abs().max().item<double>();
  }
}

RunConfig base_config(const std::string& dir) {
  RunConfig cfg;
  cfg.kv = {{"steps", "6"}, {"batch", "8"}, {"out", dir}, {"optim", "adamw"}};
  return cfg;
}

void run_two_vs_one(RunConfig cfg) {
  std::string log;
  const auto r = launch_workers(2, cfg, &log);
  ASSERT_EQ(r.exit_code, 0) << log;
  const auto r0 = load_result(cfg.get("out", "") + "/rank0.pt");
  const auto r1 = load_result(cfg.get("out", "") + "/rank1.pt");
  // Replicas are bit-identical (also checked every step inside the run).
  for (size_t i = 0; i < r0.params.size(); ++i) {
    EXPECT_TRUE(torch::equal(r0.params[i], r1.params[i])) << "param " << i;
  }
  const auto ref = reference(cfg);
  expect_params_close(r0.params, ref.params, 1e-4, 1e-5);
  EXPECT_TRUE(torch::allclose(r0.global_loss, ref.global_loss, 1e-5, 1e-6))
      << r0.global_loss << ref.global_loss;
}

TEST(DataParallel, TwoProcessesEqualOneProcessAdamWOverlapped) {
  auto cfg = base_config(temp_dir());
  cfg.kv["bucket_mb"] = "0.001";  // several buckets, launched from hooks
  run_two_vs_one(cfg);
  const auto r0 = load_result(cfg.get("out", "") + "/rank0.pt");
  EXPECT_GT(r0.early_buckets, 0);
  // Every gradient is all-reduced exactly once: 8*32+32 + 32*16+16 + 16*4+4.
  EXPECT_EQ(r0.bytes_per_step, (8 * 32 + 32 + 32 * 16 + 16 + 16 * 4 + 4) * 4);
}

TEST(DataParallel, TwoProcessesEqualOneProcessSgdAfterBackward) {
  auto cfg = base_config(temp_dir());
  cfg.kv["optim"] = "sgd";
  cfg.kv["overlap"] = "0";
  run_two_vs_one(cfg);
}

TEST(DataParallel, TwoProcessesEqualOneProcessCame) {
  auto cfg = base_config(temp_dir());
  cfg.kv["optim"] = "came";
  run_two_vs_one(cfg);
}

TEST(DataParallel, TwoProcessesEqualOneProcessLora) {
  auto cfg = base_config(temp_dir());
  cfg.kv["model"] = "lora";  // only the adapters train and are all-reduced
  run_two_vs_one(cfg);
  const auto r0 = load_result(cfg.get("out", "") + "/rank0.pt");
  // A [2, in] and B [out, 2] of the three layers.
  EXPECT_EQ(r0.bytes_per_step, 2 * ((8 + 32) + (32 + 16) + (16 + 4)) * 4);
}

TEST(DataParallel, TwoProcessesEqualOneProcessGaLoreFullSync) {
  auto cfg = base_config(temp_dir());
  cfg.kv["optim"] = "galore";  // rank 4, new SVD basis every 3 steps
  run_two_vs_one(cfg);
}

// GaLore with the projected gradients all-reduced (full only on SVD refresh
// steps) still equals one process with the global batch.
TEST(DataParallel, TwoProcessesEqualOneProcessGaLoreLowRankSync) {
  auto cfg = base_config(temp_dir());
  cfg.kv["optim"] = "galore";
  cfg.kv["sync"] = "lowrank_galore";
  cfg.kv["steps"] = "5";  // refreshes at steps 0 and 3; 1, 2, 4 low-rank
  run_two_vs_one(cfg);
  const auto r0 = load_result(cfg.get("out", "") + "/rank0.pt");
  // Last step (4) is low-rank: W1 [32, 8] -> G Q [32, 4]; W2 [16, 32] ->
  // P^T G [4, 32]; W3 [4, 16] (min dim 4 = r) and the biases go in full.
  const int64_t low = 32 * 4 + 4 * 32 + 4 * 16 + 32 + 16 + 4;
  EXPECT_EQ(r0.bytes_per_step, low * 4);
  const int64_t full = 8 * 32 + 32 + 32 * 16 + 16 + 16 * 4 + 4;
  EXPECT_EQ(r0.bytes_total, (2 * full + 3 * low) * 4);
}

TEST(DataParallel, TwoProcessesEqualOneProcessSharedRandomProjection) {
  auto cfg = base_config(temp_dir());
  cfg.kv["sync"] = "lowrank_shared";
  run_two_vs_one(cfg);
}

TEST(DataParallel, DivergedReplicasAreReported) {
  auto cfg = base_config(temp_dir());
  cfg.kv["corrupt_rank"] = "1";
  cfg.kv["corrupt_at"] = "2";
  std::string log;
  const auto r = launch_workers(2, cfg, &log);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(r.exit_codes[0], 1) << log;
  EXPECT_EQ(r.exit_codes[1], 1) << log;
  EXPECT_NE(log.find("[dist] ranks disagree on weights: tensor 0"), std::string::npos)
      << log;
}

TEST(DataParallel, DeadWorkerStopsTheOthersWithinTimeout) {
  auto cfg = base_config(temp_dir());
  cfg.kv["die_rank"] = "1";
  cfg.kv["die_at"] = "2";
  cfg.kv["timeout"] = "3";
  std::string log;
  const auto t0 = std::chrono::steady_clock::now();
  // No kill by the launcher: rank 0 must stop on its own.
  const auto r = launch_workers(2, cfg, &log, /*kill_grace_s=*/-1);
  const double s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(r.first_failed_rank, 1) << log;
  EXPECT_EQ(r.exit_codes[1], 3);
  EXPECT_EQ(r.exit_codes[0], 1) << log;  // gtest failure from the exception
  EXPECT_NE(log.find("[rank 0] "), std::string::npos);
  EXPECT_NE(log.find("[dist] allreduce"), std::string::npos) << log;
  EXPECT_NE(log.find("failed: a peer died, hung or disagreed"), std::string::npos)
      << log;
  EXPECT_LT(s, 25.0) << log;
}

TEST(DataParallel, HungWorkerTimesOutTheOthers) {
  auto cfg = base_config(temp_dir());
  cfg.kv["hang_rank"] = "1";
  cfg.kv["hang_at"] = "2";
  cfg.kv["timeout"] = "2";
  std::string log;
  const auto t0 = std::chrono::steady_clock::now();
  const auto r = launch_workers(2, cfg, &log, /*kill_grace_s=*/0.5);
  const double s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(r.first_failed_rank, 0) << log;
  EXPECT_EQ(r.exit_codes[0], 1) << log;
  EXPECT_NE(r.exit_codes[1], 0);  // killed by the launcher (it was asleep)
  EXPECT_NE(log.find("timeout 2 s"), std::string::npos) << log;
  // The hang lasts 60 s; rank 0 gave up after ~2 s.
  EXPECT_LT(s, 30.0) << log;
}

TEST(DataParallel, ResumeWithSameAndDifferentWorldSize) {
  const std::string ckpt = temp_dir();
  auto cfg = base_config(temp_dir());
  cfg.kv["save_at"] = "3";
  cfg.kv["ckpt"] = ckpt;
  std::string log;
  ASSERT_EQ(launch_workers(2, cfg, &log).exit_code, 0) << log;
  const auto ref = reference(base_config(temp_dir()));
  const auto straight = load_result(cfg.get("out", "") + "/rank0.pt");
  expect_params_close(straight.params, ref.params, 1e-4, 1e-5);

  // Same world size: 2 workers continue from step 3.
  auto again = base_config(temp_dir());
  again.kv["resume"] = ckpt;
  ASSERT_EQ(launch_workers(2, again, &log).exit_code, 0) << log;
  const auto resumed2 = load_result(again.get("out", "") + "/rank0.pt");
  expect_params_close(resumed2.params, straight.params, 1e-5, 1e-6);

  // Different world size: one process continues from the same checkpoint.
  auto one = base_config(temp_dir());
  one.kv["resume"] = ckpt;
  const auto resumed1 = reference(one);
  expect_params_close(resumed1.params, ref.params, 1e-4, 1e-5);
}

}  // namespace
