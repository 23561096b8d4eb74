// The `device` option of lowmem compare: parsing and availability errors
// before any work (in a forked child when isolating); the toy suite on CUDA
// matches the CPU run where a GPU is visible (scripts/cuda_check.sh).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <string>

#include "lowmem/compare/compare.h"
#include "lowmem/core/fields.h"
#include "testing/errors.h"
#include "testing/files.h"

namespace lowmem::compare {
namespace {

namespace fs = std::filesystem;
using lowmem::testing::expect_config_error;
using lowmem::testing::fresh_temp_dir;

bool have_cuda() { return torch::cuda::is_available(); }

}  // namespace

TEST(Device, CompareChecksTheDeviceBeforeAnyWork) {
  const fs::path out = fresh_temp_dir("device_compare");
  CompareOptions o;
  o.suites = {"toy"};
  o.out_dir = (out / "run").string();
  o.toy_steps = 3;
  o.threads = 1;
  o.gnuplot = "";
  for (const bool isolate : {true, false}) {
    o.isolate = isolate;  // isolated: checked in a forked child
    o.device = "gpu";
    expect_config_error([&] { run_compare(o); }, "bad device 'gpu'");
    o.device = "cuda:99";
    expect_config_error([&] { run_compare(o); },
                        "device 'cuda:99' is not available");
  }
  EXPECT_FALSE(fs::exists(out / "run"));
  // Explicit cpu: the default run.
  o.isolate = false;
  o.methods = {"adamw"};
  o.device = "cpu";
  const auto a = run_compare(o).methods.at(0);
  ASSERT_EQ(a.status, "ok") << a.reason;
  o.device = CompareOptions().device;
  EXPECT_EQ(o.device, "cpu");
  EXPECT_DOUBLE_EQ(*run_compare(o).methods.at(0).val_loss, *a.val_loss);
}

// ---- CUDA (skipped without a GPU; scripts/cuda_check.sh runs them there)

TEST(Device, CompareToySuiteOnCuda) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device";
  const fs::path out = fresh_temp_dir("device_cuda_compare");
  CompareOptions o;
  o.suites = {"toy"};
  o.out_dir = out.string();
  o.toy_steps = 6;
  o.threads = 1;
  o.gnuplot = "";
  o.isolate = false;
  const auto cpu = run_compare(o).methods;
  o.device = "cuda";
  const auto gpu = run_compare(o).methods;
  ASSERT_EQ(gpu.size(), cpu.size());
  for (size_t i = 0; i < gpu.size(); ++i) {
    SCOPED_TRACE(gpu[i].info.name);
    ASSERT_EQ(gpu[i].status, "ok") << gpu[i].reason;
    EXPECT_NEAR(*gpu[i].val_loss, *cpu[i].val_loss,
                1e-3 * std::abs(*cpu[i].val_loss));
    EXPECT_EQ(gpu[i].optimizer_state_bytes, cpu[i].optimizer_state_bytes);
    EXPECT_GT(gpu[i].peak_tensor_bytes, 0);
  }
}

}  // namespace lowmem::compare
