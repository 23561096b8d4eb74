// The `lowmem` binary: exit codes, one-line errors, nothing written on usage
// errors, recipe + flag override, a short real run with checkpoints + resume.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "lowmem/dist/env.h"
#include "lowmem/io/safetensors.h"
#include "testing/files.h"

namespace fs = std::filesystem;
using lowmem::testing::read_file;

namespace {

struct Result {
  int code = -1;
  std::string out, err;
};

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/lowmem-cli-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  /// A `lowmem` child started by start(), its output in files named by tag.
  struct Running {
    pid_t pid = -1;
    std::string out, err;
  };
  /// Starts `lowmem args...` with `env` added to the environment and returns
  /// without waiting; finish() waits and collects its output.
  Running start(std::vector<std::string> args, const std::string& tag,
                const std::vector<std::pair<std::string, std::string>>& env) {
    Running r{-1, dir_ + "/." + tag + ".stdout", dir_ + "/." + tag + ".stderr"};
    r.pid = ::fork();
    if (r.pid == 0) {
      FILE* o = std::freopen(r.out.c_str(), "w", stdout);
      FILE* e = std::freopen(r.err.c_str(), "w", stderr);
      (void)o;
      (void)e;
      for (const auto& [name, value] : env) {
        ::setenv(name.c_str(), value.c_str(), 1);
      }
      std::vector<char*> argv;
      std::string bin = LOWMEM_CLI_PATH;
      argv.push_back(bin.data());
      for (auto& a : args) {
        argv.push_back(a.data());
      }
      argv.push_back(nullptr);
      ::execv(bin.c_str(), argv.data());
      ::_exit(127);
    }
    return r;
  }
  Result finish(const Running& running) {
    int status = 0;
    ::waitpid(running.pid, &status, 0);
    Result r;
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.out = read_file(running.out);
    r.err = read_file(running.err);
    fs::remove(running.out);
    fs::remove(running.err);
    return r;
  }
  Result run(std::vector<std::string> args) {
    return finish(start(std::move(args), "run", {}));
  }
  // A GPT small enough to train in a second.
  std::vector<std::string> tiny(std::vector<std::string> extra = {}) {
    std::vector<std::string> a = {
        "train",          "--gpt.n_layer",    "1",  "--gpt.n_head", "2",
        "--gpt.n_embd",   "16",               "--gpt.block_size",   "16",
        "--batch_size",   "4",                "--eval_batches",     "2",
        "--warmup_steps", "1",                "--log_every",        "1",
        "--threads",      "1"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
  /// `lowmem train` of tiny(method) for 3 steps as one process and as 2
  /// local workers (`--nproc-per-node 2`, the same global batch): the same
  /// losses and evaluation loss to 1e-5 relative.
  void expect_two_workers_train_as_one(const std::vector<std::string>& method);
  bool is_empty_dir() const {
    return fs::is_empty(dir_);
  }
  std::string dir_;
};

int lines(const std::string& s) {
  return static_cast<int>(std::count(s.begin(), s.end(), '\n'));
}

/// Step -> training loss (events "step") and the last eval loss of a
/// metrics.jsonl file.
struct Metrics {
  std::map<int64_t, double> loss;
  double eval_loss = NAN;
  int events = 0;
};
Metrics read_metrics(const std::string& path) {
  Metrics m;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    ++m.events;
    if (j.at("event") == "step") {
      m.loss[j.at("step").get<int64_t>()] = j.at("loss").get<double>();
    } else if (j.at("event") == "eval") {
      m.eval_loss = j.at("eval_loss").get<double>();
    }
  }
  return m;
}

void Cli::expect_two_workers_train_as_one(
    const std::vector<std::string>& method) {
  auto args = tiny(method);
  args.insert(args.end(), {"--steps", "3"});
  auto a = args;
  a.insert(a.end(), {"--metrics", dir_ + "/one.jsonl"});
  ASSERT_EQ(run(a).code, 0) << method[1];
  auto b = args;
  b.insert(b.end(),
           {"--metrics", dir_ + "/two.jsonl", "--nproc-per-node", "2"});
  auto r = run(b);
  ASSERT_EQ(r.code, 0) << method[1] << ": " << r.err << r.out;
  const auto m1 = read_metrics(dir_ + "/one.jsonl");
  const auto m2 = read_metrics(dir_ + "/two.jsonl");
  ASSERT_EQ(m2.loss.size(), 3u) << method[1];
  for (const auto& [step, loss] : m1.loss) {
    EXPECT_NEAR(m2.loss.at(step), loss, 1e-5 * std::abs(loss))
        << method[1] << " step " << step;
  }
  EXPECT_NEAR(m2.eval_loss, m1.eval_loss, 1e-5 * std::abs(m1.eval_loss));
}

TEST_F(Cli, NoSubcommandIsAUsageError) {
  auto r = run({});
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(lines(r.err), 1) << r.err;
}

TEST_F(Cli, UnknownFlagExits2WithOneLineAndWritesNothing) {
  auto r = run(tiny({"--bogus", "1", "--out_dir", dir_ + "/run"}));
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("--bogus"), std::string::npos) << r.err;
  EXPECT_TRUE(is_empty_dir());
}

TEST_F(Cli, BadValuesExit2WithOneLineAndWriteNothing) {
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"--steps", "ten"}, "bad value 'ten' for steps: expected an integer"},
      {{"--steps", "0"}, "steps must be >= 1, got 0"},
      {{"--clip_norm", "-1"}, "clip_norm must be >= 0"},
      {{"--optimizer", "adam"}, "unknown optimizer 'adam'"},
      {{"--adamw.lr", "-0.1"}, "[adamw]"},
      {{"--optimizer", "came", "--came.beta3", "1.5"}, "[came]"},
      {{"--gpt.n_head", "3"}, "[gpt]"},
      {{"--gpt.bias", "maybe"}, "expected true or false"},
      {{"--method", "projected-adapter", "--projected_adapter.rank", "0"},
       "[projection] rank must be >= 1, got 0"},
      {{"--method", "projected-adapter", "--projected_adapter.basis", "qr"},
       "[projection]"},
      {{"--method", "projected-adapter",
        "--projected_adapter.state_on_refresh", "drop"},
       "[galore]"},
      {{"--method", "projected-adapter", "--projected_adapter.freeze_rest",
        "2"},
       "expected true or false"},
      {{"--method", "projected-adapter", "--optimizer", "kfac"},
       "method projected-adapter needs an elementwise inner optimizer"},
      {{"--optimizer", "kfac", "--kfac.damping", "-1"},
       "[kfac] damping must be > 0, got -1"},
      {{"--optimizer", "kfac", "--kfac.T", "0"}, "[kfac]"},
      {{"--aux_optimizer", "kfac"}, "aux_optimizer cannot be kfac"},
      {{"--device", "gpu0"}, "bad device 'gpu0'"},
      {{"--device", "cuda:99"}, "device 'cuda:99' is not available"},
  };
  for (const auto& c : cases) {
    auto args = tiny(c.args);
    args.insert(args.end(), {"--out_dir", dir_ + "/run", "--metrics",
                             dir_ + "/m.jsonl"});
    auto r = run(args);
    EXPECT_EQ(r.code, 2) << c.message << "\n" << r.err;
    EXPECT_EQ(lines(r.err), 1) << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos)
        << "expected '" << c.message << "' in: " << r.err;
    EXPECT_TRUE(is_empty_dir()) << c.message;
  }
}

TEST_F(Cli, RecipeErrorsExit2) {
  std::ofstream(dir_ + "/bad.yaml") << "steps: 5\nstepz: 3\n";
  auto r = run({"train", "--recipe", dir_ + "/bad.yaml"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("bad.yaml: unknown key 'stepz'"), std::string::npos)
      << r.err;
  r = run({"train", "--recipe", dir_ + "/missing.yaml"});
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(lines(r.err), 1) << r.err;
}

TEST_F(Cli, LibraryErrorsExit1) {
  auto r = run(tiny({"--text.path", dir_ + "/no-such-corpus", "--steps", "2"}));
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("no-such-corpus"), std::string::npos) << r.err;
}

// Issue 20: hostile flags and files give exit 2 (usage) or 1 (failure) with
// one short line naming the key, never a crash, a hang or bad_alloc.
TEST_F(Cli, HostileFlagsAndFilesExitCleanly) {
  struct Case {
    std::vector<std::string> args;
    int code;
    std::string message;
  };
  // Under Linux's 128 KiB limit of one exec argument (MAX_ARG_STRLEN).
  const std::string big(100000, 'x');
  const std::vector<Case> cases = {
      {tiny({"--gpt.block_size", "0"}), 2, "gpt.block_size must be >= 1"},
      {{"frobnicate", "--steps", "1"}, 2, "unknown command 'frobnicate'"},
      {tiny({"--threads", "100000000"}), 2, "threads must be in [0, 1024]"},
      {{"train", "--recipe", "/dev/zero"}, 2, "more than the limit of 1048576"},
      {tiny({"--text.path", "/dev/zero", "--steps", "1"}), 1,
       "contains no text files"},
      {tiny({"--gpt.n_embd", "1000000000", "--gpt.n_head", "1"}), 2,
       "gpt.n_embd=1000000000"},
      {tiny({"--data", "jsonl", "--jsonl.path", "/nonexistent.jsonl",
             "--jsonl.max_messages", "0"}),
       2, "jsonl.max_messages must be >= 1, got 0"},
      {tiny({"--optimizer", big}), 2, "unknown optimizer 'xxx"},
      {tiny({"--" + big, "1"}), 2, ""},
  };
  for (const auto& c : cases) {
    auto args = c.args;
    args.insert(args.end(), {"--out_dir", dir_ + "/run"});
    if (c.args[0] == "frobnicate") args.resize(3);
    const auto r = run(args);
    EXPECT_EQ(r.code, c.code) << c.message << "\n" << r.err.substr(0, 3000);
    EXPECT_EQ(lines(r.err), 1) << r.err.substr(0, 3000);
    EXPECT_LE(r.err.size(), 2100u) << c.message;
    EXPECT_NE(r.err.find(c.message), std::string::npos)
        << "expected '" << c.message << "' in: " << r.err.substr(0, 3000);
    EXPECT_FALSE(fs::exists(dir_ + "/run/config.yaml")) << c.message;
  }
}

// Issue 20: nothing in out_dir changes unless the run starts; a fresh run
// does not mix with another run's files; --overwrite replaces them.
TEST_F(Cli, OutputFolderIsOnlyChangedByARunThatStarts) {
  const std::string out = dir_ + "/run";
  ASSERT_EQ(run(tiny({"--steps", "2", "--out_dir", out})).code, 0);
  const std::string config = read_file(out + "/config.yaml");
  const std::string metrics = read_file(out + "/metrics.jsonl");
  // A failing resume (another model: shapes differ) leaves it as it was.
  auto r = run(tiny({"--steps", "4", "--gpt.n_embd", "32", "--out_dir", out,
                     "--resume", "auto"}));
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_EQ(read_file(out + "/config.yaml"), config);
  EXPECT_EQ(read_file(out + "/metrics.jsonl"), metrics);
  // A fresh run into it is refused, naming what is there and the way out.
  r = run(tiny({"--steps", "3", "--out_dir", out}));
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("holds checkpoints, metrics.jsonl, config.yaml"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("--overwrite"), std::string::npos) << r.err;
  EXPECT_EQ(read_file(out + "/config.yaml"), config);
  EXPECT_TRUE(fs::exists(out + "/checkpoints/step-00000002"));
  // --overwrite (a bare flag) replaces the old run: its checkpoints and
  // metrics are gone, the new run's are there; so is what a killed earlier
  // retirement left.
  fs::create_directories(out + "/.trash-checkpoints-1/step-00000001");
  r = run(tiny({"--steps", "3", "--out_dir", out, "--overwrite"}));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(fs::exists(out + "/checkpoints/step-00000002"));
  EXPECT_TRUE(fs::exists(out + "/checkpoints/step-00000003"));
  const auto m = read_metrics(out + "/metrics.jsonl");
  EXPECT_EQ(m.loss.size(), 3u);
  EXPECT_NE(read_file(out + "/config.yaml").find("steps: 3"),
            std::string::npos);
  for (const auto& e : fs::directory_iterator(out)) {
    EXPECT_NE(e.path().filename().string().rfind(".trash-", 0), 0u) << e.path();
  }
  // An empty existing folder is fine; --overwrite with --resume is a usage
  // error.
  fs::create_directories(dir_ + "/empty");
  EXPECT_EQ(run(tiny({"--steps", "1", "--out_dir", dir_ + "/empty"})).code, 0);
  r = run(tiny(
      {"--steps", "1", "--out_dir", out, "--overwrite", "--resume", "auto"}));
  EXPECT_EQ(r.code, 2) << r.err;
}

TEST_F(Cli, HelpListsFlagsFromTheVisitors) {
  auto r = run({"train", "--help"});
  EXPECT_EQ(r.code, 0);
  for (const char* flag : {"--recipe", "--steps", "--batch-size", "--came.beta3",
                           "--adamw.weight_decay", "--gpt.n_embd",
                           "--galore.rank", "--projected_adapter.rank",
                           "--projected_adapter.freeze_rest", "--kfac.damping"}) {
    EXPECT_NE(r.out.find(flag), std::string::npos) << flag;
  }
  EXPECT_EQ(run({"info", "--help"}).code, 0);
}

TEST_F(Cli, RecipeFlagOverrideTrainAndResume) {
  const std::string run_dir = dir_ + "/run";
  std::ofstream(dir_ + "/r.yaml") << "steps: 100\nseed: 3\nadamw:\n  lr: 0.01\n";
  auto r = run(tiny({"--recipe", dir_ + "/r.yaml", "--steps", "4",
                     "--eval_every", "2", "--out_dir", run_dir}));
  ASSERT_EQ(r.code, 0) << r.err << r.out;
  const std::string config = read_file(run_dir + "/config.yaml");
  EXPECT_NE(config.find("steps: 4"), std::string::npos) << config;  // flag
  EXPECT_NE(config.find("seed: 3"), std::string::npos) << config;   // recipe
  EXPECT_NE(config.find("lr: 0.01"), std::string::npos) << config;
  const std::string metrics = read_file(run_dir + "/metrics.jsonl");
  EXPECT_EQ(lines(metrics), 4 + 2 + 1 + 1) << metrics;  // steps, evals, ckpt, done
  EXPECT_NE(metrics.find("\"event\":\"eval\""), std::string::npos);
  EXPECT_TRUE(fs::exists(run_dir + "/checkpoints/LATEST"));
  EXPECT_NE(r.out.find("done: 4 steps"), std::string::npos) << r.out;

  auto again = run(tiny({"--recipe", dir_ + "/r.yaml", "--steps", "6",
                         "--out_dir", run_dir, "--resume", "auto"}));
  ASSERT_EQ(again.code, 0) << again.err;
  EXPECT_NE(again.out.find("resumed from step 4"), std::string::npos)
      << again.out;
  EXPECT_TRUE(fs::exists(run_dir + "/checkpoints/step-00000006"));
}

TEST_F(Cli, InfoPrintsParameterCountsAndWritesNothing) {
  auto r = run({"info", "--gpt.n_layer", "1", "--gpt.n_embd", "16",
                "--gpt.n_head", "2", "--batch_size", "2", "--out_dir",
                dir_ + "/run"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("parameters:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("optimizer state:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("tracked peak:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("step:             loss "), std::string::npos) << r.out;
  EXPECT_TRUE(is_empty_dir());
}

TEST_F(Cli, EveryMethodAndOptimizerTrains) {
  const std::vector<std::vector<std::string>> cases = {
      {"--method", "lora"},          {"--method", "lotr"},
      {"--method", "snell"},         {"--method", "galore", "--galore.rank", "4"},
      {"--optimizer", "came"},       {"--optimizer", "adafactor"},
      {"--optimizer", "singd"},      {"--optimizer", "sgd"},
      {"--optimizer", "kfac"},
      {"--method", "projected-adapter", "--projected_adapter.rank", "4"},
      {"--method", "projected-adapter", "--projected_adapter.rank", "4",
       "--projected_adapter.basis", "orthogonal",
       "--projected_adapter.freeze_rest", "true", "--optimizer", "came"},
  };
  for (const auto& c : cases) {
    auto args = tiny(c);
    args.insert(args.end(), {"--steps", "2"});
    auto r = run(args);
    EXPECT_EQ(r.code, 0) << c[1] << ": " << r.err;
    EXPECT_NE(r.out.find("done: 2 steps"), std::string::npos) << r.out;
  }
  // Routing: galore and singd leave the rest to the aux optimizer.
  auto r = run(tiny({"--optimizer", "singd", "--steps", "1"}));
  EXPECT_NE(r.out.find("# optimizer singd:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("# optimizer adamw:"), std::string::npos) << r.out;
  r = run(tiny({"--optimizer", "kfac", "--steps", "1"}));
  EXPECT_NE(r.out.find("# optimizer kfac: 8 parameter tensors"),
            std::string::npos)
      << r.out;  // weights and biases of qkv, proj, fc, proj
  EXPECT_NE(r.out.find("# optimizer adamw:"), std::string::npos) << r.out;
  // The projected adapter: its A factors to the driver, the rest to AdamW;
  // freeze_rest leaves only the A factors trainable.
  r = run(tiny({"--method", "projected-adapter", "--projected_adapter.rank",
                "4", "--steps", "1"}));
  EXPECT_NE(r.out.find("# optimizer projected_adapter: 4 parameter tensors"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("# optimizer adamw:"), std::string::npos) << r.out;
  r = run(tiny({"--method", "projected-adapter", "--projected_adapter.rank",
                "4", "--projected_adapter.freeze_rest", "true", "--steps",
                "1"}));
  EXPECT_NE(r.out.find("# optimizer projected_adapter: 4 parameter tensors"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(r.out.find("# optimizer adamw:"), std::string::npos) << r.out;
}

// GaLore's adapter dual (arXiv 2502.13811): with weight decay 0 and no
// clipping (clipping sees the full gradients in one form and the projected
// ones in the other), `--method projected-adapter` trains exactly as
// `--method galore` with the same projector options.
TEST_F(Cli, ProjectedAdapterTrainsAsGalore) {
  auto common = [&](const std::string& method, const std::string& out) {
    const std::string s = method == "galore" ? "--galore." : "--projected_adapter.";
    return tiny({"--method", method, s + "rank", "4", s + "update_proj_gap",
                 "2", "--steps", "6", "--clip_norm", "0", "--adamw.lr",
                 "0.01", "--adamw.weight_decay", "0", "--out_dir", out});
  };
  auto r = run(common("galore", dir_ + "/galore"));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run(common("projected-adapter", dir_ + "/adapter"));
  ASSERT_EQ(r.code, 0) << r.err;
  const auto g = read_metrics(dir_ + "/galore/metrics.jsonl");
  const auto a = read_metrics(dir_ + "/adapter/metrics.jsonl");
  ASSERT_EQ(g.loss.size(), 6u);
  ASSERT_EQ(a.loss.size(), 6u);
  EXPECT_GT(std::abs(g.loss.at(6) - g.loss.at(1)), 1e-3);  // it trains
  for (const auto& [step, loss] : g.loss) {
    EXPECT_NEAR(a.loss.at(step), loss, 1e-4 * std::abs(loss)) << step;
  }
  EXPECT_NEAR(a.eval_loss, g.eval_loss, 1e-4 * std::abs(g.eval_loss));
  EXPECT_TRUE(fs::exists(dir_ + "/adapter/checkpoints/LATEST"));
}

// Resuming from a mid-run checkpoint continues exactly (bit for bit on CPU)
// with the new methods' state (projector bases, KFAC factors) restored.
TEST_F(Cli, ProjectedAdapterAndKfacResumeExactly) {
  const std::vector<std::vector<std::string>> cases = {
      {"--method", "projected-adapter", "--projected_adapter.rank", "4",
       "--projected_adapter.update_proj_gap", "3"},
      {"--optimizer", "kfac", "--kfac.T", "3"},
  };
  for (const auto& c : cases) {
    const std::string full = dir_ + "/full", part = dir_ + "/part";
    auto args = tiny(c);
    args.insert(args.end(), {"--steps", "6", "--save_every", "2",
                             "--keep_checkpoints", "3", "--adamw.lr", "0.01"});
    auto a = args;
    a.insert(a.end(), {"--out_dir", full});
    auto r = run(a);
    ASSERT_EQ(r.code, 0) << c[1] << ": " << r.err;
    auto b = args;
    b.insert(b.end(), {"--out_dir", part, "--resume",
                       full + "/checkpoints/step-00000002"});
    r = run(b);
    ASSERT_EQ(r.code, 0) << c[1] << ": " << r.err;
    EXPECT_NE(r.out.find("resumed from step 2"), std::string::npos) << r.out;
    const auto f = read_metrics(full + "/metrics.jsonl");
    const auto p = read_metrics(part + "/metrics.jsonl");
    ASSERT_EQ(p.loss.size(), 4u) << c[1];
    for (const auto& [step, loss] : p.loss) {
      EXPECT_EQ(loss, f.loss.at(step)) << c[1] << " step " << step;
    }
    EXPECT_EQ(p.eval_loss, f.eval_loss) << c[1];
    fs::remove_all(full);
    fs::remove_all(part);
  }
}

TEST_F(Cli, AdapterRunThenMerge) {
  const std::string base = dir_ + "/base", ft = dir_ + "/ft";
  ASSERT_EQ(run(tiny({"--steps", "2", "--out_dir", base})).code, 0);
  auto r = run(tiny({"--steps", "2", "--method", "lora", "--init",
                     base + "/checkpoints", "--out_dir", ft}));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(ft + "/adapter/adapter_model.safetensors"));
  r = run({"merge", "--base", base + "/checkpoints", "--adapter",
           ft + "/adapter", "--out", dir_ + "/merged"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir_ + "/merged/model.safetensors"));
  // merge needs only the base checkpoint and the adapter, not the training
  // corpus named in the run's configuration (issue 20).
  const std::string info = base + "/checkpoints/step-00000002/info.txt";
  std::string text = read_file(info);
  const std::string corpus = "/usr/share/games/fortunes";
  ASSERT_NE(text.find(corpus), std::string::npos) << text;
  text.replace(text.find(corpus), corpus.size(), dir_ + "/corpus-that-is-gone");
  std::ofstream(info, std::ios::trunc) << text;
  r = run({"merge", "--base", base + "/checkpoints", "--adapter",
           ft + "/adapter", "--out", dir_ + "/merged2"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(read_file(dir_ + "/merged2/model.safetensors"),
            read_file(dir_ + "/merged/model.safetensors"));
  r = run(tiny({"--steps", "1", "--warmup_steps", "0", "--init",
                dir_ + "/merged/model.safetensors"}));
  EXPECT_EQ(r.code, 0) << r.err;
  // A merge without its required flags is a usage error.
  EXPECT_EQ(run({"merge", "--base", base}).code, 2);
}

// `--nproc-per-node 2`: two Gloo workers on 127.0.0.1, each on half of every
// batch, train exactly as one process on the whole batch (to float
// rounding); rank 0 alone reports and writes; all ranks resume from a
// checkpoint (here one written by a 1-process run).
TEST_F(Cli, NprocPerNodeTwoTrainsAsOneProcess) {
  const std::string one = dir_ + "/one", two = dir_ + "/two",
                    resumed = dir_ + "/resumed";
  auto args = [&](const std::string& out) {
    // SGD: Adam would turn the rounding noise of gradients that are exactly
    // 0 in exact arithmetic (the key bias) into lr-sized steps.
    return tiny({"--steps", "4", "--save_every", "2", "--keep_checkpoints",
                 "3", "--eval_every", "2", "--optimizer", "sgd", "--sgd.lr",
                 "0.5", "--sgd.momentum", "0.9", "--out_dir", out});
  };
  auto r1 = run(args(one));
  ASSERT_EQ(r1.code, 0) << r1.err;
  auto a = args(two);
  a.insert(a.begin() + 1, {"--nproc-per-node", "2"});
  auto r2 = run(a);
  ASSERT_EQ(r2.code, 0) << r2.err << r2.out;
  EXPECT_NE(r2.out.find("[rank 0] # data-parallel: 2 workers, 2 rows"),
            std::string::npos)
      << r2.out;
  EXPECT_NE(r2.out.find("[rank 0] done: 4 steps"), std::string::npos)
      << r2.out;
  EXPECT_EQ(r2.out.find("[rank 1] step"), std::string::npos) << r2.out;

  const auto m1 = read_metrics(one + "/metrics.jsonl");
  const auto m2 = read_metrics(two + "/metrics.jsonl");
  EXPECT_EQ(m2.events, m1.events);  // written once, by rank 0
  ASSERT_EQ(m2.loss.size(), 4u);
  EXPECT_GT(std::abs(m1.loss.at(4) - m1.loss.at(1)), 1e-2);  // it trains
  for (const auto& [step, loss] : m1.loss) {
    EXPECT_NEAR(m2.loss.at(step), loss, 1e-5 * std::abs(loss)) << step;
  }
  EXPECT_NEAR(m2.eval_loss, m1.eval_loss, 1e-5 * std::abs(m1.eval_loss));
  const auto w1 = lowmem::io::load_safetensors(
      one + "/checkpoints/step-00000004/weights.safetensors");
  const auto w2 = lowmem::io::load_safetensors(
      two + "/checkpoints/step-00000004/weights.safetensors");
  ASSERT_EQ(w1.tensors.size(), w2.tensors.size());
  for (const auto& [name, t] : w1.tensors) {
    ASSERT_EQ(w2.tensors.count(name), 1u) << name;
    EXPECT_TRUE(torch::allclose(w2.tensors.at(name), t, 1e-4, 1e-6))
        << name << " max diff "
        << (w2.tensors.at(name) - t).abs().max().item<double>();
  }

  // Both workers resume from the 1-process checkpoint of step 2.
  auto b = args(resumed);
  b.insert(b.begin() + 1, {"--nproc-per-node", "2"});
  b.insert(b.end(), {"--resume", one + "/checkpoints/step-00000002"});
  auto r3 = run(b);
  ASSERT_EQ(r3.code, 0) << r3.err << r3.out;
  EXPECT_NE(r3.out.find("[rank 0] resumed from step 2"), std::string::npos)
      << r3.out;
  const auto m3 = read_metrics(resumed + "/metrics.jsonl");
  ASSERT_EQ(m3.loss.size(), 2u);
  for (const auto& [step, loss] : m3.loss) {
    EXPECT_NEAR(loss, m1.loss.at(step), 1e-5 * std::abs(loss)) << step;
  }
}

// The projection methods data-parallel, replicated and under ZeRO: GaLore
// (full gradients all-reduced, then projected alike on every rank) and the
// projected adapter with a seeded sketch (only the A gradients are
// all-reduced) or svd bases.
TEST_F(Cli, NprocPerNodeTwoTrainsGaloreAndProjectedAdapterAsOneProcess) {
  const std::vector<std::vector<std::string>> cases = {
      {"--method", "galore", "--galore.rank", "4"},
      // Updates inside backward: the hooks average the gradients.
      {"--method", "galore", "--galore.rank", "4", "--galore.layerwise",
       "true"},
      {"--method", "projected-adapter", "--projected_adapter.rank", "4",
       "--projected_adapter.basis", "orthogonal"},
      // svd refreshes from the averaged full gradient of W0.
      {"--method", "projected-adapter", "--projected_adapter.rank", "4",
       "--projected_adapter.update_proj_gap", "2"},
      // ZeRO-2: every worker rebases every layer each step.
      {"--method", "projected-adapter", "--projected_adapter.rank", "4",
       "--projected_adapter.basis", "orthogonal",
       "--projected_adapter.update_proj_gap", "1", "--zero", "2"},
      // ZeRO inside backward: each worker steps its own parameters in the
      // hooks; svd refreshes: A's owner steps it, also on the first.
      {"--method", "galore", "--galore.rank", "4", "--galore.layerwise", "true",
       "--zero", "2"},
      {"--method", "projected-adapter", "--projected_adapter.rank", "4",
       "--projected_adapter.update_proj_gap", "2", "--zero", "1"},
  };
  for (auto c : cases) {
    c.insert(c.end(), {"--optimizer", "sgd", "--sgd.lr", "0.5",
                       "--sgd.momentum", "0.9"});
    expect_two_workers_train_as_one(c);
  }
}

// SINGD and KFAC average their curvature statistics over the workers, so
// two workers (replicated, and ZeRO-1 sharding the momenta) train as one
// process: the same losses, Kronecker factors refreshed every step.
TEST_F(Cli, NprocPerNodeTwoTrainsSingdAndKfacAsOneProcess) {
  const std::vector<std::vector<std::string>> cases = {
      {"--optimizer", "singd", "--singd.T", "1", "--singd.lr", "0.05"},
      {"--optimizer", "kfac", "--kfac.T", "1", "--kfac.lr", "0.05", "--zero",
       "1"},
  };
  for (const auto& c : cases) expect_two_workers_train_as_one(c);
}

// `--zero 2` (ZeRO-2, docs/distributed.md §6): two workers, each keeping the
// momentum of its own parameters, train as one process; their sharded
// checkpoint (one optimizer file per worker, manifest last) resumes in one
// process, which reads both shards.
TEST_F(Cli, NprocPerNodeTwoZero2TrainsAndResumesAsOneProcess) {
  const std::string one = dir_ + "/one", two = dir_ + "/two";
  auto args = [&](const std::string& out) {
    return tiny({"--steps", "4", "--save_every", "2", "--keep_checkpoints", "3",
                 "--optimizer", "sgd", "--sgd.lr", "0.5", "--sgd.momentum",
                 "0.9", "--out_dir", out});
  };
  ASSERT_EQ(run(args(one)).code, 0);
  auto a = args(two);
  a.insert(a.begin() + 1, {"--nproc-per-node", "2", "--zero", "2"});
  auto r = run(a);
  ASSERT_EQ(r.code, 0) << r.err << r.out;
  // Each worker reports its own peak and its shard of the state.
  for (const char* w : {"worker 0 of 2: peak tensor memory ",
                        "worker 1 of 2: peak tensor memory "}) {
    const auto at = r.out.find(w);
    ASSERT_NE(at, std::string::npos) << w << "\n" << r.out;
    const std::string line = r.out.substr(at, r.out.find('\n', at) - at);
    EXPECT_NE(line.find("; optimizer state "), std::string::npos) << line;
    EXPECT_EQ(line.find("optimizer state 0 B"), std::string::npos) << line;
  }
  const std::string step2 = two + "/checkpoints/step-00000002";
  EXPECT_TRUE(fs::exists(step2 + "/optimizer-0.shard-1.safetensors"));
  EXPECT_FALSE(fs::exists(step2 + "/optimizer-0.safetensors"));
  EXPECT_NE(read_file(two + "/config.yaml").find("zero_stage: 2"),
            std::string::npos);
  const auto m1 = read_metrics(one + "/metrics.jsonl");
  const auto m2 = read_metrics(two + "/metrics.jsonl");
  ASSERT_EQ(m2.loss.size(), 4u);
  for (const auto& [step, loss] : m1.loss) {
    EXPECT_NEAR(m2.loss.at(step), loss, 1e-5 * std::abs(loss)) << step;
  }
  auto b = args(dir_ + "/resumed");
  b.insert(b.end(), {"--resume", step2});
  ASSERT_EQ(run(b).code, 0);
  const auto m3 = read_metrics(dir_ + "/resumed/metrics.jsonl");
  ASSERT_EQ(m3.loss.size(), 2u);
  for (const auto& [step, loss] : m3.loss) {
    EXPECT_NEAR(loss, m1.loss.at(step), 1e-5 * std::abs(loss)) << step;
  }
  // A stage outside 0..2 is a usage error.
  EXPECT_EQ(run(tiny({"--zero", "3"})).code, 2);
}

// Two "nodes" of two workers each on this machine (issue 21 item 3): two
// `lowmem train --nnodes 2` launchers, node 0 serving the rendezvous on
// 127.0.0.1 with its Gloo sockets on GLOO_SOCKET_IFNAME=lo (127.0.0.1), node
// 1 on its own loopback address 127.0.0.2 (--local_addr; network namespaces
// would need a veth pair, i.e. root) and given torchrun's underscore
// spellings. The four workers (global ranks 0..3, one row of the batch each)
// train exactly as one process on the whole batch.
TEST_F(Cli, TwoNodesOfTwoWorkersTrainAsOneProcess) {
  const std::string one = dir_ + "/one", four = dir_ + "/four",
                    node1 = dir_ + "/node1";
  auto args = [&](const std::string& out) {
    return tiny({"--steps", "3", "--save_every", "3", "--eval_every", "3",
                 "--optimizer", "sgd", "--sgd.lr", "0.5", "--sgd.momentum",
                 "0.9", "--out_dir", out});
  };
  auto r1 = run(args(one));
  ASSERT_EQ(r1.code, 0) << r1.err;
  const std::string port = std::to_string(lowmem::dist::find_free_port());
  auto a0 = args(four);
  a0.insert(a0.begin() + 1,
            {"--nnodes", "2", "--node-rank", "0", "--nproc-per-node", "2",
             "--master-addr", "127.0.0.1", "--master-port", port});
  auto a1 = args(node1);
  a1.insert(a1.begin() + 1,
            {"--nnodes=2", "--node_rank", "1", "--nproc_per_node", "2",
             "--master_addr", "127.0.0.1", "--master_port=" + port,
             "--local_addr", "127.0.0.2"});
  Running n0 = start(a0, "n0", {{"GLOO_SOCKET_IFNAME", "lo"}});
  Running n1 = start(a1, "n1", {});
  const Result r0 = finish(n0), rn1 = finish(n1);
  ASSERT_EQ(r0.code, 0) << r0.err << r0.out << rn1.err << rn1.out;
  ASSERT_EQ(rn1.code, 0) << rn1.err << rn1.out;
  EXPECT_NE(r0.out.find("# launching 2 workers (ranks 0..1 of 4)"),
            std::string::npos)
      << r0.out;
  EXPECT_NE(rn1.out.find("# launching 2 workers (ranks 2..3 of 4)"),
            std::string::npos)
      << rn1.out;
  EXPECT_NE(r0.out.find("[rank 0] # data-parallel: 4 workers, 1 rows"),
            std::string::npos)
      << r0.out;
  EXPECT_NE(r0.out.find("[rank 0] done: 3 steps"), std::string::npos) << r0.out;
  EXPECT_FALSE(fs::exists(node1 + "/metrics.jsonl"));  // rank 0 writes

  const auto m1 = read_metrics(one + "/metrics.jsonl");
  const auto m4 = read_metrics(four + "/metrics.jsonl");
  ASSERT_EQ(m4.loss.size(), 3u);
  EXPECT_GT(std::abs(m1.loss.at(3) - m1.loss.at(1)), 1e-2);  // it trains
  for (const auto& [step, loss] : m1.loss) {
    EXPECT_NEAR(m4.loss.at(step), loss, 1e-5 * std::abs(loss)) << step;
  }
  const auto w1 = lowmem::io::load_safetensors(
      one + "/checkpoints/step-00000003/weights.safetensors");
  const auto w4 = lowmem::io::load_safetensors(
      four + "/checkpoints/step-00000003/weights.safetensors");
  ASSERT_EQ(w1.tensors.size(), w4.tensors.size());
  for (const auto& [name, t] : w1.tensors) {
    ASSERT_EQ(w4.tensors.count(name), 1u) << name;
    EXPECT_TRUE(torch::allclose(w4.tensors.at(name), t, 1e-4, 1e-6))
        << name << " max diff "
        << (w4.tensors.at(name) - t).abs().max().item<double>();
  }
}

/// The pid of the child of `parent` whose environment has RANK=`rank`, -1 if
/// none (yet).
pid_t worker_pid(pid_t parent, int rank) {
  const std::string p = std::to_string(parent);
  std::istringstream children(
      read_file("/proc/" + p + "/task/" + p + "/children"));
  const std::string want = "RANK=" + std::to_string(rank);
  pid_t child = -1;
  while (children >> child) {
    const std::string env =
        read_file("/proc/" + std::to_string(child) + "/environ");
    std::istringstream vars(env);
    std::string var;
    while (std::getline(vars, var, '\0')) {
      if (var == want) return child;
    }
  }
  return -1;
}

// Issue 21 item 4 under ZeRO-2: rank 1 is SIGKILLed mid-run (after the first
// sharded checkpoint became LATEST); rank 0 stops on its own within the
// collective timeout (before the launcher's 30 s grace ends), the launcher
// names rank 1 in one line, and `--resume auto` with one process (another
// world size) continues from the last complete sharded checkpoint as the
// uninterrupted 1-process run does.
TEST_F(Cli, Zero2WorkerKilledMidRunThenResumeAutoWithOneProcess) {
  const std::string one = dir_ + "/one", two = dir_ + "/two";
  auto args = [&](const std::string& out) {
    return tiny({"--steps", "100", "--save_every", "2", "--log_every", "1",
                 "--optimizer", "sgd", "--sgd.lr", "0.05", "--sgd.momentum",
                 "0.9", "--dist_timeout_s", "5", "--out_dir", out});
  };
  auto a = args(two);
  a.insert(a.begin() + 1, {"--nproc-per-node", "2", "--zero", "2"});
  Running job = start(a, "job", {});
  const auto t0 = std::chrono::steady_clock::now();
  while (!fs::exists(two + "/checkpoints/LATEST") &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const pid_t victim = worker_pid(job.pid, 1);
  ASSERT_GT(victim, 0);
  ::kill(victim, SIGKILL);
  const auto killed_at = std::chrono::steady_clock::now();
  const Result r = finish(job);
  const double stop_s = std::chrono::duration<double>(
                            std::chrono::steady_clock::now() - killed_at)
                            .count();
  EXPECT_EQ(r.code, 128 + SIGKILL) << r.err << r.out;
  EXPECT_EQ(r.out.find("[rank 0] done:"), std::string::npos) << r.out;
  EXPECT_EQ(lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("worker rank 1 exited with status 137"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.out.find("[rank 0] "), std::string::npos);
  EXPECT_NE(r.out.find("a peer died, hung or disagreed"), std::string::npos)
      << r.out;
  EXPECT_LT(stop_s, 25.0) << r.out;  // the launcher would SIGTERM at 30 s

  std::string latest = read_file(two + "/checkpoints/LATEST");
  latest = latest.substr(0, latest.find('\n'));
  const int64_t k = std::stoll(latest.substr(latest.find('-') + 1));
  EXPECT_TRUE(fs::exists(two + "/checkpoints/" + latest +
                         "/optimizer-0.shard-1.safetensors"));
  auto b = args(two);
  b.insert(b.end(), {"--resume", "auto"});
  const Result resumed = run(b);
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_NE(resumed.out.find("resumed from step " + std::to_string(k)),
            std::string::npos)
      << resumed.out;
  ASSERT_EQ(run(args(one)).code, 0);
  const auto m1 = read_metrics(one + "/metrics.jsonl");
  const auto m2 = read_metrics(two + "/metrics.jsonl");
  ASSERT_EQ(m2.loss.count(100), 1u);
  for (int64_t step = k + 1; step <= k + 3; ++step) {
    EXPECT_NEAR(m2.loss.at(step), m1.loss.at(step),
                1e-5 * std::abs(m1.loss.at(step)))
        << step;
  }
  EXPECT_NEAR(m2.loss.at(100), m1.loss.at(100), 1e-3 * m1.loss.at(100));
}

TEST_F(Cli, NprocPerNodeUsageErrorsExit2BeforeLaunching) {
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"--nproc-per-node", "0"}, "--nproc-per-node must be >= 1, got 0"},
      {{"--nproc-per-node", "-1"}, "--nproc-per-node"},
      {{"--nproc-per-node", "two"}, "--nproc-per-node"},
      {{"--nproc-per-node", "3"},
       "batch_size 4 is the global batch and "
       "must be divisible by the 3"},
      {{"--nnodes", "0"}, "--nnodes must be >= 1, got 0"},
      {{"--nnodes", "2", "--node-rank", "2"},
       "--node-rank must be in [0, --nnodes=2), got 2"},
      {{"--nnodes", "2", "--node_rank", "-1"}, "got -1"},
      {{"--nproc-per-node", "2", "--master-port", "70000"},
       "--master-port must be in [0, 65535] (0: a free port), got 70000"},
      {{"--nnodes", "2", "--nproc-per-node", "3"},
       "must be divisible by the 6"},
  };
  for (const auto& c : cases) {
    auto args = tiny(c.args);
    args.insert(args.end(), {"--steps", "2", "--out_dir", dir_ + "/run"});
    auto r = run(args);
    EXPECT_EQ(r.code, 2) << c.message << "\n" << r.err;
    EXPECT_EQ(lines(r.err), 1) << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos)
        << "expected '" << c.message << "' in: " << r.err;
    EXPECT_EQ(r.out.find("[rank"), std::string::npos) << r.out;
    EXPECT_TRUE(is_empty_dir()) << c.message;
  }
}

// The quantized modes are keys of the existing methods: --base-dtype nf4
// (a 4-bit NF4 base under an adapter) and --optim-bits 8 (8-bit optimizer
// state) in lowmem train, info and plan.
TEST_F(Cli, Nf4BaseAndEightBitStateInTrainInfoAndPlan) {
  auto r = run(tiny({"--method", "lora", "--base-dtype", "nf4", "--optim-bits",
                     "8", "--steps", "2"}));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("done: 2 steps"), std::string::npos) << r.out;
  // The GPT's qkv, attn proj, fc and mlp proj.
  EXPECT_NE(r.out.find("# base: 4 linear layers stored in NF4"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("optim_bits: 8"), std::string::npos) << r.out;
  r = run({"info", "--gpt.n_layer", "1", "--gpt.n_embd", "16", "--gpt.n_head",
           "2", "--method", "lora", "--base-dtype", "nf4"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("(NF4: "), std::string::npos) << r.out;
  r = run({"plan", "--model", "llama", "--llama.preset", "60m", "--method",
           "lora", "--targets", "q_proj,v_proj", "--base-dtype", "nf4",
           "--optim-bits", "8"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("weights (frozen nf4)"), std::string::npos) << r.out;
  // Usage errors: a 4-bit base needs an adapter; sgd has no 8-bit state.
  r = run(tiny({"--method", "full", "--base-dtype", "nf4", "--steps", "1"}));
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("needs an adapter method"), std::string::npos) << r.err;
  r = run(tiny({"--optimizer", "sgd", "--optim-bits", "8", "--steps", "1"}));
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("has no 8-bit state"), std::string::npos) << r.err;
}

}  // namespace
