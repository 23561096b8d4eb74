// Numbers for docs/benchmarks/distributed.md (not part of the default suite):
//   build/tests/dist_tests --gtest_filter=DistBench.DISABLED_Report
//       --gtest_also_run_disabled_tests   (one command line)
// Step time 1 vs 2 processes, bytes per step (full vs low-rank), and the
// quality of shared vs per-worker projections, all with Gloo on 127.0.0.1.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>

#include "dist_testing.h"

namespace {

using namespace lowmem::dist::testing;

struct Row {
  std::string name;
  int procs;
  RunResult r;
};

Row run(const std::string& name, int procs, RunConfig cfg) {
  cfg.kv["out"] = temp_dir();
  std::string log;
  const auto res = launch_workers(procs, cfg, &log);
  EXPECT_EQ(res.exit_code, 0) << log;
  return {name, procs, load_result(cfg.get("out", "") + "/rank0.pt")};
}

double tail_mean(const at::Tensor& t, int64_t k) {
  const int64_t n = t.size(0);
  return t.narrow(0, n - k, k).mean().item<double>();
}

TEST(DistBench, DISABLED_Report) {
  // 1. Step time and bytes: width 256 -> W1 [512, 8], W2 [256, 512],
  // W3 [4, 256]; global batch 64; 40 AdamW steps (10 warm-up excluded by
  // timing all: reported per step over the whole run).
  RunConfig speed;
  speed.kv = {{"width", "256"}, {"batch", "64"}, {"steps", "40"},
              {"optim", "adamw"}, {"check_every", "0"}};
  std::vector<Row> rows;
  rows.push_back(run("full all-reduce", 1, speed));
  rows.push_back(run("full all-reduce", 2, speed));
  auto lr = speed;
  lr.kv["sync"] = "lowrank_shared";
  lr.kv["rank_r"] = "16";
  lr.kv["gap"] = "200";
  rows.push_back(run("low-rank shared r=16", 2, lr));
  auto pw = lr;
  pw.kv["sync"] = "lowrank_per_worker";
  rows.push_back(run("low-rank per-worker r=16", 2, pw));
  auto gal = speed;
  gal.kv["optim"] = "galore";
  gal.kv["sync"] = "lowrank_galore";
  gal.kv["rank_r"] = "16";
  gal.kv["gap"] = "200";
  rows.push_back(run("GaLore r=16, low-rank sync", 2, gal));
  std::printf("\n| run | processes | s/step | bytes/step (last) | bytes/step (mean) |\n");
  std::printf("|---|---|---|---|---|\n");
  for (const auto& row : rows) {
    std::printf("| %s | %d | %.4f | %lld | %.0f |\n", row.name.c_str(), row.procs,
                row.r.seconds_per_step, static_cast<long long>(row.r.bytes_per_step),
                static_cast<double>(row.r.bytes_total) / 40.0);
  }

  // 2. Quality: width 64 -> W1 [128, 8] (min 8), W2 [64, 128] (min 64),
  // W3 [4, 64]; rank 4 projections refreshed every 50 steps; 300 steps.
  RunConfig q;
  q.kv = {{"width", "64"}, {"batch", "32"}, {"steps", "300"},
          {"optim", "adamw"}, {"rank_r", "4"}, {"gap", "50"},
          {"check_every", "50"}};
  std::vector<Row> qrows;
  qrows.push_back(run("full all-reduce", 2, q));
  auto qs = q;
  qs.kv["sync"] = "lowrank_shared";
  qrows.push_back(run("shared projection r=4", 2, qs));
  auto qp = q;
  qp.kv["sync"] = "lowrank_per_worker";
  qrows.push_back(run("per-worker projections r=4", 2, qp));
  auto q4 = q;
  q4.kv["sync"] = "lowrank_per_worker";
  qrows.push_back(run("per-worker projections r=4", 4, q4));
  std::printf("\n| sync (AdamW) | processes | loss @1 | mean loss steps 281-300 | bytes/step |\n");
  std::printf("|---|---|---|---|---|\n");
  for (const auto& row : qrows) {
    std::printf("| %s | %d | %.4f | %.4f | %lld |\n", row.name.c_str(), row.procs,
                row.r.global_loss[0].item<double>(), tail_mean(row.r.global_loss, 20),
                static_cast<long long>(row.r.bytes_per_step));
  }
}

}  // namespace
