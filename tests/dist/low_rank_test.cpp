// Low-rank communication with two ranks as two threads of this process (each
// with its own TCPStore client and Gloo group on 127.0.0.1).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <thread>

#include "lowmem/dist/communicator.h"
#include "lowmem/dist/grad_sync.h"
#include "lowmem/dist/low_rank.h"

namespace {

using namespace lowmem::dist;

void run_ranks(int n, const std::function<void(std::shared_ptr<Communicator>)>& fn) {
  const int port = find_free_port();
  std::vector<std::thread> threads;
  std::vector<std::string> errors(n);
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        DistEnv env;
        env.rank = r;
        env.world_size = n;
        env.local_rank = r;
        env.master_port = port;
        fn(Communicator::init(env, InitOptions().timeout_s(20)));
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  for (int r = 0; r < n; ++r) {
    EXPECT_EQ(errors[r], "") << "rank " << r;
  }
}

// A full-rank gradient that differs per rank.
at::Tensor rank_grad(int rank, int64_t m, int64_t n) {
  auto gen = at::detail::createCPUGenerator(100 + rank);
  return at::randn({m, n}, gen);
}

TEST(LowRankGradSync, MovesRankOverMinDimOfTheFullBytes) {
  const int64_t m = 64, n = 48, r = 8;
  std::vector<int64_t> full(2), low(2);
  std::vector<at::Tensor> result(2), expect(2);
  run_ranks(2, [&](std::shared_ptr<Communicator> comm) {
    const int k = comm->rank();
    auto w = torch::zeros({m, n}, torch::requires_grad());
    w.mutable_grad() = rank_grad(k, m, n);
    GradSync fs(comm, {w}, GradSyncOptions().overlap(false));
    comm->reset_stats();
    fs.synchronize();
    full[k] = comm->stats().allreduce_bytes;
    EXPECT_EQ(fs.bytes_last_step(), full[k]);
    // Shared projection of the per-rank gradients.
    w.mutable_grad() = rank_grad(k, m, n);
    LowRankGradSync ls(comm, {w}, LowRankSyncOptions().rank(r).seed(3));
    comm->reset_stats();
    ls.synchronize();
    low[k] = comm->stats().allreduce_bytes;
    EXPECT_EQ(ls.bytes_last_step(), low[k]);
    EXPECT_EQ(ls.full_bytes_per_step(), full[k]);
    result[k] = w.grad().clone();
    // m >= n: right basis Q [n, r]; the result is G_mean Q Q^T.
    const auto q = ls.last_basis(0);
    EXPECT_EQ(q.sizes(), (std::vector<int64_t>{n, r}));
    const auto mean = (rank_grad(0, m, n) + rank_grad(1, m, n)) / 2;
    expect[k] = mean.matmul(q).matmul(q.t());
  });
  for (int k = 0; k < 2; ++k) {
    EXPECT_EQ(full[k], m * n * 4);
    EXPECT_EQ(low[k], m * r * 4);
    EXPECT_EQ(low[k] * std::min(m, n), full[k] * r);  // r / min(m, n)
    EXPECT_TRUE(torch::allclose(result[k], expect[k], 1e-5, 1e-5));
  }
  EXPECT_TRUE(torch::equal(result[0], result[1]));
}

TEST(LowRankGradSync, PerWorkerProjectionsGrowTheUpdateRank) {
  const int64_t m = 40, n = 64, r = 4;
  std::vector<at::Tensor> shared(2), per_worker(2);
  std::vector<int64_t> bytes(2);
  run_ranks(2, [&](std::shared_ptr<Communicator> comm) {
    const int k = comm->rank();
    auto w = torch::zeros({m, n}, torch::requires_grad());
    w.mutable_grad() = rank_grad(k, m, n);
    LowRankGradSync s(comm, {w}, LowRankSyncOptions().rank(r));
    s.synchronize();
    shared[k] = w.grad().clone();
    w.mutable_grad() = rank_grad(k, m, n);
    LowRankGradSync pw(
        comm, {w}, LowRankSyncOptions().rank(r).mode(ProjectionMode::kPerWorker));
    comm->reset_stats();
    pw.synchronize();
    bytes[k] = comm->stats().total_bytes();
    per_worker[k] = w.grad().clone();
    // Rank k's own basis is P_k; the other's is regenerated from its seed.
    const auto pk = pw.last_basis(0);
    EXPECT_TRUE(torch::equal(pk, pw.random_basis(0, 0, k)));
    EXPECT_FALSE(torch::allclose(pw.random_basis(0, 0, 0), pw.random_basis(0, 0, 1)));
    const auto p0 = pw.random_basis(0, 0, 0), p1 = pw.random_basis(0, 0, 1);
    const auto want = (p0.matmul(p0.t()).matmul(rank_grad(0, m, n)) +
                       p1.matmul(p1.t()).matmul(rank_grad(1, m, n))) / 2;
    EXPECT_TRUE(torch::allclose(per_worker[k], want, 1e-5, 1e-5));
  });
  EXPECT_TRUE(torch::equal(per_worker[0], per_worker[1]));
  EXPECT_EQ(torch::linalg_matrix_rank(shared[0]).item<int64_t>(), r);
  EXPECT_EQ(torch::linalg_matrix_rank(per_worker[0]).item<int64_t>(), 2 * r);
  // Each rank contributes the same r x n piece as in the shared mode.
  EXPECT_EQ(bytes[0], r * n * 4);
}

TEST(TrainerGradSync, AveragesTheGivenGradientsInBuckets) {
  std::vector<std::vector<at::Tensor>> out(2);
  run_ranks(2, [&](std::shared_ptr<Communicator> comm) {
    const int k = comm->rank();
    std::vector<at::Tensor> grads = {
        rank_grad(k, 30, 20), rank_grad(k + 5, 7, 1).view({7}),
        rank_grad(k + 9, 100, 30)};
    auto fn = make_trainer_grad_sync(comm, /*bucket_cap_mb=*/0.004);
    comm->reset_stats();
    fn(grads);
    EXPECT_EQ(comm->stats().allreduce_calls, 2);  // {30x20, 7} and {100x30}
    EXPECT_EQ(comm->stats().allreduce_bytes, (600 + 7 + 3000) * 4);
    out[k] = grads;
    std::vector<at::Tensor> wrong = {rank_grad(k, 30, 20)};
    if (k == 1) {
      wrong.push_back(rank_grad(k, 7, 1));
    }
    try {
      fn(wrong);
      ADD_FAILURE() << "expected a layout error";
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what()).find("[dist] gradient layouts differ"),
                std::string::npos);
    }
  });
  const std::vector<at::Tensor> want = {
      (rank_grad(0, 30, 20) + rank_grad(1, 30, 20)) / 2,
      ((rank_grad(5, 7, 1) + rank_grad(6, 7, 1)) / 2).view({7}),
      (rank_grad(9, 100, 30) + rank_grad(10, 100, 30)) / 2};
  for (int k = 0; k < 2; ++k) {
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_TRUE(torch::allclose(out[k][i], want[i], 1e-6, 1e-6)) << k << " " << i;
    }
  }
}

// The optimizers' hook (SINGD/KFAC statistics, GaLore's in-backward
// gradients): averaged in place, a bf16 tensor through an fp32 copy and
// written back in bf16, and a rank with another layout is named.
TEST(StatisticsSync, AveragesInPlaceInFp32AndChecksTheLayout) {
  std::vector<std::vector<at::Tensor>> out(2);
  run_ranks(2, [&](std::shared_ptr<Communicator> comm) {
    const int k = comm->rank();
    auto fn = make_statistics_sync(comm);
    at::Tensor f = rank_grad(k, 6, 5);
    at::Tensor b = at::full({4}, k == 0 ? 1.0 : 2.0, at::kBFloat16);
    std::vector<at::Tensor> stats = {f, b};
    fn(stats);
    EXPECT_TRUE(stats[0].is_same(f));  // in place
    EXPECT_EQ(b.scalar_type(), at::kBFloat16);
    out[k] = {f.clone(), b.to(at::kFloat)};
    std::vector<at::Tensor> wrong = {rank_grad(k, 6, 5)};
    if (k == 1) wrong.push_back(rank_grad(k, 2, 2));
    try {
      fn(wrong);
      ADD_FAILURE() << "expected a layout error";
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what()).find(
                    "[dist] optimizer statistics layouts differ"),
                std::string::npos)
          << e.what();
    }
  });
  const at::Tensor want = (rank_grad(0, 6, 5) + rank_grad(1, 6, 5)) / 2;
  const at::Tensor mean_b = at::full({4}, 1.5, at::kFloat);
  for (int k = 0; k < 2; ++k) {
    EXPECT_TRUE(torch::allclose(out[k][0], want, 1e-6, 1e-6)) << k;
    EXPECT_TRUE(torch::equal(out[k][1], mean_b)) << k;
  }
}

TEST(LowRankGradSync, BasesRefreshEveryGapAndSmallParamsGoInFull) {
  auto comm = Communicator::init(DistEnv{});
  auto w = torch::zeros({12, 10}, torch::requires_grad());
  auto b = torch::zeros({10}, torch::requires_grad());
  auto tiny = torch::zeros({3, 10}, torch::requires_grad());
  LowRankGradSync s(comm, {w, b, tiny},
                    LowRankSyncOptions().rank(3).update_proj_gap(2));
  EXPECT_TRUE(s.projected(0));
  EXPECT_FALSE(s.projected(1));
  EXPECT_FALSE(s.projected(2));  // min dim 3 = r: nothing to save
  EXPECT_TRUE(torch::equal(s.random_basis(0, 0, 0), s.random_basis(0, 1, 0)));
  EXPECT_FALSE(torch::equal(s.random_basis(0, 1, 0), s.random_basis(0, 2, 0)));
  const auto q = s.random_basis(0, 0, 0);
  EXPECT_TRUE(torch::allclose(q.t().matmul(q), torch::eye(3), 1e-5, 1e-6));
  // One process still projects: G <- G Q Q^T.
  auto g = torch::randn({12, 10});
  w.mutable_grad() = g.clone();
  b.mutable_grad() = torch::ones({10});
  s.synchronize();
  EXPECT_TRUE(torch::allclose(w.grad(), g.matmul(q).matmul(q.t()), 1e-5, 1e-6));
  EXPECT_TRUE(torch::equal(b.grad(), torch::ones({10})));
  EXPECT_TRUE(torch::equal(tiny.grad(), torch::zeros({3, 10})));  // no grad
  auto bad = [&] { LowRankGradSync(comm, {w}, LowRankSyncOptions().rank(0)); };
  EXPECT_THROW(bad(), c10::Error);
}

TEST(LowRankGradSync, ProviderBasisMustHaveTheRightShape) {
  auto comm = Communicator::init(DistEnv{});
  auto w = torch::zeros({12, 10}, torch::requires_grad());
  w.mutable_grad() = torch::randn({12, 10});
  LowRankGradSync s(comm, {w}, LowRankSyncOptions().rank(3).basis_provider(
      [](int64_t, const at::Tensor&, int64_t) { return torch::zeros({12, 3}); }));
  try {
    s.synchronize();
    FAIL() << "expected a shape error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("basis for parameter 0 must be [10, r], got [12, 3]"),
              std::string::npos) << e.what();
  }
}

}  // namespace
