// Parity with the official implementations (tests/golden/README.md):
// came_default (yangluo7/CAME) and adafactor_fixed_lr (HF Adafactor), every
// step to 1e-5 relative / 1e-6 absolute, on both the fused and ATen paths.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <memory>

#include "lowmem/optim/adafactor.h"
#include "lowmem/optim/came.h"
#include "optim_test_util.h"
#include "testing/golden.h"

namespace {

using lowmem::testing::closeness;
using lowmem::testing::load_tensor_dict;
using lowmem::testing::source_path;

void run_golden(
    const std::string& file,
    int steps,
    const std::function<std::unique_ptr<torch::optim::Optimizer>(
        std::vector<torch::Tensor>)>& make) {
  auto d = load_tensor_dict(source_path("tests/golden/" + file));
  auto params = lowmem::testing::golden_params(d);
  ASSERT_FALSE(params.empty());
  auto opt = make(lowmem::testing::values(params));
  for (int t = 1; t <= steps; ++t) {
    for (auto& kv : params) {
      lowmem::testing::set_grad(
          kv.second, d.at("grad." + std::to_string(t) + "." + kv.first));
    }
    opt->step();
    for (auto& kv : params) {
      const auto& want = d.at("after." + std::to_string(t) + "." + kv.first);
      const double c = closeness(kv.second.detach(), want, 1e-5, 1e-6);
      ASSERT_LE(c, 1.0) << file << " step " << t << " param " << kv.first;
    }
  }
}

class GoldenPath : public ::testing::TestWithParam<bool> {};

TEST_P(GoldenPath, CameDefault) {
  lowmem::testing::ReferencePath ref(GetParam());
  run_golden("came_default.pt", 20, [](std::vector<torch::Tensor> p) {
    return std::make_unique<lowmem::optim::CAME>(
        p, lowmem::optim::CameOptions(0.002).weight_decay(0.01));
  });
}

TEST_P(GoldenPath, AdafactorFixedLr) {
  lowmem::testing::ReferencePath ref(GetParam());
  run_golden("adafactor_fixed_lr.pt", 20, [](std::vector<torch::Tensor> p) {
    return std::make_unique<lowmem::optim::Adafactor>(
        p, lowmem::optim::AdafactorOptions(0.01)
               .relative_step(false)
               .scale_parameter(false)
               .warmup_init(false));
  });
}

INSTANTIATE_TEST_SUITE_P(
    FusedAndReference,
    GoldenPath,
    ::testing::Values(false, true),
    [](const ::testing::TestParamInfo<bool>& i) {
      return i.param ? std::string("Reference") : std::string("Fused");
    });

}  // namespace
