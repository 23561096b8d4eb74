// SINGD beyond golden parity: option validation, resume, taps and parameter
// routing, memory of the structures, half-precision factors.
#include "lowmem/optim/singd.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <sstream>

#include "lowmem/nn/curvature_tap.h"
#include "lowmem/nn/linear.h"
#include "lowmem/optim/kfac.h"

namespace {

using lowmem::nn::Linear;
using lowmem::optim::SINGD;
using lowmem::optim::SingdOptions;

struct Mlp : torch::nn::Module {
  Mlp(int64_t in, int64_t hidden, int64_t out) {
    l0 = register_module("0", std::make_shared<Linear>(in, hidden));
    l1 = register_module("1", std::make_shared<Linear>(hidden, hidden));
    l2 = register_module("2", std::make_shared<Linear>(hidden, out));
  }
  at::Tensor forward(const at::Tensor& x) {
    return l2->forward(torch::tanh(l1->forward(torch::tanh(l0->forward(x)))));
  }
  std::shared_ptr<Linear> l0, l1, l2;
};

void expect_message(const std::function<void()>& f, const std::string& part) {
  try {
    f();
    ADD_FAILURE() << "no exception; expected '" << part << "'";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos)
        << "message: " << e.what() << "\nexpected: " << part;
  }
}

TEST(SingdOptions, ValidationNamesBadValues) {
  using lowmem::optim::validate;
  expect_message([] { validate(SingdOptions().lr(-1.0)); }, "[singd] lr must be >= 0, got -1");
  expect_message([] { validate(SingdOptions().lr_cov(-0.5)); }, "lr_cov must be >= 0, got -0.5");
  expect_message([] { validate(SingdOptions().alpha1(-2)); }, "alpha1 must be >= 0, got -2");
  expect_message([] { validate(SingdOptions().momentum(-0.1)); }, "momentum must be >= 0");
  expect_message([] { validate(SingdOptions().weight_decay(-1e-2)); }, "weight_decay must be >= 0");
  expect_message([] { validate(SingdOptions().damping(-1)); }, "damping must be >= 0");
  expect_message([] { validate(SingdOptions().T(0)); }, "T must be >= 1, got 0");
  expect_message([] { validate(SingdOptions().init_grad_scale(0)); }, "init_grad_scale must be > 0");
  expect_message([] { validate(SingdOptions().structures("dense,tridiag")); }, "unknown structure 'tridiag'");
  expect_message([] { validate(SingdOptions().kfac_approx("mean")); }, "kfac_approx must be expand or reduce, got 'mean'");
  expect_message([] { validate(SingdOptions().loss_average("sum")); }, "loss_average must be none, batch or batch+sequence, got 'sum'");
  expect_message([] { validate(SingdOptions().preconditioner_dtype("int8")); }, "preconditioner_dtype must be");
  Mlp m(3, 4, 2);
  expect_message([&] { SINGD(m, SingdOptions().T(-3)); }, "T must be >= 1, got -3");
  torch::nn::Sequential no_linear{torch::nn::ReLU()};
  expect_message([&] { SINGD(*no_linear, SingdOptions()); }, "[singd] no Linear/Conv2d layer");
  lowmem::optim::validate(SingdOptions());  // defaults are valid
}

TEST(SingdOptions, VisitorListsEveryScalarFieldWithOfficialDefaults) {
  SingdOptions o;
  std::map<std::string, std::string> seen;
  o.for_each_field([&](const char* name, const auto& v) {
    std::ostringstream s;
    s << v;
    seen[name] = s.str();
  });
  EXPECT_EQ(seen.size(), 15u);
  EXPECT_EQ(seen["lr"], "0.001");
  EXPECT_EQ(seen["momentum"], "0.9");
  EXPECT_EQ(seen["damping"], "0.001");
  EXPECT_EQ(seen["alpha1"], "0.5");
  EXPECT_EQ(seen["T"], "10");
  EXPECT_EQ(seen["lr_cov"], "0.01");
  EXPECT_EQ(seen["structures"], "dense,dense");
  EXPECT_EQ(seen["loss_average"], "batch");
  EXPECT_EQ(seen["kfac_approx"], "expand");
}

TEST(SingdOptions, KfacLikeForcesZeroRiemannianMomentum) {
  Mlp m(3, 4, 2);
  SINGD opt(m, SingdOptions().kfac_like(true).alpha1(0.5));
  // no m_K/m_C stored: K, C only (+ no momentum buffers before a step)
  int64_t expect = 0;
  for (const auto& l : opt.layers())
    expect += (l.dim_k() * l.dim_k() + l.dim_c() * l.dim_c()) * 4;
  EXPECT_EQ(opt.preconditioner_bytes(), expect);
}

// Step, save, load into a fresh model and optimizer, step both: identical.
TEST(Singd, ResumeIsExact) {
  torch::manual_seed(0);
  auto opts = SingdOptions().lr(0.05).T(2).structures("hierarchical3_2,block3diagonal");
  auto a = std::make_shared<Mlp>(5, 7, 3);
  SINGD oa(*a, opts);
  std::vector<std::pair<at::Tensor, at::Tensor>> batches;
  for (int i = 0; i < 6; ++i)
    batches.emplace_back(torch::randn({8, 5}), torch::randn({8, 3}));
  auto train = [&](Mlp& m, SINGD& o, int from, int to) {
    for (int i = from; i < to; ++i) {
      o.before_forward();
      auto loss = (m.forward(batches[i].first) - batches[i].second).pow(2).mean();
      o.zero_grad();
      loss.backward();
      o.step();
    }
  };
  train(*a, oa, 0, 3);
  std::stringstream buf;
  {
    torch::serialize::OutputArchive ar;
    oa.save(ar);
    ar.save_to(buf);
  }
  auto b = std::make_shared<Mlp>(5, 7, 3);
  {
    torch::NoGradGuard ng;
    auto pa = a->parameters(), pb = b->parameters();
    for (size_t i = 0; i < pa.size(); ++i) pb[i].copy_(pa[i]);
  }
  SINGD ob(*b, opts);
  {
    torch::serialize::InputArchive ar;
    ar.load_from(buf);
    ob.load(ar);
  }
  EXPECT_EQ(ob.steps(), 3);
  train(*a, oa, 3, 6);
  train(*b, ob, 3, 6);
  auto pa = a->parameters(), pb = b->parameters();
  for (size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(torch::equal(pa[i], pb[i])) << i;
  for (size_t i = 0; i < oa.layers().size(); ++i)
    EXPECT_TRUE(torch::equal(oa.K(i).to_dense(), ob.K(i).to_dense()));
}

TEST(Singd, LoadRejectsOtherStructures) {
  Mlp m(3, 4, 2);
  SINGD a(m, SingdOptions().structures("dense"));
  torch::serialize::OutputArchive out;
  a.save(out);
  std::stringstream buf;
  out.save_to(buf);
  Mlp m2(3, 4, 2);
  SINGD b(m2, SingdOptions().structures("diagonal"));
  torch::serialize::InputArchive in;
  in.load_from(buf);
  expect_message([&] { b.load(in); }, "checkpoint structures 'dense'");
}

// A refresh step whose layer ran backward without the tap armed is an error
// with the layer name (official: KeyError).
TEST(Singd, MissingCurvatureOnRefreshStepIsReported) {
  Mlp m(3, 4, 2);
  SINGD opt(m, SingdOptions().T(1));
  {
    torch::NoGradGuard ng;  // forward under no_grad records nothing...
    m.forward(torch::randn({2, 3}));
  }
  for (auto& t : opt.layers()) t.tap()->arm(false);  // ...nor unarmed ones
  auto loss = m.forward(torch::randn({2, 3})).sum();
  loss.backward();
  expect_message([&] { opt.step(); }, "layer '0' has a gradient but recorded no curvature");
}

TEST(Singd, TapsArmOnlyOnRefreshSteps) {
  Mlp m(3, 4, 2);
  SINGD opt(m, SingdOptions().T(3));
  for (int s = 0; s < 7; ++s) {
    opt.before_forward();
    EXPECT_EQ(opt.layers()[0].tap()->armed(), s % 3 == 0) << s;
    auto loss = m.forward(torch::randn({2, 3})).pow(2).sum();
    opt.zero_grad();
    loss.backward();
    opt.step();
  }
}

TEST(Singd, DestructorRemovesItsTaps) {
  Mlp m(3, 4, 2);
  { SINGD opt(m, SingdOptions()); EXPECT_NE(m.l0->tap(), nullptr); }
  EXPECT_EQ(m.l0->tap(), nullptr);
}

// Preconditioner bytes follow the structure formulas (fp32, alpha1 != 0 so
// K, C, m_K, m_C are stored).
TEST(Singd, PreconditionerBytesFollowTheStructure) {
  Mlp m(63, 95, 7);  // K dims 64, 96, 96; C dims 95, 95, 7
  for (const char* key : {"dense", "diagonal", "block30diagonal", "hierarchical15_15",
                          "triltoeplitz", "trilbottomrightdiag"}) {
    SINGD opt(m, SingdOptions().structures(key));
    int64_t want = 0;
    for (const auto& l : opt.layers())
      want += 2 * 4 * (lowmem::optim::structures::structured_numel(key, l.dim_k()) +
                       lowmem::optim::structures::structured_numel(key, l.dim_c()));
    EXPECT_EQ(opt.preconditioner_bytes(), want) << key;
    EXPECT_EQ(lowmem::optim::state_bytes(opt), want) << key;  // no momentum yet
  }
  SINGD diag(m, SingdOptions().structures("diagonal"));
  SINGD dense(m, SingdOptions().structures("dense"));
  EXPECT_LT(diag.preconditioner_bytes() * 50, dense.preconditioner_bytes());
}

TEST(Singd, ParameterRoutingSplitsCoveredFromUncovered) {
  struct Net : torch::nn::Module {
    Net() {
      emb = register_module("emb", torch::nn::Embedding(10, 4));
      norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({4})));
      fc = register_module("fc", std::make_shared<Linear>(4, 3));
      frozen = register_module("frozen", std::make_shared<Linear>(3, 3));
      frozen->base_weight().requires_grad_(false);
      frozen->bias().requires_grad_(false);
    }
    torch::nn::Embedding emb{nullptr};
    torch::nn::LayerNorm norm{nullptr};
    std::shared_ptr<Linear> fc, frozen;
  } net;
  auto split = lowmem::nn::split_curvature_parameters(net);
  std::vector<std::string> cov, unc;
  for (auto& p : split.covered) cov.push_back(p.first);
  for (auto& p : split.uncovered) unc.push_back(p.first);
  EXPECT_EQ(cov, (std::vector<std::string>{"fc.weight", "fc.bias"}));
  EXPECT_EQ(unc, (std::vector<std::string>{"emb.weight", "norm.weight", "norm.bias"}));
  SINGD opt(net, SingdOptions());
  ASSERT_EQ(opt.layers().size(), 1u);
  EXPECT_EQ(opt.layers()[0].path, "fc");
}

// a and g of a linear layer on sequences: expand flattens, reduce averages
// inputs and sums gradients; the loss_average factor sqrt(L).
TEST(CurvatureTap, LinearSequenceMatrices) {
  using namespace lowmem::nn;
  torch::manual_seed(0);
  at::Tensor x = torch::randn({2, 3, 4}), g = torch::randn({2, 3, 5});
  KroneckerTapOptions o;
  o.has_bias = true;
  at::Tensor a = kfac_input_matrix(x, o);
  at::Tensor want = torch::cat({x.reshape({6, 4}), torch::ones({6, 1})}, 1) / std::sqrt(6.0);
  EXPECT_TRUE(torch::allclose(a, want));
  EXPECT_TRUE(torch::allclose(kfac_grad_output_matrix(g, o), g.reshape({6, 5}) * std::sqrt(2.0)));
  o.loss_average = LossAverage::kBatchSequence;
  EXPECT_TRUE(torch::allclose(kfac_grad_output_matrix(g, o), g.reshape({6, 5}) * std::sqrt(6.0)));
  o.loss_average = LossAverage::kNone;
  o.kfac_approx = KfacApprox::kReduce;
  o.has_bias = false;
  EXPECT_TRUE(torch::allclose(kfac_input_matrix(x, o), x.mean(1) / std::sqrt(2.0)));
  EXPECT_TRUE(torch::allclose(kfac_grad_output_matrix(g, o), g.sum(1)));
  expect_message([] { parse_loss_average("mean"); }, "got 'mean'");
  expect_message([] { parse_kfac_approx("x"); }, "kfac_approx must be expand or reduce, got 'x'");
}

// Micro-batches: two forward/backward passes before step() sum their H terms
// (official); the tap pairs each gradient with its own input.
TEST(CurvatureTap, PairsInputsAndGradientsPerPass) {
  using namespace lowmem::nn;
  std::vector<std::pair<at::Tensor, at::Tensor>> got;
  KroneckerTapOptions o;
  o.has_bias = false;
  o.loss_average = LossAverage::kNone;
  auto tap = std::make_shared<KroneckerTap>(
      o, [&](const at::Tensor& a, const at::Tensor& g) { got.emplace_back(a, g); });
  auto lin = std::make_shared<Linear>(3, 2, false);
  lin->set_tap(tap);
  tap->arm(true);
  at::Tensor x1 = torch::randn({4, 3}), x2 = torch::randn({1, 3});
  lin->forward(x1).sum().backward();
  lin->forward(x2).sum().backward();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_TRUE(torch::allclose(got[0].first, x1 / 2.0));
  EXPECT_TRUE(torch::allclose(got[1].first, x2));
  EXPECT_EQ(tap->pending(), 0);
}

}  // namespace
