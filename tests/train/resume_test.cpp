// Resuming from a checkpoint reproduces the uninterrupted run bit for bit.
#include <torch/torch.h>

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "lowmem/train/trainer.h"
#include "tiny.h"

namespace lowmem::train {
namespace {

using testing::RegressionSource;
using testing::TinyNet;

struct TrainRun {
  std::shared_ptr<TinyNet> net;
  std::shared_ptr<torch::optim::AdamW> adamw;
  std::shared_ptr<torch::optim::SGD> sgd;
  std::unique_ptr<Trainer> trainer;
  std::vector<double> losses;
};

TrainRun make_run(uint64_t init_seed, const std::string& dir) {
  torch::manual_seed(init_seed);
  TrainRun r;
  r.net = std::make_shared<TinyNet>(/*dropout=*/0.3);
  r.adamw = std::make_shared<torch::optim::AdamW>(
      r.net->fc1->parameters(), torch::optim::AdamWOptions(0.02));
  r.sgd = std::make_shared<torch::optim::SGD>(
      r.net->fc2->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  TrainerOptions o;
  o.max_steps = 12;
  o.accum_steps = 2;
  o.clip_norm = 0.5;
  o.warmup_steps = 3;
  o.min_lr_ratio = 0.1;
  o.checkpoint_dir = dir;
  auto net = r.net;
  r.trainer = std::make_unique<Trainer>(
      r.net, [net](const data::Batch& b) { return net->loss(b); },
      std::vector<OptimizerSlot>{{"adamw", r.adamw, {}}, {"sgd", r.sgd, {}}},
      o);
  return r;
}

TEST(Resume, BitExactLossCurveAndWeights) {
  char tmpl[] = "/tmp/lowmem-resume-XXXXXX";
  const std::string dir = ::mkdtemp(tmpl);
  // Uninterrupted.
  TrainRun a = make_run(1, dir + "/a");
  RegressionSource src_a(6);
  for (int i = 0; i < 12; ++i) {
    a.losses.push_back(a.trainer->step(src_a).loss);
  }
  // Interrupted after 5 updates, restarted in fresh objects.
  std::vector<double> losses;
  {
    TrainRun b = make_run(1, dir + "/b");
    RegressionSource src_b(6);
    for (int i = 0; i < 5; ++i) {
      losses.push_back(b.trainer->step(src_b).loss);
    }
    b.trainer->save_checkpoint(src_b);
    torch::rand({100});  // the process goes on drawing random numbers
  }
  TrainRun c = make_run(/*different init*/ 77, dir + "/b");
  RegressionSource src_c(6);
  c.trainer->load_checkpoint(dir + "/b", src_c);
  EXPECT_EQ(c.trainer->steps_done(), 5);
  EXPECT_EQ(src_c.position(), 10);
  for (int i = 5; i < 12; ++i) {
    losses.push_back(c.trainer->step(src_c).loss);
  }
  ASSERT_EQ(losses.size(), a.losses.size());
  for (size_t i = 0; i < losses.size(); ++i) {
    EXPECT_EQ(losses[i], a.losses[i]) << "step " << i;  // bit for bit
  }
  for (size_t i = 0; i < a.net->parameters().size(); ++i) {
    EXPECT_TRUE(torch::equal(a.net->parameters()[i], c.net->parameters()[i]))
        << "parameter " << i;
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace lowmem::train
