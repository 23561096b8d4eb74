#include "lowmem/io/checkpoint.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "testing/errors.h"
#include "testing/files.h"

namespace fs = std::filesystem;

namespace lowmem::io {
using lowmem::testing::expect_error_containing;
using lowmem::testing::expect_short_error;

namespace {

struct TempDir {
  TempDir() {
    char tmpl[] = "/tmp/lowmem-ckpt-XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string path;
};

// A model-like set of tensors and an AdamW that has taken a step, so its
// state is non-trivial.
struct Rig {
  explicit Rig(int64_t n = 64) {
    w = torch::randn({n, 8}, torch::requires_grad());
    b = torch::randn({8}, torch::requires_grad());
    buf = torch::arange(5, torch::kLong);
    opt = std::make_unique<torch::optim::AdamW>(
        std::vector<at::Tensor>{w, b}, torch::optim::AdamWOptions(0.01));
  }
  void train_step() {
    opt->zero_grad();
    (w.sum(0) * b).pow(2).sum().backward();
    opt->step();
  }
  void fill(double v) {
    torch::NoGradGuard g;
    w.fill_(v);
    b.fill_(v);
  }
  CheckpointState state() {
    CheckpointState s;
    s.tensors = {{"w", w}, {"b", b}, {"buf", buf}};
    s.optimizers = {{"adamw", opt.get()}};
    return s;
  }
  at::Tensor w, b, buf;
  std::unique_ptr<torch::optim::AdamW> opt;
};

TEST(Checkpoint, RoundTripRestoresEverythingAndContinuesIdentically) {
  TempDir dir;
  torch::manual_seed(0);
  Rig a;
  a.train_step();
  a.train_step();
  auto s = a.state();
  s.counters = {{"data_position", 17}, {"skipped_total", 2}};
  s.info = "model: gpt\nsteps: 10\n";
  const std::string written = save_checkpoint(dir.path, 2, s);
  EXPECT_EQ(written, dir.path + "/step-00000002");
  EXPECT_TRUE(has_checkpoint(dir.path));
  const auto after_save = torch::rand({3});  // advances the RNG

  torch::manual_seed(123);
  Rig b;
  auto t = b.state();
  const std::string loaded = load_checkpoint(dir.path, t);
  EXPECT_EQ(loaded, written);
  EXPECT_TRUE(torch::equal(a.w, b.w));
  EXPECT_TRUE(torch::equal(a.b, b.b));
  EXPECT_TRUE(torch::equal(a.buf, b.buf));
  EXPECT_EQ(t.counters.at("data_position"), 17);
  EXPECT_EQ(t.counters.at("skipped_total"), 2);
  EXPECT_EQ(t.counters.at("step"), 2);
  EXPECT_EQ(t.info, s.info);
  // The RNG continues where it was at save time.
  EXPECT_TRUE(torch::equal(torch::rand({3}), after_save));
  a.train_step();
  b.train_step();
  EXPECT_TRUE(torch::equal(a.w, b.w));
  EXPECT_TRUE(torch::equal(a.b, b.b));
}

TEST(Checkpoint, MismatchIsRejectedBeforeAnythingChanges) {
  TempDir dir;
  Rig a;
  a.train_step();
  auto s = a.state();
  save_checkpoint(dir.path, 1, s);
  Rig wrong(/*n=*/32);
  const auto w_before = wrong.w.detach().clone();
  const auto b_before = wrong.b.detach().clone();
  auto t = wrong.state();
  expect_error_containing([&] { load_checkpoint(dir.path, t); },
                          "tensor 'w' has shape [64, 8], the model has [32, 8]");
  EXPECT_TRUE(torch::equal(wrong.w, w_before));
  EXPECT_TRUE(torch::equal(wrong.b, b_before));
  Rig other;
  auto u = other.state();
  u.tensors.pop_back();  // the checkpoint's "buf" is not in this model
  EXPECT_THROW(load_checkpoint(dir.path, u), c10::Error);
  auto v = other.state();
  v.optimizers[0].first = "came";
  expect_error_containing([&] { load_checkpoint(dir.path, v); },
                          "optimizer 0 is 'adamw', the run has 'came'");
}

TEST(Checkpoint, DetectsTruncatedFilesAndBadManifests) {
  TempDir dir;
  Rig a;
  auto s = a.state();
  const std::string d = save_checkpoint(dir.path, 3, s);
  fs::resize_file(d + "/optimizer-0.safetensors",
                  fs::file_size(d + "/optimizer-0.safetensors") - 1);
  auto t = a.state();
  expect_error_containing([&] { load_checkpoint(dir.path, t); },
                          "optimizer-0.safetensors' has");
  std::ofstream(d + "/manifest.json") << "{\"format\": \"lowmem-checkpoint\", "
                                         "\"version\": 99}";
  expect_error_containing([&] { load_checkpoint(d, t); },
                          "format version 99 is not supported");
  std::ofstream(d + "/manifest.json") << "{\"format\": ";
  expect_error_containing([&] { load_checkpoint(d, t); },
                          "malformed manifest");
  std::ofstream(d + "/manifest.json") << "[1, 2]";
  expect_error_containing([&] { load_checkpoint(d, t); },
                          "not a JSON object");
  std::ofstream(d + "/manifest.json")
      << "{\"format\": \"lowmem-checkpoint\", \"version\": \"1\"}";
  expect_error_containing([&] { load_checkpoint(d, t); },
                          "mistyped field 'version'");
  EXPECT_THROW(resolve_checkpoint(dir.path + "/nothing"), c10::Error);
}

// Issue 20: hostile manifests (deep nesting crashed the reader; big values
// were echoed whole; negative counters were accepted).
TEST(Checkpoint, HostileManifestsGiveOneShortError) {
  TempDir dir;
  Rig a;
  auto s = a.state();
  s.counters = {{"consecutive_skips", 0}};
  const std::string d = save_checkpoint(dir.path, 3, s);
  const std::string good = lowmem::testing::read_file(d + "/manifest.json");
  auto t = a.state();
  auto with = [&](const std::string& text) {
    std::ofstream(d + "/manifest.json", std::ios::trunc) << text;
  };
  with(lowmem::testing::deep_json(300000));
  expect_short_error([&] { load_checkpoint(d, t); }, "nesting deeper");
  with("{\"format\": \"" + std::string(20 << 20, 'x') + "\"}");
  expect_short_error([&] { load_checkpoint(d, t); }, "exceed the limit");
  with("{\"format\": \"" + std::string(1000, 'x') + "\"}");
  expect_short_error([&] { load_checkpoint(d, t); }, "(1000 bytes)");
  auto replace = [&](const std::string& from, const std::string& to) {
    std::string m = good;
    const size_t at = m.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    with(m.replace(at, from.size(), to));
  };
  replace("\"step\": 3", "\"step\": -5");
  expect_short_error([&] { load_checkpoint(d, t); },
                     "step is -5, must be between 0 and 2^62");
  replace("\"consecutive_skips\": 0", "\"consecutive_skips\": -100");
  expect_short_error([&] { load_checkpoint(d, t); },
                     "counter 'consecutive_skips' is -100");
  replace("\"step\": 3", "\"step\": 3, \"step\": 4");
  expect_short_error([&] { load_checkpoint(d, t); }, "duplicate key 'step'");
  with(good);
  EXPECT_NO_THROW(load_checkpoint(d, t));
}

TEST(Checkpoint, KeepsTheNewestAndResavesAStep) {
  TempDir dir;
  Rig a;
  auto s = a.state();
  for (int step = 1; step <= 4; ++step) {
    a.fill(step);
    save_checkpoint(dir.path, step, s, /*keep_last=*/2);
  }
  EXPECT_FALSE(fs::exists(dir.path + "/step-00000001"));
  EXPECT_FALSE(fs::exists(dir.path + "/step-00000002"));
  EXPECT_TRUE(fs::exists(dir.path + "/step-00000003"));
  a.fill(40);
  save_checkpoint(dir.path, 4, s, 2);  // same step again
  Rig b;
  auto t = b.state();
  EXPECT_EQ(load_checkpoint(dir.path, t), dir.path + "/step-00000004");
  EXPECT_EQ(b.w[0][0].item<float>(), 40.0f);
}

// Kill the saving process at a chosen phase: the previous checkpoint must
// stay loadable, and what loads must be one complete checkpoint.
const char* g_kill_phase = nullptr;
void kill_at(const char* phase) {
  if (g_kill_phase != nullptr && std::strcmp(phase, g_kill_phase) == 0) {
    ::raise(SIGKILL);
  }
}

// Runs `save` in a forked child; returns true if the child died by SIGKILL.
template <class F>
bool run_child(F save, int kill_after_us = -1) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    at::set_num_threads(1);
    save();
    ::_exit(0);
  }
  if (kill_after_us >= 0) {
    ::usleep(static_cast<useconds_t>(kill_after_us));
    ::kill(pid, SIGKILL);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
}

TEST(Checkpoint, SigkillAtEveryPhaseLeavesAValidCheckpoint) {
  struct Case {
    const char* phase;
    int64_t expect_step;
  };
  for (const Case c : {Case{"weights", 1}, Case{"optimizers", 1},
                       Case{"manifest", 1}, Case{"renamed", 1},
                       Case{"latest", 2}}) {
    TempDir dir;
    Rig a;
    a.fill(1);
    auto s = a.state();
    save_checkpoint(dir.path, 1, s);
    const bool killed = run_child([&] {
      g_kill_phase = c.phase;
      detail::set_checkpoint_phase_hook(kill_at);
      a.fill(2);
      a.train_step();
      save_checkpoint(dir.path, 2, s);
    });
    EXPECT_TRUE(killed) << c.phase;
    Rig b;
    auto t = b.state();
    load_checkpoint(dir.path, t);
    EXPECT_EQ(t.counters.at("step"), c.expect_step) << c.phase;
    if (c.expect_step == 1) {
      EXPECT_EQ(b.w[0][0].item<float>(), 1.0f) << c.phase;
    }
    // The next save cleans up and succeeds.
    save_checkpoint(dir.path, 3, s, 1);
    for (const auto& e : fs::directory_iterator(dir.path)) {
      EXPECT_NE(e.path().filename().string().rfind(".tmp-", 0), 0u)
          << e.path();
    }
  }
}

// Issue 20: a kill during the clean-up of old checkpoints left half-deleted
// step-* directories; they are now renamed to .trash-* before deletion.
TEST(Checkpoint, SigkillDuringCleanUpLeavesNoHalfDeletedStep) {
  TempDir dir;
  Rig a;
  auto s = a.state();
  save_checkpoint(dir.path, 1, s);
  const bool killed = run_child([&] {
    g_kill_phase = "retired";
    detail::set_checkpoint_phase_hook(kill_at);
    save_checkpoint(dir.path, 2, s, /*keep_last=*/1);
  });
  EXPECT_TRUE(killed);
  auto names = [&] {
    std::set<std::string> out;
    for (const auto& e : fs::directory_iterator(dir.path)) {
      const std::string n = e.path().filename().string();
      out.insert(n.rfind(".trash-", 0) == 0 ? ".trash" : n);
    }
    return out;
  };
  EXPECT_EQ(names(),
            (std::set<std::string>{".trash", "LATEST", "step-00000002"}));
  Rig b;
  auto t = b.state();
  load_checkpoint(dir.path, t);
  EXPECT_EQ(t.counters.at("step"), 2);
  save_checkpoint(dir.path, 3, s, 1);
  EXPECT_EQ(names(), (std::set<std::string>{"LATEST", "step-00000003"}));
}

TEST(Checkpoint, SigkillAtRandomTimesNeverCorrupts) {
  TempDir dir;
  Rig a(/*n=*/1 << 17);  // 4 MiB of weights: saves take a while
  a.fill(1);
  auto s = a.state();
  save_checkpoint(dir.path, 1, s);
  std::mt19937 rng(0);
  for (int trial = 0; trial < 6; ++trial) {
    run_child(
        [&] {
          for (int step = 2; step < 1000; ++step) {
            a.fill(step);
            s.counters["value"] = step;
            save_checkpoint(dir.path, step, s, 2);
          }
        },
        static_cast<int>(rng() % 60000));
    Rig b(1 << 17);
    auto t = b.state();
    load_checkpoint(dir.path, t);
    const int64_t step = t.counters.at("step");
    // Whatever step loads, its weights are that step's, complete.
    EXPECT_EQ(b.w.min().item<float>(), static_cast<float>(step));
    EXPECT_EQ(b.w.max().item<float>(), static_cast<float>(step));
  }
}

}  // namespace
}  // namespace lowmem::io
