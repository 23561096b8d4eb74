// Bit-exact resume through train::run (the `lowmem train` path) for every
// method and optimizer, 8-bit optimizer state included: a run is killed
// (SIGKILL, from the checkpoint phase hook, right after its step-2
// checkpoint became LATEST), then `resume auto` continues it in the same
// out_dir; its losses and its final checkpoint (weights, every optimizer's
// state, the RNG) must equal an uninterrupted run's bit for bit (the
// optimizer files compared tensor by tensor: LibTorch's own optimizers name
// their state by parameter addresses, which differ between processes).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "lowmem/io/checkpoint.h"
#include "lowmem/train/config.h"
#include "lowmem/train/run.h"
#include "testing/files.h"

namespace lowmem::train {
namespace {

namespace fs = std::filesystem;
using lowmem::testing::fresh_temp_dir;
using lowmem::testing::read_file;
using lowmem::testing::write_corpus;

struct Case {
  std::string name;
  std::vector<std::pair<std::string, std::string>> keys;
};

// Every method, every optimizer of `lowmem train`, and the optimizers with
// 8-bit state (min_8bit_size 1: the tiny model's tensors are small).
// GaLore and the projected adapter refresh their bases every 3 steps, so the
// resumed part crosses a refresh.
std::vector<Case> cases() {
  const std::pair<std::string, std::string> gap3 = {"galore.update_proj_gap",
                                                    "3"};
  return {
      {"full_adamw", {}},
      {"full_adamw_8bit",
       {{"adamw.optim_bits", "8"}, {"adamw.min_8bit_size", "1"}}},
      {"full_came", {{"optimizer", "came"}}},
      {"full_came_8bit",
       {{"optimizer", "came"},
        {"came.optim_bits", "8"},
        {"came.min_8bit_size", "1"}}},
      {"full_adafactor", {{"optimizer", "adafactor"}}},
      {"full_sgd", {{"optimizer", "sgd"}}},
      {"full_singd", {{"optimizer", "singd"}}},
      {"full_kfac", {{"optimizer", "kfac"}, {"kfac.T", "3"}}},
      {"galore_galore_adamw",
       {{"method", "galore"},
        {"optimizer", "galore_adamw"},
        {"galore.rank", "4"},
        gap3}},
      {"galore_adamw_8bit",
       {{"method", "galore"},
        {"galore.rank", "4"},
        gap3,
        {"adamw.optim_bits", "8"},
        {"adamw.min_8bit_size", "1"}}},
      {"galore_galore_adamw_8bit",
       {{"method", "galore"},
        {"optimizer", "galore_adamw"},
        {"galore.rank", "4"},
        gap3,
        {"galore_adamw.optim_bits", "8"},
        {"galore_adamw.min_8bit_size", "1"}}},
      {"lora", {{"method", "lora"}}},
      {"lotr", {{"method", "lotr"}}},
      {"snell", {{"method", "snell"}}},
      {"projected_adapter",
       {{"method", "projected-adapter"},
        {"projected_adapter.rank", "4"},
        {"projected_adapter.update_proj_gap", "3"}}},
  };
}

Config tiny(const Case& c, const std::string& corpus, const std::string& out) {
  Config cfg;
  cfg.set("text.path", corpus);
  cfg.set("gpt.n_layer", "1");
  cfg.set("gpt.n_head", "2");
  cfg.set("gpt.n_embd", "16");
  cfg.set("gpt.block_size", "16");
  cfg.steps = 6;
  cfg.batch_size = 4;
  cfg.warmup_steps = 1;
  cfg.eval_every = 3;
  cfg.eval_batches = 2;
  cfg.threads = 1;
  cfg.log_every = 1;
  cfg.save_every = 2;
  cfg.keep_checkpoints = 3;
  cfg.set("adamw.lr", "0.01");
  for (const auto& [k, v] : c.keys) cfg.set(k, v);
  cfg.out_dir = out;
  return cfg;
}

// Kills the process when the first checkpoint has become LATEST.
void kill_after_latest(const char* phase) {
  if (std::strcmp(phase, "latest") == 0) ::raise(SIGKILL);
}

std::map<int64_t, double> step_losses(const std::string& metrics) {
  std::map<int64_t, double> out;
  std::ifstream in(metrics);
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.at("event") == "step") {
      out[j.at("step").get<int64_t>()] = j.at("loss").get<double>();
    }
  }
  return out;
}

// The files of a checkpoint step that hold training state.
std::vector<std::string> state_files(const fs::path& step_dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(step_dir)) {
    const std::string n = e.path().filename().string();
    if (n != "info.txt" && n != "manifest.json") out.push_back(n);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Every tensor of a safetensors file as "dtype shape bytes", sorted: an
// optimizer file names LibTorch optimizers' state by the parameters'
// addresses in the writing process (docs/checkpoint-format.md), so two runs'
// files differ in names but must hold the same tensors.
std::vector<std::string> tensor_blobs(const fs::path& file) {
  const std::string bytes = read_file(file);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  const auto header = nlohmann::json::parse(bytes.substr(8, n));
  std::vector<std::string> out;
  for (const auto& [name, e] : header.items()) {
    if (name == "__metadata__") continue;
    const auto off = e.at("data_offsets");
    const uint64_t begin = off.at(0).get<uint64_t>();
    const uint64_t end = off.at(1).get<uint64_t>();
    out.push_back(e.at("dtype").dump() + e.at("shape").dump() +
                  bytes.substr(8 + n + begin, end - begin));
  }
  std::sort(out.begin(), out.end());
  return out;
}

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class RunResume : public ::testing::TestWithParam<Case> {};

TEST_P(RunResume, KilledAtStep2ThenResumedIsBitExact) {
  const Case& c = GetParam();
  const fs::path dir = fresh_temp_dir("run_resume_" + c.name);
  const std::string corpus = write_corpus(dir);
  const std::string full = (dir / "full").string();
  const std::string part = (dir / "part").string();
  // The interrupted run, in a child (before this process runs LibTorch).
  const pid_t pid = ::fork();
  if (pid == 0) {
    io::detail::set_checkpoint_phase_hook(kill_after_latest);
    try {
      run(tiny(c, corpus, part));
    } catch (...) {
      ::_exit(3);
    }
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
      << c.name << ": the run was not killed (status " << status << ")";
  ASSERT_EQ(read_file(part + "/checkpoints/LATEST"), "step-00000002\n");

  const RunResult whole = run(tiny(c, corpus, full));
  Config again = tiny(c, corpus, part);
  again.resume = "auto";
  const RunResult resumed = run(again);
  EXPECT_EQ(resumed.resumed_from, 2) << c.name;
  EXPECT_EQ(resumed.steps, whole.steps) << c.name;
  EXPECT_EQ(resumed.eval_loss, whole.eval_loss) << c.name;

  const auto a = step_losses(full + "/metrics.jsonl");
  const auto b = step_losses(part + "/metrics.jsonl");
  for (int64_t s = 3; s <= 6; ++s) {
    ASSERT_TRUE(b.count(s)) << c.name << " step " << s;
    EXPECT_EQ(b.at(s), a.at(s)) << c.name << " step " << s;
  }
  const fs::path last_a = fs::path(full) / "checkpoints" / "step-00000006";
  const fs::path last_b = fs::path(part) / "checkpoints" / "step-00000006";
  const auto files = state_files(last_a);
  EXPECT_EQ(state_files(last_b), files) << c.name;
  EXPECT_NE(std::find(files.begin(), files.end(), "optimizer-0.safetensors"),
            files.end());
  for (const auto& f : files) {
    if (f.rfind("optimizer-", 0) == 0) {
      EXPECT_TRUE(tensor_blobs(last_a / f) == tensor_blobs(last_b / f))
          << c.name << ": the state tensors of " << f << " differ";
    } else {
      EXPECT_TRUE(read_file(last_a / f) == read_file(last_b / f))
          << c.name << ": " << f << " differs";
    }
  }
  if (!HasFailure()) fs::remove_all(dir);  // kept for a look otherwise
}

INSTANTIATE_TEST_SUITE_P(Train, RunResume, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace lowmem::train
