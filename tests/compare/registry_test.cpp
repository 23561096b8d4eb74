// The registries: a test-only optimizer, added by one register_optimizer()
// row and nothing else, becomes a lowmem train choice with its own option
// section (keys, YAML, validation), trains a model through build_session,
// takes part in lowmem compare's `--set` keys, and serves as GaLore's inner
// optimizer with its state re-projected and its weight decay checked through
// its field lists (optim/state_roles.h), with no type switch anywhere.
#include "lowmem/adapters/registry.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "lowmem/compare/compare.h"
#include "lowmem/models/layers.h"
#include "lowmem/optim/galore.h"
#include "lowmem/optim/per_param_impl.h"
#include "lowmem/optim/registry.h"
#include "lowmem/train/config.h"
#include "lowmem/train/run.h"
#include "testing/files.h"

namespace {

namespace fs = std::filesystem;
namespace lo = lowmem::optim;

// Sign descent with momentum: m = beta m + g; p -= lr sign(m) + lr wd p.
struct SignOptions : lo::FieldOptions<SignOptions> {
  SignOptions(double lr = 1e-2) : lr_(lr) {}  // NOLINT: torch's loader
  TORCH_ARG(double, lr) = 1e-2;
  TORCH_ARG(double, beta) = 0.9;
  TORCH_ARG(double, weight_decay) = 0.0;

 public:
  template <class V>
  void for_each_field(V&& v) {
    v("lr", lr_);
    v("beta", beta_);
    v("weight_decay", weight_decay_);
  }
  double get_lr() const override { return lr_; }
  void set_lr(const double lr) override { lr_ = lr; }
};

void validate(const SignOptions& o) {
  LOWMEM_CHECK(o.beta() >= 0 && o.beta() < 1, "[sign] beta must be in [0, 1)");
}

struct SignState : lo::FieldState<SignState> {
  int64_t step = 0;
  at::Tensor momentum;
  template <class V>
  void for_each_field(V&& v) {
    v("step", step);
    v("momentum", momentum, lo::StateRole::kLinear);
  }
};

class SignDescent final : public lo::PerParamOptimizer<SignOptions, SignState> {
 public:
  explicit SignDescent(lo::ParamGroups groups, SignOptions o = {})
      : PerParamOptimizer(std::move(groups), o) {}

 private:
  void init_state(const at::Tensor& p, SignState& s,
                  const SignOptions&) const override {
    s.momentum = at::zeros(p.sizes(), p.options().dtype(at::kFloat));
  }
  void update(at::Tensor& p, const at::Tensor& g, SignState& s,
              const SignOptions& o) override {
    s.momentum.mul_(o.beta()).add_(g.to(at::kFloat));
    p.add_(s.momentum.sign().to(p.scalar_type()), -o.lr());
    if (o.weight_decay() > 0) p.mul_(1.0 - o.lr() * o.weight_decay());
  }
  const char* tag() const override { return "sign"; }
};

// The one row: everything else is generated from it.
void register_sign_descent() {
  static const bool once = [] {
    lo::register_optimizer(lo::param_group_optimizer<SignDescent, SignOptions>(
        "sign_test", "sign descent (tests/train/registry_test.cpp)"));
    return true;
  }();
  (void)once;
}

std::string write_corpus(const fs::path& dir) {
  const fs::path p = dir / "corpus.txt";
  std::ofstream f(p);
  for (int i = 0; i < 300; ++i)
    f << "line " << i << ": pack my box with five dozen liquor jugs\n";
  return p.string();
}

}  // namespace

TEST(Registry, TestOptimizerIsAConfigChoiceWithItsOwnSection) {
  register_sign_descent();
  const auto names = lowmem::train::known_optimizers();
  EXPECT_NE(std::find(names.begin(), names.end(), "sign_test"), names.end());
  lowmem::train::Config c;
  c.set("optimizer", "sign_test");
  c.set("sign_test.beta", "0.5");
  EXPECT_EQ(c.get("sign_test.beta"), "0.5");
  EXPECT_EQ(c.get("sign_test.lr"), "0.01");  // the options' default
  EXPECT_THROW(c.set("sign_test.nope", "1"), lowmem::ConfigError);
  EXPECT_NO_THROW(c.validate());
  EXPECT_NE(c.to_yaml().find("sign_test:"), std::string::npos) << c.to_yaml();
  const auto keys = lowmem::compare::override_sections();
  EXPECT_NE(std::find(keys.begin(), keys.end(), "sign_test"), keys.end());
  EXPECT_NO_THROW(lowmem::compare::validate_overrides({"sign_test.beta=0.7"}));
  EXPECT_THROW(lo::register_optimizer(
                   lo::param_group_optimizer<SignDescent, SignOptions>(
                       "sign_test", "again")),
               lowmem::ConfigError);
}

TEST(Registry, TestOptimizerTrainsThroughBuildSession) {
  register_sign_descent();
  const fs::path dir = lowmem::testing::fresh_temp_dir("registry_train");
  lowmem::train::Config c;
  c.set("data", "text");
  c.set("text.path", write_corpus(dir));
  c.set("gpt.n_layer", "1");
  c.set("gpt.n_head", "2");
  c.set("gpt.n_embd", "16");
  c.set("gpt.block_size", "16");
  c.set("optimizer", "sign_test");
  c.set("sign_test.lr", "0.003");
  c.steps = 4;
  c.batch_size = 4;
  c.warmup_steps = 0;
  c.threads = 1;
  auto s = lowmem::train::build_session(c);
  ASSERT_EQ(s->trainer->optimizers().size(), 1u);
  auto* opt = dynamic_cast<SignDescent*>(
      s->trainer->optimizers().front().optimizer.get());
  ASSERT_NE(opt, nullptr);
  EXPECT_DOUBLE_EQ(opt->param_groups().front().options().get_lr(), 0.003);
  const auto before = s->model->parameters().front().clone();
  for (int i = 0; i < 2; ++i) s->trainer->step(*s->train_data);
  EXPECT_FALSE(at::equal(before, s->model->parameters().front()));
  EXPECT_NE(opt->state_of(s->model->parameters().front()), nullptr);
}

TEST(Registry, GaLoreReprojectsAndChecksDecayOfTheTestOptimizer) {
  register_sign_descent();
  torch::manual_seed(0);
  auto w = torch::randn({8, 6}).set_requires_grad(true);
  auto make = [](double wd) {
    return [wd](lo::ParamGroups g) -> lo::OptimizerPtr {
      return std::make_unique<SignDescent>(std::move(g),
                                           SignOptions(0.01).weight_decay(wd));
    };
  };
  auto options =
      lo::GaLoreOptions()
          .projector(
              lowmem::projection::ProjectorOptions().rank(2).update_proj_gap(2))
          .state_on_refresh("reproject");
  // Its decay is read from its field list: a decay on the proxy is refused.
  try {
    lo::GaLore bad({w}, {}, make(0.1), options);
    ADD_FAILURE() << "a non-zero inner weight_decay was accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("weight_decay on projected params "
                                         "must be 0 (got 0.1)"),
              std::string::npos)
        << e.what();
  }
  lo::GaLore g({w}, {}, make(0.0), options);
  at::Tensor m_before, p_old, q_old, grad;
  for (int step = 0; step < 3; ++step) {
    grad = torch::randn({8, 6});
    w.mutable_grad() = grad.clone();
    if (step == 2) {  // a refresh step (update_proj_gap 2)
      const auto* st =
          dynamic_cast<SignDescent&>(g.inner()).state_of(g.proxy(0));
      ASSERT_NE(st, nullptr);
      m_before = st->momentum.clone();
      const auto& pr = g.projector(0);
      if (pr.left().defined()) p_old = pr.left().clone();
      if (pr.right().defined()) q_old = pr.right().clone();
    }
    g.step();
  }
  // The momentum was rotated into the new basis (C m D, its kLinear role),
  // then the step added the gradient projected there.
  const auto& now = g.projector(0);
  at::Tensor expect = m_before;
  if (p_old.defined()) expect = now.left().t().matmul(p_old).matmul(expect);
  if (q_old.defined()) expect = expect.matmul(q_old.t().matmul(now.right()));
  expect = 0.9 * expect + now.project(grad);
  const auto* st = dynamic_cast<SignDescent&>(g.inner()).state_of(g.proxy(0));
  ASSERT_NE(st, nullptr);
  EXPECT_TRUE(at::allclose(st->momentum, expect, 1e-5, 1e-6))
      << st->momentum << expect;
  // Kept instead of rotated, it would differ.
  EXPECT_FALSE(at::allclose(st->momentum, 0.9 * m_before + now.project(grad),
                            1e-5, 1e-6));
}
