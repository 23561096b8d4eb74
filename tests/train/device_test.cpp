// The `device` key of lowmem train: parsing and availability errors before
// any work on every machine; CUDA runs (matching the CPU run, resuming across
// devices) only where a GPU is visible. lowmem compare's: tests/compare.
#include "lowmem/train/device.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

#include "lowmem/models/layers.h"
#include "lowmem/train/config.h"
#include "lowmem/train/run.h"
#include "testing/errors.h"
#include "testing/files.h"

namespace lowmem::train {
namespace {

namespace fs = std::filesystem;
using lowmem::testing::expect_config_error;
using lowmem::testing::fresh_temp_dir;
using lowmem::testing::write_corpus;

Config tiny(const fs::path& dir, const std::string& device) {
  Config c;
  c.set("model", "gpt");
  c.set("data", "text");
  c.set("text.path", write_corpus(dir));
  c.set("gpt.n_layer", "1");
  c.set("gpt.n_head", "2");
  c.set("gpt.n_embd", "16");
  c.set("gpt.block_size", "16");
  c.steps = 6;
  c.batch_size = 4;
  c.warmup_steps = 1;
  c.eval_every = 3;
  c.eval_batches = 2;
  c.threads = 1;
  c.device = device;
  return c;
}

bool have_cuda() {
  return torch::cuda::is_available();
}

}  // namespace

TEST(Device, ExplicitCpuIsTheDefaultRun) {
  const fs::path dir = fresh_temp_dir("device_cpu");
  Config c = tiny(dir, "cpu");
  const RunResult a = run(c);
  EXPECT_TRUE(std::isfinite(a.eval_loss));
  Config d = tiny(dir, "cpu");
  d.device = Config().device;  // the default
  EXPECT_EQ(d.device, "cpu");
  EXPECT_DOUBLE_EQ(run(d).eval_loss, a.eval_loss);
  auto s = build_session(c);
  EXPECT_TRUE(s->device.is_cpu());
  for (const auto& p : s->model->parameters()) {
    EXPECT_TRUE(p.device().is_cpu());
  }
  EXPECT_TRUE(s->trainer->device().is_cpu());
}

TEST(Device, BadStringsAreConfigErrorsNamingTheValue) {
  Config c;
  for (const auto& [value, needle] :
       std::vector<std::pair<std::string, std::string>>{
           {"gpu0", "bad device 'gpu0'"},
           {"cuda:x", "bad device 'cuda:x'"},
           {"cpu:2", "bad device 'cpu:2'"},
           {"meta", "device 'meta' holds no data"}}) {
    c.device = value;
    expect_config_error([&] { c.validate(); }, needle);
  }
  // The key is a top-level key like the others.
  c.set("device", "cpu");
  EXPECT_EQ(c.get("device"), "cpu");
  EXPECT_NO_THROW(c.validate());
}

TEST(Device, UnavailableDeviceFailsBeforeAnyWork) {
  const fs::path dir = fresh_temp_dir("device_unavailable");
  // No machine here has 99 GPUs: the message names the value either way
  // (CPU-only build, no GPU visible, or too few GPUs).
  Config c = tiny(dir, "cuda:99");
  c.out_dir = (dir / "out").string();
  expect_config_error([&] { run(c); }, "device 'cuda:99' is not available");
  EXPECT_FALSE(fs::exists(dir / "out"));
  if (!have_cuda()) {
    c.device = "cuda:0";
    expect_config_error([&] { run(c); }, "device 'cuda:0' is not available");
    c.device = "cuda";
    expect_config_error([&] { c.validate(); }, "device 'cuda' is not available");
    EXPECT_FALSE(fs::exists(dir / "out"));
  }
}

TEST(Device, DataParallelTrainsOnTheCpuOnly) {
  Config c;
  c.device = "cuda:0";  // not resolved: the check is about the combination
  expect_config_error([&] { check_data_parallel(c, 2); },
                      "device cuda:0 is not data-parallel yet");
  c.device = "cpu";
  EXPECT_NO_THROW(check_data_parallel(c, 2));
}

// ---- CUDA (skipped without a GPU; scripts/cuda_check.sh runs them there)

TEST(Device, CudaRunMatchesTheCpuRun) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device";
  const fs::path dir = fresh_temp_dir("device_cuda_run");
  const RunResult cpu = run(tiny(dir, "cpu"));
  const RunResult gpu = run(tiny(dir, "cuda"));
  EXPECT_NEAR(gpu.eval_loss, cpu.eval_loss, 2e-3 * std::abs(cpu.eval_loss));
  EXPECT_GT(gpu.peak_bytes, 0);  // the caching allocator's peak
  auto s = build_session(tiny(dir, "cuda:0"));
  for (const auto& p : s->model->parameters()) {
    EXPECT_TRUE(p.device().is_cuda());
  }
}

TEST(Device, ResumeAcrossDevices) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device";
  const fs::path dir = fresh_temp_dir("device_cuda_resume");
  for (const auto& [first, second] :
       std::vector<std::pair<std::string, std::string>>{{"cpu", "cuda"},
                                                        {"cuda", "cpu"}}) {
    SCOPED_TRACE(first + " -> " + second);
    Config a = tiny(dir, first);
    a.save_every = 3;
    a.keep_checkpoints = 0;
    a.out_dir = (dir / ("a-" + first)).string();
    const RunResult whole = run(a);
    Config b = tiny(dir, second);
    b.out_dir = (dir / ("b-" + second)).string();
    b.resume = a.out_dir + "/checkpoints/step-00000003";
    const RunResult resumed = run(b);
    EXPECT_EQ(resumed.resumed_from, 3);
    EXPECT_NEAR(resumed.eval_loss, whole.eval_loss,
                2e-3 * std::abs(whole.eval_loss));
  }
}

}  // namespace lowmem::train
