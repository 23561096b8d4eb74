// The CUDA path: every optimizer takes the same steps on a CUDA device as on
// the CPU (fused CPU kernels vs the device-generic ATen path; SVD from LAPACK
// vs cuSOLVER; random sketches drawn on the CPU generator and moved), the GPT
// gives the same loss and gradients, and MemoryTracker reads the CUDA caching
// allocator. Skipped (GTEST_SKIP) when LibTorch has no CUDA device; run on a
// GPU machine with a CUDA build of LibTorch (docs/DEVELOPERS.md, "CUDA").
#include <torch/torch.h>

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "galore_test_util.h"
#include "lowmem/core/memory.h"
#include "lowmem/models/gpt.h"
#include "lowmem/optim/adafactor.h"
#include "lowmem/optim/adamw.h"
#include "lowmem/optim/came.h"
#include "lowmem/optim/galore.h"
#include "lowmem/optim/kfac.h"
#include "lowmem/optim/singd.h"

namespace {

namespace lo = lowmem::optim;
using galore_test::Mlp;

bool have_cuda() {
  return torch::cuda::is_available();
}

using MakeOpt = std::function<std::unique_ptr<torch::optim::Optimizer>(Mlp&)>;

/// Three steps of `make` on the same MLP and data on `device`; returns the
/// parameters on the CPU.
std::vector<at::Tensor> train(const MakeOpt& make, torch::Device device) {
  auto m = galore_test::make_mlp({24, 32, 16}, torch::kFloat32, /*seed=*/7);
  m->to(device);
  auto opt = make(*m);
  auto data = galore_test::make_data(3, 8, 24, 16, torch::kFloat32);
  for (auto& b : data) {
    opt->zero_grad();
    auto loss = (m->forward(b.x.to(device)) - b.y.to(device)).pow(2).mean();
    loss.backward();
    opt->step();
  }
  std::vector<at::Tensor> out;
  for (auto& p : m->parameters()) out.push_back(p.detach().cpu());
  return out;
}

struct CudaCase {
  std::string name;
  MakeOpt make;
};

std::vector<CudaCase> cuda_cases() {
  auto params = [](Mlp& m) { return m.parameters(); };
  // One SVD basis for the three steps: a singular vector's sign is LAPACK's or
  // cuSOLVER's choice, and the update is sign-invariant only while the inner
  // state stays in one basis (official GaLore keeps the moments across a
  // refresh, so after one the two devices may legitimately part ways).
  lo::GaLoreOptions galore;
  galore.projector(lowmem::projection::ProjectorOptions().rank(4).update_proj_gap(10));
  // Random sketches are drawn on the CPU generator: refreshes agree exactly.
  lo::GaLoreOptions sketch;
  sketch.projector(lowmem::projection::ProjectorOptions().rank(4).update_proj_gap(2).basis("gaussian").seed(3));
  return {
      {"AdamW", [=](Mlp& m) { return std::make_unique<lo::AdamW>(params(m), lo::AdamWOptions(1e-2)); }},
      {"CAME", [=](Mlp& m) { return std::make_unique<lo::CAME>(params(m), lo::CameOptions(1e-2)); }},
      {"Adafactor", [=](Mlp& m) {
         return std::make_unique<lo::Adafactor>(params(m), lo::AdafactorOptions().lr(1e-2).relative_step(false));
       }},
      {"GaLoreSvd", [=](Mlp& m) {
         auto split = lo::GaLore::route(m);
         return std::make_unique<lo::GaLore>(split.first, split.second, galore_test::adamw(1e-2), galore);
       }},
      {"GaLoreGaussianSketch", [=](Mlp& m) {
         auto split = lo::GaLore::route(m);
         return std::make_unique<lo::GaLore>(split.first, split.second, galore_test::came(1e-2), sketch);
       }},
      {"SingdDense", [](Mlp& m) { return std::make_unique<lo::SINGD>(m, lo::SingdOptions().lr(1e-2).T(1)); }},
      {"SingdDiagonal", [](Mlp& m) {
         return std::make_unique<lo::SINGD>(m, lo::SingdOptions().lr(1e-2).T(1).structures("diagonal,diagonal"));
       }},
      {"SingdBf16", [](Mlp& m) {
         return std::make_unique<lo::SINGD>(m, lo::SingdOptions().lr(1e-2).T(1).preconditioner_dtype("bfloat16"));
       }},
      {"KFAC", [](Mlp& m) { return std::make_unique<lo::KFAC>(m, lo::KfacOptions().lr(1e-2).T(1)); }},
  };
}

TEST(Cuda, EveryOptimizerStepsAsOnTheCpu) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device";
  for (const auto& c : cuda_cases()) {
    SCOPED_TRACE(c.name);
    auto cpu = train(c.make, torch::kCPU);
    auto gpu = train(c.make, torch::Device(torch::kCUDA, 0));
    ASSERT_EQ(cpu.size(), gpu.size());
    // bf16 factors round differently on the two devices' kernels.
    const double tol = c.name == "SingdBf16" ? 2e-2 : 1e-4;
    for (size_t i = 0; i < cpu.size(); ++i) {
      EXPECT_TRUE(torch::isfinite(gpu[i]).all().item<bool>());
      const double err = (cpu[i] - gpu[i]).abs().max().item<double>();
      const double ref = cpu[i].abs().max().item<double>();
      EXPECT_LE(err, tol * std::max(ref, 1.0)) << "param " << i;
    }
  }
}

TEST(Cuda, GptLossAndGradientsMatchTheCpu) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device";
  lowmem::models::GPTConfig cfg;
  cfg.n_layer(2).n_head(2).n_embd(32).block_size(16);
  torch::manual_seed(0);
  auto cpu = std::make_shared<lowmem::models::GPT>(cfg);
  torch::manual_seed(0);
  auto gpu = std::make_shared<lowmem::models::GPT>(cfg);
  gpu->to(torch::Device(torch::kCUDA, 0));
  auto idx = torch::randint(0, 256, {4, 16}, torch::kLong);
  auto tgt = torch::randint(0, 256, {4, 16}, torch::kLong);
  auto lc = cpu->loss(idx, tgt);
  auto lg = gpu->loss(idx.cuda(), tgt.cuda());
  lc.backward();
  lg.backward();
  EXPECT_NEAR(lc.item<double>(), lg.item<double>(), 1e-5);
  auto pc = cpu->named_parameters();
  auto pg = gpu->named_parameters();
  for (const auto& kv : pc) {
    SCOPED_TRACE(kv.key());
    auto gc = kv.value().grad();
    auto gg = pg[kv.key()].grad().cpu();
    EXPECT_LE((gc - gg).abs().max().item<double>(), 1e-4 * std::max(1.0, gc.abs().max().item<double>()));
  }
}

TEST(Cuda, MemoryTrackerReadsTheCachingAllocator) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device";
  lowmem::MemoryTracker tracker(torch::Device(torch::kCUDA, 0));
  auto scope = tracker.scope();
  const int64_t before = tracker.current_bytes();
  auto t = torch::empty({1 << 20}, torch::TensorOptions().device(torch::kCUDA).dtype(torch::kFloat32));
  EXPECT_GE(tracker.current_bytes() - before, int64_t{4} << 20);
  EXPECT_GE(scope.peak_delta(), int64_t{4} << 20);
  t.reset();
  EXPECT_LT(tracker.current_bytes() - before, int64_t{4} << 20);
}

}  // namespace
