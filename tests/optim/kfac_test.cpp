// KFAC baseline: one closed-form step against a dense float64 reference,
// refresh period, resume, option validation.
#include "lowmem/optim/kfac.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <sstream>

#include "lowmem/nn/linear.h"

namespace {

using lowmem::nn::Linear;
using lowmem::optim::KFAC;
using lowmem::optim::KfacOptions;

TEST(Kfac, FirstStepMatchesDenseReference) {
  torch::manual_seed(0);
  auto lin = std::make_shared<Linear>(4, 3);
  lin->to(torch::kDouble);
  const double rho = 0.6, damping = 0.1, lr = 0.5;
  KFAC opt(*lin, KfacOptions().lr(lr).momentum(0).stat_decay(rho).damping(damping).T(1));
  at::Tensor x = torch::randn({5, 4}, torch::kDouble), y = torch::randn({5, 3}, torch::kDouble);
  at::Tensor w0 = lin->base_weight().detach().clone(), b0 = lin->bias().detach().clone();
  opt.before_forward();
  at::Tensor out = lin->forward(x);
  at::Tensor loss = (out - y).pow(2).mean();
  opt.zero_grad();
  loss.backward();
  // reference: a = [x 1]/sqrt(5), g = dloss/dout * sqrt(5) (loss_average batch)
  at::Tensor a = torch::cat({x, torch::ones({5, 1}, torch::kDouble)}, 1) / std::sqrt(5.0);
  at::Tensor g = (2.0 / 15.0) * (out.detach() - y) * std::sqrt(5.0);
  auto eye = [](int64_t n) { return torch::eye(n, torch::kDouble); };
  at::Tensor A = rho * eye(5) + (1 - rho) * a.t().matmul(a);
  at::Tensor G = rho * eye(3) + (1 - rho) * g.t().matmul(g);
  at::Tensor v = torch::cat({lin->base_weight().grad(), lin->bias().grad().unsqueeze(1)}, 1);
  at::Tensor nat = torch::inverse(G + damping * eye(3)).matmul(v).matmul(
      torch::inverse(A + damping * eye(5)));
  opt.step();
  EXPECT_TRUE(torch::allclose(lin->base_weight(), w0 - lr * nat.slice(1, 0, 4), 1e-10, 1e-12));
  EXPECT_TRUE(torch::allclose(lin->bias(), b0 - lr * nat.select(1, 4), 1e-10, 1e-12));
}

TEST(Kfac, RefreshesEveryTSteps) {
  Linear lin(3, 2);
  KFAC opt(lin, KfacOptions().T(4));
  for (int s = 0; s < 9; ++s) {
    opt.before_forward();
    EXPECT_EQ(lin.tap()->armed(), s % 4 == 0) << s;
    auto loss = lin.forward(torch::randn({3, 3})).pow(2).sum();
    opt.zero_grad();
    loss.backward();
    opt.step();
  }
  EXPECT_EQ(opt.steps(), 9);
}

TEST(Kfac, ResumeIsExact) {
  torch::manual_seed(3);
  auto a = std::make_shared<Linear>(4, 3);
  auto b = std::make_shared<Linear>(4, 3);
  {
    torch::NoGradGuard ng;
    b->base_weight().copy_(a->base_weight());
    b->bias().copy_(a->bias());
  }
  auto opts = KfacOptions().lr(0.1).T(2);
  KFAC oa(*a, opts);
  std::vector<at::Tensor> xs;
  for (int i = 0; i < 6; ++i) xs.push_back(torch::randn({5, 4}));
  auto train = [&](Linear& m, KFAC& o, int from, int to) {
    for (int i = from; i < to; ++i) {
      o.before_forward();
      auto loss = m.forward(xs[i]).pow(2).mean();
      o.zero_grad();
      loss.backward();
      o.step();
    }
  };
  train(*a, oa, 0, 3);
  {
    torch::NoGradGuard ng;
    b->base_weight().copy_(a->base_weight());
    b->bias().copy_(a->bias());
  }
  std::stringstream buf;
  torch::serialize::OutputArchive out;
  oa.save(out);
  out.save_to(buf);
  KFAC ob(*b, opts);
  torch::serialize::InputArchive in;
  in.load_from(buf);
  ob.load(in);
  train(*a, oa, 3, 6);
  train(*b, ob, 3, 6);
  EXPECT_TRUE(torch::equal(a->base_weight(), b->base_weight()));
  EXPECT_TRUE(torch::equal(a->bias(), b->bias()));
}

TEST(Kfac, ValidationNamesBadValues) {
  auto expect = [](const KfacOptions& o, const std::string& part) {
    try {
      lowmem::optim::validate(o);
      ADD_FAILURE() << "no throw for " << part;
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  expect(KfacOptions().lr(-1), "[kfac] lr must be >= 0, got -1");
  expect(KfacOptions().stat_decay(1.0), "stat_decay must be in [0, 1), got 1");
  expect(KfacOptions().damping(0), "damping must be > 0, got 0");
  expect(KfacOptions().T(0), "T must be >= 1, got 0");
  expect(KfacOptions().kfac_approx("avg"), "got 'avg'");
  expect(KfacOptions().loss_average("mean"), "got 'mean'");
  expect(KfacOptions().factor_dtype("int4"), "got 'int4'");
}

TEST(Kfac, StoresDenseFactorsAndInverses) {
  Linear lin(7, 5);
  KFAC opt(lin, KfacOptions());
  EXPECT_EQ(opt.preconditioner_bytes(), 2 * (8 * 8 + 5 * 5) * 4);
}

}  // namespace
