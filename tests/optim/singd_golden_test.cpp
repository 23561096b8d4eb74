// Golden parity with the official SINGD (f-dangel/singd): tests/golden/
// singd_dense.pt (dense K and C, T=1) and singd_diagonal.pt (diagonal, T=2).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "lowmem/nn/conv2d.h"
#include "lowmem/nn/linear.h"
#include "lowmem/optim/singd.h"
#include "testing/golden.h"

namespace {

using lowmem::nn::Linear;
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

// Cases written by tools/golden/singd_cases.py (official SINGD, 8 steps).
struct Mlp975 : torch::nn::Module {
  Mlp975() {
    l0 = register_module("0", std::make_shared<Linear>(9, 7));
    l2 = register_module("2", std::make_shared<Linear>(7, 5));
  }
  at::Tensor forward(const at::Tensor& x) {
    return l2->forward(torch::tanh(l0->forward(x)));
  }
  std::shared_ptr<Linear> l0, l2;
};

struct ConvNet : torch::nn::Module {
  ConvNet() {
    lowmem::nn::Conv2dOptions o;
    o.in_channels = 2;
    o.out_channels = 3;
    o.kernel_size = {3, 3};
    o.padding = {1, 1};
    conv = register_module("conv", std::make_shared<lowmem::nn::Conv2d>(o));
    fc = register_module("fc", std::make_shared<Linear>(48, 2));
  }
  at::Tensor forward(const at::Tensor& x) {
    return fc->forward(torch::tanh(conv->forward(x)).flatten(1));
  }
  std::shared_ptr<lowmem::nn::Conv2d> conv;
  std::shared_ptr<Linear> fc;
};

template <class Model>
void run_extra(const std::string& name, const SingdOptions& opts) {
  auto g = lowmem::testing::load_tensor_dict(
      lowmem::testing::source_path("tests/golden/singd_" + name + ".pt"));
  Model model;
  {
    torch::NoGradGuard ng;
    for (auto& p : model.named_parameters()) p.value().copy_(g.at("init." + p.key()));
  }
  SINGD opt(model, opts);
  for (int t = 1; t <= 8; ++t) {
    const std::string s = std::to_string(t);
    opt.before_forward();
    at::Tensor loss = (model.forward(g.at("x." + s)) - g.at("y." + s)).pow(2).mean();
    opt.zero_grad();
    loss.backward();
    opt.step();
    for (auto& p : model.named_parameters()) {
      const at::Tensor& want = g.at("after." + s + "." + p.key());
      ASSERT_LE(lowmem::testing::closeness(p.value(), want, 1e-5, 1e-6), 1.0)
          << name << " step " << t << " param " << p.key() << "\n got "
          << p.value() << "\n want " << want;
    }
  }
}

SingdOptions extra_common() {
  return SingdOptions().lr(1e-2).momentum(0.9).damping(1e-3).lr_cov(5e-2);
}

TEST(SingdGolden, BlockDiagonalHierarchicalWeightDecay) {
  run_extra<Mlp975>(
      "block_hier", extra_common().T(1).alpha1(0.5).weight_decay(1e-2).structures(
                        "block3diagonal,hierarchical3_2"));
}

TEST(SingdGolden, ToeplitzIkfac) {
  run_extra<Mlp975>(
      "toeplitz_ikfac",
      extra_common().T(1).alpha1(0.0).kfac_like(true).structures(
          "triltoeplitz,triutoeplitz"));
}

TEST(SingdGolden, HierarchicalBlockNormalizedLrCov) {
  run_extra<Mlp975>(
      "hier_block_norm", extra_common()
                             .T(3)
                             .alpha1(0.5)
                             .lr_cov(0.5)
                             .normalize_lr_cov(true)
                             .structures("hierarchical3_2,block3diagonal"));
}

TEST(SingdGolden, ArrowTriangularA) {
  run_extra<Mlp975>(
      "arrows_a", extra_common().T(1).alpha1(0.5).structures(
                      "trilbottomrightdiag,triutopleftdiag"));
}

TEST(SingdGolden, ArrowTriangularB) {
  run_extra<Mlp975>(
      "arrows_b", extra_common().T(2).alpha1(0.5).structures(
                      "triltopleftdiag,triubottomrightdiag"));
}

TEST(SingdGolden, SequenceReduceBatchSequence) {
  run_extra<Mlp975>(
      "seq_reduce", extra_common()
                        .T(1)
                        .alpha1(0.5)
                        .kfac_approx("reduce")
                        .loss_average("batch+sequence")
                        .structures("dense,diagonal"));
}

TEST(SingdGolden, SequenceExpandSumLoss) {
  run_extra<Mlp975>(
      "seq_expand_sum",
      extra_common().T(1).alpha1(0.5).loss_average("none").structures("dense"));
}

TEST(SingdGolden, Conv2dExpand) {
  run_extra<ConvNet>(
      "conv_expand", extra_common().T(1).alpha1(0.5).structures("dense,dense"));
}

TEST(SingdGolden, Conv2dReduceBatchSequence) {
  run_extra<ConvNet>(
      "conv_reduce", extra_common()
                         .T(1)
                         .alpha1(0.5)
                         .kfac_approx("reduce")
                         .loss_average("batch+sequence")
                         .structures("hierarchical3_2,dense"));
}

TEST(SingdGolden, LrCovSchedule) {
  run_extra<Mlp975>(
      "lr_cov_schedule",
      extra_common().T(1).alpha1(0.5).structures("dense").lr_cov_schedule(
          [](int64_t s) { return 1e-2 * static_cast<double>(1 + s); }));
}

}  // namespace
