#include "lowmem/train/trainer.h"

#include <torch/torch.h>

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "lowmem/optim/extras.h"
#include "lowmem/train/routing.h"
#include "lowmem/train/metrics.h"
#include "lowmem/train/schedule.h"
#include "tiny.h"

namespace lowmem::train {
namespace {

using testing::RegressionSource;
using testing::TinyNet;

std::vector<OptimizerSlot> sgd_slot(torch::nn::Module& m, double lr) {
  return {OptimizerSlot{
      "sgd",
      std::make_shared<torch::optim::SGD>(m.parameters(),
                                          torch::optim::SGDOptions(lr)),
      {}}};
}

LossFn loss_of(const std::shared_ptr<TinyNet>& net) {
  return [net](const data::Batch& b) { return net->loss(b); };
}

TrainerOptions plain(int64_t steps) {
  TrainerOptions o;
  o.max_steps = steps;
  o.clip_norm = 0.0;
  o.min_lr_ratio = 1.0;  // constant lr
  return o;
}

TEST(Schedule, WarmupThenCosineToFloor) {
  ScheduleOptions s;
  s.warmup_steps = 10;
  s.total_steps = 110;
  s.min_lr_ratio = 0.1;
  EXPECT_DOUBLE_EQ(lr_factor(s, 0), 0.0);
  EXPECT_DOUBLE_EQ(lr_factor(s, 5), 0.5);
  EXPECT_DOUBLE_EQ(lr_factor(s, 10), 1.0);
  // Halfway through the cosine: 0.1 + 0.9 * 0.5.
  EXPECT_NEAR(lr_factor(s, 60), 0.55, 1e-12);
  EXPECT_NEAR(lr_factor(s, 35), 0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI / 4)),
              1e-12);
  EXPECT_DOUBLE_EQ(lr_factor(s, 110), 0.1);
  EXPECT_DOUBLE_EQ(lr_factor(s, 500), 0.1);
  s.min_lr_ratio = 1.5;
  EXPECT_THROW(
      {
        try {
          validate(s);
        } catch (const c10::Error& e) {
          EXPECT_NE(std::string(e.what()).find("min_lr_ratio"),
                    std::string::npos);
          throw;
        }
      },
      c10::Error);
}

TEST(Trainer, ScheduleIsAppliedToEveryOptimizerGroup) {
  torch::manual_seed(0);
  auto net = std::make_shared<TinyNet>();
  TrainerOptions o;
  o.max_steps = 20;
  o.warmup_steps = 4;
  o.min_lr_ratio = 0.0;
  auto a = std::make_shared<torch::optim::SGD>(net->fc1->parameters(),
                                               torch::optim::SGDOptions(0.1));
  auto b = std::make_shared<torch::optim::AdamW>(
      net->fc2->parameters(), torch::optim::AdamWOptions(0.01));
  Trainer t(net, loss_of(net), {{"a", a, {}}, {"b", b, {}}}, o);
  RegressionSource src(8);
  ScheduleOptions s{4, 20, 0.0};
  for (int i = 0; i < 7; ++i) {
    t.step(src);
    EXPECT_DOUBLE_EQ(a->param_groups()[0].options().get_lr(),
                     0.1 * lr_factor(s, i));
    EXPECT_DOUBLE_EQ(b->param_groups()[0].options().get_lr(),
                     0.01 * lr_factor(s, i));
  }
}

TEST(Trainer, AccumulationEqualsBigBatch) {
  torch::manual_seed(3);
  auto small = std::make_shared<TinyNet>();
  auto big = std::make_shared<TinyNet>();
  {
    torch::NoGradGuard g;
    for (size_t i = 0; i < small->parameters().size(); ++i) {
      big->parameters()[i].copy_(small->parameters()[i]);
    }
  }
  auto o = plain(5);
  o.accum_steps = 4;
  Trainer ts(small, loss_of(small), sgd_slot(*small, 0.1), o);
  Trainer tb(big, loss_of(big), sgd_slot(*big, 0.1), plain(5));
  RegressionSource micro(3);
  // The big source's batch i is micro-batches 4i..4i+3 concatenated.
  class Concat : public data::BatchSource {
   public:
    explicit Concat(RegressionSource& s) : s_(s) {}
    data::Batch next() override {
      std::vector<at::Tensor> xs, ys;
      for (int k = 0; k < 4; ++k) {
        auto b = s_.at_position(4 * pos_ + k);
        xs.push_back(b.input);
        ys.push_back(b.target);
      }
      ++pos_;
      return {at::cat(xs), at::cat(ys)};
    }
    int64_t position() const override { return pos_; }
    void seek(int64_t p) override { pos_ = p; }
    std::string describe() const override { return "concat"; }

   private:
    RegressionSource& s_;
    int64_t pos_ = 0;
  };
  RegressionSource reference(3);
  Concat concat(reference);
  for (int i = 0; i < 5; ++i) {
    auto rs = ts.step(micro);
    auto rb = tb.step(concat);
    EXPECT_NEAR(rs.loss, rb.loss, 1e-6);
    EXPECT_NEAR(rs.grad_norm, rb.grad_norm, 1e-5);
    EXPECT_EQ(rs.items, rb.items);
  }
  for (size_t i = 0; i < small->parameters().size(); ++i) {
    EXPECT_TRUE(torch::allclose(small->parameters()[i], big->parameters()[i],
                                1e-5, 1e-6))
        << "parameter " << i;
  }
  EXPECT_EQ(micro.position(), 20);
}

TEST(Trainer, ClipsToGlobalNorm) {
  torch::manual_seed(4);
  auto net = std::make_shared<TinyNet>();
  auto probe = std::make_shared<TinyNet>();
  {
    torch::NoGradGuard g;
    for (size_t i = 0; i < net->parameters().size(); ++i) {
      probe->parameters()[i].copy_(net->parameters()[i]);
    }
  }
  RegressionSource src(16);
  // Reference gradient norm, computed by hand.
  probe->loss(src.at_position(0)).backward();
  double sq = 0.0;
  for (auto& p : probe->parameters()) {
    sq += p.grad().pow(2).sum().item<double>();
  }
  const double norm = std::sqrt(sq);
  const double max_norm = norm / 4.0;
  auto before = std::vector<at::Tensor>();
  for (auto& p : net->parameters()) {
    before.push_back(p.detach().clone());
  }
  auto o = plain(1);
  o.clip_norm = max_norm;
  Trainer t(net, loss_of(net), sgd_slot(*net, 1.0), o);
  auto r = t.step(src);
  EXPECT_NEAR(r.grad_norm, norm, 1e-5 * norm);
  double moved = 0.0;
  for (size_t i = 0; i < before.size(); ++i) {
    moved += (net->parameters()[i] - before[i]).pow(2).sum().item<double>();
    // The update is the gradient scaled by max_norm / (norm + 1e-6).
    EXPECT_TRUE(torch::allclose(before[i] - net->parameters()[i],
                                probe->parameters()[i].grad() * max_norm /
                                    (norm + 1e-6),
                                1e-4, 1e-6));
  }
  EXPECT_NEAR(std::sqrt(moved), max_norm, 1e-4 * max_norm);
}

TEST(Trainer, NoClippingBelowTheThreshold) {
  torch::manual_seed(5);
  auto net = std::make_shared<TinyNet>();
  auto o = plain(1);
  o.clip_norm = 1e9;
  auto before = net->fc1->weight.detach().clone();
  Trainer t(net, loss_of(net), sgd_slot(*net, 1.0), o);
  RegressionSource src(16);
  auto expected = [&] {
    auto probe = std::make_shared<TinyNet>();
    torch::NoGradGuard g;
    for (size_t i = 0; i < net->parameters().size(); ++i) {
      probe->parameters()[i].copy_(net->parameters()[i]);
    }
    return probe;
  }();
  {
    auto l = expected->loss(src.at_position(0));
    l.backward();
  }
  t.step(src);
  EXPECT_TRUE(torch::allclose(before - net->fc1->weight,
                              expected->fc1->weight.grad(), 1e-5, 1e-7));
}

// Loss that is NaN on the chosen calls.
struct FlakyLoss {
  std::shared_ptr<TinyNet> net;
  std::vector<bool> bad;
  size_t call = 0;
  at::Tensor operator()(const data::Batch& b) {
    auto l = net->loss(b);
    const bool make_bad = call < bad.size() && bad[call];
    ++call;
    return make_bad ? l * std::numeric_limits<double>::quiet_NaN() : l;
  }
};

TEST(Trainer, NonFiniteStepIsSkippedAndCounted) {
  torch::manual_seed(6);
  auto net = std::make_shared<TinyNet>();
  auto flaky = std::make_shared<FlakyLoss>(
      FlakyLoss{net, {false, true, true, false}});
  auto o = plain(4);
  o.max_consecutive_skips = 3;
  o.clip_norm = 1.0;
  Trainer t(net,
            [flaky](const data::Batch& b) { return (*flaky)(b); },
            sgd_slot(*net, 0.1), o);
  RegressionSource src(8);
  std::vector<Progress> seen;
  t.set_progress([&](const Progress& p) { seen.push_back(p); });
  t.step(src);
  const auto after_good = net->fc1->weight.detach().clone();
  auto r1 = t.step(src);
  auto r2 = t.step(src);
  EXPECT_TRUE(r1.skipped);
  EXPECT_TRUE(r2.skipped);
  EXPECT_FALSE(std::isfinite(r1.loss));
  // Skipped: parameters unchanged, gradients cleared, counters advanced.
  EXPECT_TRUE(torch::equal(net->fc1->weight, after_good));
  EXPECT_FALSE(net->fc1->weight.grad().defined());
  EXPECT_EQ(t.skipped_total(), 2);
  EXPECT_EQ(t.consecutive_skips(), 2);
  EXPECT_EQ(t.steps_done(), 3);
  auto r3 = t.step(src);
  EXPECT_FALSE(r3.skipped);
  EXPECT_FALSE(torch::equal(net->fc1->weight, after_good));
  EXPECT_EQ(t.consecutive_skips(), 0);
  EXPECT_EQ(t.skipped_total(), 2);
  ASSERT_EQ(seen.size(), 4u);
  EXPECT_EQ(seen[1].kind, Progress::Kind::kSkip);
  EXPECT_EQ(seen[3].kind, Progress::Kind::kStep);
  EXPECT_EQ(seen[3].skipped, 2);
}

TEST(Trainer, NonFiniteGradientIsSkipped) {
  torch::manual_seed(7);
  auto net = std::make_shared<TinyNet>();
  auto o = plain(2);
  // A finite loss whose gradient is infinite: sqrt at 0.
  Trainer t(net,
            [net](const data::Batch& b) {
              return net->loss(b) * 0 +
                  torch::sqrt(net->fc2->bias - net->fc2->bias.detach()).sum();
            },
            sgd_slot(*net, 0.1), o);
  RegressionSource src(8);
  auto r = t.step(src);
  EXPECT_TRUE(std::isfinite(r.loss));
  EXPECT_TRUE(r.skipped);
  EXPECT_FALSE(std::isfinite(r.grad_norm));
}

TEST(Trainer, StopsAfterConsecutiveSkips) {
  torch::manual_seed(8);
  auto net = std::make_shared<TinyNet>();
  auto o = plain(100);
  o.max_consecutive_skips = 3;
  Trainer t(net,
            [net](const data::Batch& b) {
              return net->loss(b) * std::numeric_limits<double>::infinity();
            },
            sgd_slot(*net, 0.1), o);
  RegressionSource src(8);
  t.step(src);
  t.step(src);
  try {
    t.step(src);
    FAIL() << "expected the third consecutive skip to stop training";
  } catch (const c10::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("3 consecutive updates had a non-finite"),
              std::string::npos)
        << msg;
  }
  EXPECT_EQ(t.skipped_total(), 3);
}

class CountingSGD : public torch::optim::SGD, public optim::OptimizerExtras {
 public:
  using torch::optim::SGD::SGD;
  std::vector<at::Tensor> state_tensors() const override { return {}; }
  void before_forward() override { ++calls; }
  int calls = 0;
};

TEST(Trainer, CallsBeforeForwardOncePerMicroBatch) {
  auto net = std::make_shared<TinyNet>();
  auto opt = std::make_shared<CountingSGD>(net->parameters(),
                                           torch::optim::SGDOptions(0.1));
  auto o = plain(3);
  o.accum_steps = 2;
  Trainer t(net, loss_of(net), {{"sgd", opt, {}}}, o);
  RegressionSource src(4);
  t.step(src);
  t.step(src);
  EXPECT_EQ(opt->calls, 4);
}

TEST(Trainer, GradSyncSeesEveryGradientOnceBeforeTheStep) {
  torch::manual_seed(9);
  auto net = std::make_shared<TinyNet>();
  auto o = plain(1);
  o.accum_steps = 3;
  Trainer t(net, loss_of(net), sgd_slot(*net, 0.1), o);
  int calls = 0;
  size_t count = 0;
  t.set_grad_sync([&](std::vector<at::Tensor>& grads) {
    ++calls;
    count = grads.size();
    for (auto& g : grads) {
      g.zero_();  // as if every other rank cancelled our gradient
    }
  });
  const auto before = net->fc1->weight.detach().clone();
  RegressionSource src(4);
  auto r = t.step(src);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(count, net->parameters().size());
  EXPECT_EQ(r.grad_norm, 0.0);  // measured after the sync
  EXPECT_TRUE(torch::equal(before, net->fc1->weight));
}

TEST(Trainer, EvaluateIsDeterministicAndKeepsTheTrainingStream) {
  torch::manual_seed(10);
  auto net = std::make_shared<TinyNet>(/*dropout=*/0.5);
  Trainer t(net, loss_of(net), sgd_slot(*net, 0.1), plain(10));
  RegressionSource train(4), eval(4, /*seed=*/99);
  t.step(train);
  const double a = t.evaluate(eval, 3);
  const double b = t.evaluate(eval, 3);
  EXPECT_EQ(a, b);
  EXPECT_TRUE(net->is_training());
  EXPECT_EQ(train.position(), 1);
}

TEST(Trainer, FitEmitsStepsEvalsAndDone) {
  torch::manual_seed(11);
  auto net = std::make_shared<TinyNet>();
  auto o = plain(6);
  o.eval_every = 3;
  o.log_every = 2;
  o.eval_batches = 2;
  Trainer t(net, loss_of(net), sgd_slot(*net, 0.05), o);
  RegressionSource train(8), eval(8, 5);
  std::vector<Progress::Kind> kinds;
  t.set_progress([&](const Progress& p) { kinds.push_back(p.kind); });
  const double final_eval = t.fit(train, &eval);
  EXPECT_TRUE(std::isfinite(final_eval));
  using K = Progress::Kind;
  EXPECT_EQ(kinds, (std::vector<K>{K::kStep, K::kEval, K::kStep, K::kStep,
                                   K::kEval, K::kDone}));
}

TEST(Trainer, RejectsBadOptions) {
  auto net = std::make_shared<TinyNet>();
  auto o = plain(10);
  o.accum_steps = 0;
  try {
    Trainer t(net, loss_of(net), sgd_slot(*net, 0.1), o);
    FAIL();
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("accum_steps must be >= 1, got 0"),
              std::string::npos);
  }
}

// ---- Routing ----

std::vector<std::pair<std::string, at::Tensor>> named(torch::nn::Module& m) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& item : m.named_parameters()) {
    out.emplace_back(item.key(), item.value());
  }
  return out;
}

struct Mini : torch::nn::Module {
  Mini() {
    frozen = register_parameter("frozen", torch::ones({4, 4}), false);
    wte = register_module("wte", torch::nn::Embedding(16, 4));
    fc = register_module("h", torch::nn::Linear(4, 4));
    ln = register_module("ln_f",
                         torch::nn::LayerNorm(torch::nn::LayerNormOptions({4})));
  }
  at::Tensor frozen;
  torch::nn::Embedding wte{nullptr};
  torch::nn::Linear fc{nullptr};
  torch::nn::LayerNorm ln{nullptr};
};

TEST(Routing, MatricesToOneOptimizerTheRestToAnother) {
  Mini m;
  auto routes = route_parameters(named(m), matrices_and_rest("galore", "adamw"));
  ASSERT_EQ(routes.size(), 2u);
  EXPECT_EQ(routes[0].target, "galore");
  EXPECT_EQ(routes[0].names, (std::vector<std::string>{"h.weight"}));
  EXPECT_EQ(routes[1].target, "adamw");
  EXPECT_EQ(routes[1].names,
            (std::vector<std::string>{"wte.weight", "h.bias", "ln_f.weight",
                                      "ln_f.bias"}));
  EXPECT_EQ(routes[1].params[0].dim(), 2);  // the embedding: 2-D, excluded
}

TEST(Routing, FirstMatchWinsAndUnmatchedThrows) {
  Mini m;
  RouteRule by_name;
  by_name.target = "a";
  by_name.pattern = "^h\\.";
  RouteRule vectors;
  vectors.target = "b";
  vectors.max_dim = 1;
  RouteRule rest;
  rest.target = "c";
  auto routes = route_parameters(named(m), {by_name, vectors, rest});
  ASSERT_EQ(routes.size(), 3u);
  EXPECT_EQ(routes[0].names, (std::vector<std::string>{"h.weight", "h.bias"}));
  EXPECT_EQ(routes[1].names,
            (std::vector<std::string>{"ln_f.weight", "ln_f.bias"}));
  EXPECT_EQ(routes[2].names, (std::vector<std::string>{"wte.weight"}));
  // Without the catch-all, wte.weight (2-D, not under h.) has no rule.
  try {
    route_parameters(named(m), {by_name, vectors});
    FAIL();
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("'wte.weight' (dim 2) matches no"),
              std::string::npos)
        << e.what();
  }
  // A target that receives nothing is left out.
  RouteRule none;
  none.target = "none";
  none.pattern = "^nothing$";
  EXPECT_EQ(route_parameters(named(m), {none, rest}).size(), 1u);
  RouteRule bad;
  bad.target = "x";
  bad.pattern = "([";
  EXPECT_THROW(route_parameters(named(m), {bad}), c10::Error);
}

TEST(Routing, TrainerWithRoutedOptimizersUpdatesEachSubset) {
  torch::manual_seed(12);
  auto net = std::make_shared<TinyNet>();
  auto routes =
      route_parameters(named(*net), matrices_and_rest("sgd", "adamw"));
  ASSERT_EQ(routes.size(), 2u);
  auto sgd = std::make_shared<torch::optim::SGD>(
      routes[0].params, torch::optim::SGDOptions(0.1));
  auto adamw = std::make_shared<torch::optim::AdamW>(
      routes[1].params, torch::optim::AdamWOptions(0.01));
  Trainer t(net, loss_of(net),
            {{"sgd", sgd, routes[0].names}, {"adamw", adamw, routes[1].names}},
            plain(3));
  EXPECT_EQ(t.parameters().size(), 4u);
  RegressionSource src(8);
  t.step(src);
  // AdamW holds exp_avg and exp_avg_sq for the two biases (8 + 1 floats).
  EXPECT_EQ(optim::state_bytes(*adamw), 2 * (8 + 1) * 4);
  EXPECT_EQ(optim::state_bytes(*sgd), 0);  // no momentum
  EXPECT_EQ(t.steps_done(), 1);
}

}  // namespace
}  // namespace lowmem::train

// Metrics lines are valid JSON whatever the checkpoint path holds (quotes,
// control characters, bytes that are not UTF-8), and non-finite numbers are
// written as null.
TEST(Metrics, ProgressLinesAreValidJsonForAnyPath) {
  lowmem::train::Progress p;
  p.kind = lowmem::train::Progress::Kind::kCheckpoint;
  p.step = 7;
  p.path = std::string("runs/a\"b\\c\nd\te\x01") + "\xff" + "end";
  const auto j = nlohmann::json::parse(lowmem::train::to_json(p));
  EXPECT_EQ(j.at("event"), "checkpoint");
  EXPECT_EQ(j.at("step"), 7);
  EXPECT_EQ(j.at("path").get<std::string>(),
            std::string("runs/a\"b\\c\nd\te\x01") + "\xEF\xBF\xBD" + "end");
  lowmem::train::Progress q;
  q.kind = lowmem::train::Progress::Kind::kEval;
  q.eval_loss = std::numeric_limits<double>::quiet_NaN();
  EXPECT_TRUE(nlohmann::json::parse(lowmem::train::to_json(q)).at("eval_loss").is_null());
}
