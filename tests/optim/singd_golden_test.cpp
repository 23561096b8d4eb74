// Golden parity with the official SINGD (f-dangel/singd): tests/golden/
// singd_dense.pt (dense K and C, T=1) and singd_diagonal.pt (diagonal, T=2).
#include <torch/torch.h>

#include <gtest/gtest.h>

#include "lowmem/adapters/linear_like.h"
#include "lowmem/optim/singd.h"
#include "testing/golden.h"

namespace {

using lowmem::adapters::Linear;
using lowmem::optim::SINGD;
using lowmem::optim::SingdOptions;

// Linear(8,6) -> Tanh -> Linear(6,4) with PyTorch names 0.*, 2.*.
struct GoldenMlp : torch::nn::Module {
  GoldenMlp() {
    l0 = register_module("0", std::make_shared<Linear>(8, 6));
    l2 = register_module("2", std::make_shared<Linear>(6, 4));
  }
  at::Tensor forward(const at::Tensor& x) {
    return l2->forward(torch::tanh(l0->forward(x)));
  }
  std::shared_ptr<Linear> l0, l2;
};

void run_case(const std::string& file, const SingdOptions& opts) {
  auto g = lowmem::testing::load_tensor_dict(
      lowmem::testing::source_path("tests/golden/" + file));
  GoldenMlp model;
  {
    torch::NoGradGuard ng;
    for (auto& p : model.named_parameters()) p.value().copy_(g.at("init." + p.key()));
  }
  SINGD opt(model, opts);
  ASSERT_EQ(opt.layers().size(), 2u);
  for (int t = 1; t <= 12; ++t) {
    const std::string s = std::to_string(t);
    opt.before_forward();
    at::Tensor out = model.forward(g.at("x." + s));
    at::Tensor loss = (out - g.at("y." + s)).pow(2).mean();
    EXPECT_LE(
        lowmem::testing::closeness(loss.detach(), g.at("loss." + s), 1e-5, 1e-6),
        1.0)
        << "loss at step " << t;
    opt.zero_grad();
    loss.backward();
    opt.step();
    for (auto& p : model.named_parameters()) {
      const at::Tensor& want = g.at("after." + s + "." + p.key());
      EXPECT_LE(lowmem::testing::closeness(p.value(), want, 1e-5, 1e-6), 1.0)
          << file << " step " << t << " param " << p.key() << "\n got "
          << p.value() << "\n want " << want;
    }
  }
}

TEST(SingdGolden, Dense) {
  run_case(
      "singd_dense.pt", SingdOptions()
                            .lr(1e-2)
                            .T(1)
                            .lr_cov(1e-2)
                            .alpha1(0.5)
                            .damping(1e-3)
                            .momentum(0.9)
                            .structures("dense,dense"));
}

TEST(SingdGolden, Diagonal) {
  run_case(
      "singd_diagonal.pt", SingdOptions()
                               .lr(1e-2)
                               .T(2)
                               .lr_cov(5e-2)
                               .alpha1(0.5)
                               .damping(1e-3)
                               .momentum(0.9)
                               .structures("diagonal,diagonal"));
}

}  // namespace
