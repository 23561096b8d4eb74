#include "lowmem/dist/env.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>

#include "dist_testing.h"
#include "lowmem/dist/communicator.h"
#include "lowmem/dist/consistency.h"
#include "lowmem/dist/grad_sync.h"
#include "lowmem/dist/launcher.h"
#include "lowmem/dist/shard.h"
#include "testing/errors.h"

namespace {

using namespace lowmem::dist;
using lowmem::dist::testing::RegressionSource;

using lowmem::testing::expect_error_containing;
using lowmem::testing::expect_error_is;
using Vars = std::vector<std::pair<const char*, const char*>>;

// Clears the launchers' variables for one test, sets `vars`, and restores
// the environment afterwards.
class EnvGuard {
 public:
  explicit EnvGuard(const Vars& vars = {}) {
    for (const char* n : kNames) {
      const char* v = std::getenv(n);
      saved_.emplace_back(n, v ? std::optional<std::string>(v) : std::nullopt);
      ::unsetenv(n);
    }
    for (const auto& [n, v] : vars) {
      set(n, v);
    }
  }
  ~EnvGuard() {
    for (const auto& [n, v] : saved_) {
      if (v) {
        ::setenv(n.c_str(), v->c_str(), 1);
      } else {
        ::unsetenv(n.c_str());
      }
    }
  }
  void set(const char* n, const char* v) {
    ::setenv(n, v, 1);
  }

 private:
  static constexpr const char* kNames[] = {
      "RANK",        "WORLD_SIZE",   "LOCAL_RANK",   "MASTER_ADDR",
      "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"};
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

// env_from_environment() must fail with `needle` in its message.
void expect_env_error(const std::string& needle) {
  expect_error_containing([] { env_from_environment(); }, needle);
}

TEST(DistEnv, NoVariablesMeansOneProcess) {
  EnvGuard g;
  const auto env = env_from_environment();
  EXPECT_EQ(env.rank, 0);
  EXPECT_EQ(env.world_size, 1);
  EXPECT_FALSE(env.distributed());
  auto comm = Communicator::init(env);
  EXPECT_EQ(comm->backend(), "local");
  auto t = torch::ones({3});
  comm->allreduce_mean({t});
  EXPECT_TRUE(torch::equal(t, torch::ones({3})));
  EXPECT_EQ(comm->stats().total_bytes(), 0);
}

TEST(DistEnv, ReadsTorchrunVariables) {
  EnvGuard g({{"RANK", "3"},
              {"WORLD_SIZE", "4"},
              {"LOCAL_RANK", "1"},
              {"MASTER_ADDR", "10.0.0.1"},
              {"MASTER_PORT", "29501"}});
  const auto env = env_from_environment();
  EXPECT_EQ(env.rank, 3);
  EXPECT_EQ(env.world_size, 4);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.master_addr, "10.0.0.1");
  EXPECT_EQ(env.master_port, 29501);
}

// srun sets SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID, not RANK/WORLD_SIZE;
// RANK wins where both are set (torchrun inside an allocation).
TEST(DistEnv, ReadsSlurmVariablesWhenRankIsAbsent) {
  {
    EnvGuard g({{"SLURM_PROCID", "5"},
                {"SLURM_NTASKS", "8"},
                {"SLURM_LOCALID", "1"},
                {"MASTER_ADDR", "node-a"},
                {"MASTER_PORT", "29500"}});
    const auto env = env_from_environment();
    EXPECT_EQ(env.rank, 5);
    EXPECT_EQ(env.world_size, 8);
    EXPECT_EQ(env.local_rank, 1);
    EXPECT_EQ(env.master_addr, "node-a");
    g.set("RANK", "2");
    g.set("WORLD_SIZE", "4");
    g.set("LOCAL_RANK", "0");
    const auto torchrun = env_from_environment();
    EXPECT_EQ(torchrun.rank, 2);
    EXPECT_EQ(torchrun.world_size, 4);
  }
  {
    EnvGuard g({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}});
    EXPECT_FALSE(env_from_environment().distributed());
  }
  {
    EnvGuard g({{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "2"}});
    expect_env_error("MASTER_ADDR is not set (WORLD_SIZE=2)");
    g.set("MASTER_ADDR", "127.0.0.1");
    g.set("MASTER_PORT", "29500");
    g.set("SLURM_NTASKS", "x2");
    expect_env_error("SLURM_NTASKS must be an integer, got 'x2'");
    g.set("SLURM_NTASKS", "1");
    expect_env_error("RANK must be in [0, WORLD_SIZE=1), got 1");
  }
  {
    // The messages of the one reader both launchers share (src/dist/env.cpp).
    EnvGuard g;
    expect_error_is([] { env_from_slurm(); }, "[dist] SLURM_PROCID is not set");
    g.set("SLURM_NTASKS", "2");
    expect_error_is([] { env_from_slurm(); }, "[dist] SLURM_PROCID is not set");
    g.set("SLURM_PROCID", "1");
    ::unsetenv("SLURM_NTASKS");
    expect_error_is([] { env_from_environment(); },
                    "[dist] SLURM_PROCID is set (1) but SLURM_NTASKS is not; "
                    "run the workers with srun");
  }
}

TEST(DistEnv, RejectsMissingAndBadValues) {
  {
    EnvGuard g(Vars{{"WORLD_SIZE", "2"}});
    expect_error_is([] { env_from_environment(); },
                    "[dist] WORLD_SIZE is set (2) but RANK is not; set both "
                    "(torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, "
                    "MASTER_PORT)");
  }
  {
    EnvGuard g(Vars{{"RANK", "1"}});
    expect_error_is([] { env_from_environment(); },
                    "[dist] RANK is set (1) but WORLD_SIZE is not; set both");
  }
  const std::vector<std::pair<Vars, std::string>> bad = {
      {{{"RANK", "0"}, {"WORLD_SIZE", "two"}},
       "WORLD_SIZE must be an integer, got 'two'"},
      {{{"RANK", "2"},
        {"WORLD_SIZE", "2"},
        {"MASTER_ADDR", "127.0.0.1"},
        {"MASTER_PORT", "1234"}},
       "RANK must be in [0, WORLD_SIZE=2), got 2"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "127.0.0.1"}},
       "MASTER_PORT is not set"},
      {{{"RANK", "0"},
        {"WORLD_SIZE", "2"},
        {"MASTER_ADDR", "127.0.0.1"},
        {"MASTER_PORT", "70000"}},
       "MASTER_PORT must be in [1, 65535], got 70000"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "1234"}},
       "MASTER_ADDR is not set"},
  };
  for (const auto& [vars, message] : bad) {
    EnvGuard g(vars);
    expect_env_error(message);
  }
}

TEST(DistEnv, RejectsBadInitOptions) {
  expect_error_containing(
      [] { Communicator::init(DistEnv{}, InitOptions().backend("mpi")); },
      "[dist] backend must be gloo, nccl or auto, got 'mpi'");
  expect_error_containing(
      [] { Communicator::init(DistEnv{}, InitOptions().timeout_s(0)); },
      "timeout_s must be > 0, got 0");
  expect_error_containing(
      [] {
        Communicator::init(DistEnv{}, InitOptions().rendezvous_timeout_s(-1));
      },
      "rendezvous_timeout_s must be > 0, got -1");
#ifndef LOWMEM_WITH_CUDA
  expect_error_containing(
      [] { Communicator::init(DistEnv{}, InitOptions().backend("nccl")); },
      "needs a CUDA build");
#endif
}

TEST(DistEnv, RendezvousTimesOutWhenPeersNeverArrive) {
  DistEnv env;
  env.rank = 0;
  env.world_size = 2;
  env.master_port = find_free_port();
  expect_error_containing(
      [&] { Communicator::init(env, InitOptions().rendezvous_timeout_s(0.5)); },
      "[dist] rendezvous failed for rank 0 of 2");
}

TEST(ShardedSource, SplitsTheGlobalBatchAndKeepsGlobalPositions) {
  auto whole = RegressionSource(8, 1).next();
  ShardedSource r0(std::make_shared<RegressionSource>(8, 1), 0, 2);
  ShardedSource r1(std::make_shared<RegressionSource>(8, 1), 1, 2);
  const auto a = r0.next();
  const auto b = r1.next();
  EXPECT_TRUE(torch::equal(torch::cat({a.input, b.input}), whole.input));
  EXPECT_TRUE(torch::equal(torch::cat({a.target, b.target}), whole.target));
  EXPECT_EQ(r0.position(), 1);
  r1.seek(5);
  RegressionSource plain(8, 1);
  plain.seek(5);
  EXPECT_TRUE(torch::equal(r1.next().input, plain.next().input.narrow(0, 4, 4)));
  ShardedSource bad(std::make_shared<RegressionSource>(6, 1), 0, 4);
  expect_error_containing(
      [&] { bad.next(); },
      "global batch size (6) must be divisible by the number of ranks (4)");
}

TEST(ShardedSource, StrideTakesEveryWorldSizeThBatch) {
  ShardedSource r1(std::make_shared<RegressionSource>(4, 2), 1, 3,
                   ShardMode::kStride);
  RegressionSource plain(4, 2);
  std::vector<at::Tensor> all;
  for (int i = 0; i < 6; ++i) {
    all.push_back(plain.next().input);
  }
  EXPECT_TRUE(torch::equal(r1.next().input, all[1]));
  EXPECT_TRUE(torch::equal(r1.next().input, all[4]));
  EXPECT_EQ(r1.position(), 6);
}

TEST(Fingerprint, EqualForEqualBitsDifferentOtherwise) {
  auto a = torch::randn({5, 7});
  EXPECT_EQ(fingerprint(a), fingerprint(a.clone()));
  auto b = a.clone();
  b[2][3] = std::nextafter(b[2][3].item<float>(), 1e9f);
  EXPECT_NE(fingerprint(a), fingerprint(b));
  EXPECT_NE(fingerprint(a), fingerprint(a.view({7, 5})));
  EXPECT_NE(fingerprint(a), fingerprint(a.to(torch::kDouble)));
  EXPECT_EQ(fingerprint(a.t()), fingerprint(a.t().contiguous()));
}

TEST(GradSync, OneProcessLeavesGradientsAlone) {
  auto comm = Communicator::init(DistEnv{});
  auto w = torch::randn({4, 3}, torch::requires_grad());
  GradSync sync(comm, {w});
  (w * w).sum().backward();
  const auto g = w.grad().clone();
  sync.synchronize();
  EXPECT_TRUE(torch::equal(w.grad(), g));
  EXPECT_EQ(sync.bytes_last_step(), 0);
}

TEST(GradSync, BucketsFollowReverseOrderAndCapacity) {
  auto comm = Communicator::init(DistEnv{});
  std::vector<at::Tensor> ps;
  for (int i = 0; i < 5; ++i) {
    ps.push_back(torch::zeros({256}, torch::requires_grad()));  // 1 KiB each
  }
  GradSync sync(comm, ps, GradSyncOptions().bucket_cap_mb(2.5 / 1024));
  const auto b = sync.bucket_indices();
  ASSERT_EQ(b.size(), 3u);
  EXPECT_EQ(b[0], (std::vector<int64_t>{4, 3}));
  EXPECT_EQ(b[1], (std::vector<int64_t>{2, 1}));
  EXPECT_EQ(b[2], (std::vector<int64_t>{0}));
  expect_error_containing(
      [&] { GradSync(comm, ps, GradSyncOptions().bucket_cap_mb(0)); },
      "bucket_cap_mb must be > 0, got 0");
  auto frozen = torch::zeros({3});
  expect_error_containing([&] { GradSync(comm, {frozen}); },
                          "must be a defined tensor that requires grad");
}

TEST(Launcher, ForwardsOutputWithRanksAndReturnsFirstFailure) {
  std::vector<std::string> lines;
  const auto r = launch_local(
      {"/bin/sh", "-c",
       "echo \"hello $RANK of $WORLD_SIZE local $LOCAL_RANK at $MASTER_ADDR\"; "
       "echo oops >&2; [ \"$RANK\" = 1 ] && exit 7; exit 0"},
      LaunchOptions().nproc_per_node(3),
      [&](int rank, bool err, const std::string& line) {
        lines.push_back(std::to_string(rank) + (err ? "E:" : "O:") + line);
      });
  EXPECT_EQ(r.exit_code, 7);
  EXPECT_EQ(r.first_failed_rank, 1);
  EXPECT_EQ(r.exit_codes, (std::vector<int>{0, 7, 0}));
  for (int k = 0; k < 3; ++k) {
    const auto want = std::to_string(k) + "O:hello " + std::to_string(k) +
        " of 3 local " + std::to_string(k) + " at 127.0.0.1";
    EXPECT_NE(std::find(lines.begin(), lines.end(), want), lines.end()) << want;
    EXPECT_NE(std::find(lines.begin(), lines.end(), std::to_string(k) + "E:oops"),
              lines.end());
  }
  std::ostringstream os;
  launch_local({"/bin/echo", "x"}, LaunchOptions(), prefixed_stream_sink(os));
  EXPECT_EQ(os.str(), "[rank 0] x\n");
  const auto missing = launch_local({"/nonexistent/prog"}, LaunchOptions(), nullptr);
  EXPECT_EQ(missing.exit_code, 127);
}

// --nnodes 2 --node-rank 1 --nproc-per-node 2: global ranks 2 and 3 of 4,
// with the group/role variables torchrun's static rendezvous sets.
TEST(Launcher, SecondNodeGetsGlobalRanksAndTorchrunVariables) {
  std::vector<std::string> lines;
  const auto r = launch_local(
      {"/bin/sh", "-c",
       "echo \"$RANK/$WORLD_SIZE $LOCAL_RANK/$LOCAL_WORLD_SIZE "
       "$GROUP_RANK/$GROUP_WORLD_SIZE $ROLE_RANK/$ROLE_WORLD_SIZE $ROLE_NAME "
       "$MASTER_ADDR:$MASTER_PORT $TORCHELASTIC_RESTART_COUNT\"; "
       "[ \"$RANK\" = 3 ] && exit 5; exit 0"},
      LaunchOptions()
          .nproc_per_node(2)
          .nnodes(2)
          .node_rank(1)
          .master_addr("127.0.0.9")
          .master_port(29555),
      [&](int rank, bool, const std::string& line) {
        lines.push_back(std::to_string(rank) + ":" + line);
      });
  std::sort(lines.begin(), lines.end());
  EXPECT_EQ(lines, (std::vector<std::string>{
                       "2:2/4 0/2 1/2 2/4 default 127.0.0.9:29555 0",
                       "3:3/4 1/2 1/2 3/4 default 127.0.0.9:29555 0"}));
  EXPECT_EQ(r.first_failed_rank, 3);
  EXPECT_EQ(r.exit_codes, (std::vector<int>{0, 5}));
  const std::vector<std::pair<LaunchOptions, std::string>> bad = {
      {LaunchOptions().nnodes(0), "nnodes must be >= 1, got 0"},
      {LaunchOptions().nnodes(2).node_rank(2),
       "node_rank must be in [0, nnodes=2), got 2"},
      {LaunchOptions().nnodes(2),
       "master_port 0 (pick a free port) works on "
       "one node only; with nnodes=2"},
      {LaunchOptions().master_port(-3),
       "master_port must be in [0, 65535], got -3"},
      {LaunchOptions().master_addr(""), "master_addr is empty"},
  };
  for (const auto& [options, message] : bad) {
    expect_error_containing(
        [&] { launch_local({"/bin/true"}, options, nullptr); }, message);
  }
}

}  // namespace
