// The `lowmem` binary: exit codes, one-line errors, nothing written on usage
// errors, recipe + flag override, a short real run with checkpoints + resume.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace fs = std::filesystem;

namespace {

struct Result {
  int code = -1;
  std::string out, err;
};

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

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
  Result run(std::vector<std::string> args) {
    const std::string out = dir_ + "/.stdout", err = dir_ + "/.stderr";
    const pid_t pid = ::fork();
    if (pid == 0) {
      FILE* o = std::freopen(out.c_str(), "w", stdout);
      FILE* e = std::freopen(err.c_str(), "w", stderr);
      (void)o;
      (void)e;
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
    int status = 0;
    ::waitpid(pid, &status, 0);
    Result r;
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.out = slurp(out);
    r.err = slurp(err);
    fs::remove(out);
    fs::remove(err);
    return r;
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
  bool is_empty_dir() const {
    return fs::is_empty(dir_);
  }
  std::string dir_;
};

int lines(const std::string& s) {
  return static_cast<int>(std::count(s.begin(), s.end(), '\n'));
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

TEST_F(Cli, HelpListsFlagsFromTheVisitors) {
  auto r = run({"train", "--help"});
  EXPECT_EQ(r.code, 0);
  for (const char* flag : {"--recipe", "--steps", "--batch-size", "--came.beta3",
                           "--adamw.weight_decay", "--gpt.n_embd",
                           "--galore.rank"}) {
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
  const std::string config = slurp(run_dir + "/config.yaml");
  EXPECT_NE(config.find("steps: 4"), std::string::npos) << config;  // flag
  EXPECT_NE(config.find("seed: 3"), std::string::npos) << config;   // recipe
  EXPECT_NE(config.find("lr: 0.01"), std::string::npos) << config;
  const std::string metrics = slurp(run_dir + "/metrics.jsonl");
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
  EXPECT_TRUE(is_empty_dir());
}

TEST_F(Cli, EveryMethodAndOptimizerTrains) {
  const std::vector<std::vector<std::string>> cases = {
      {"--method", "lora"},          {"--method", "lotr"},
      {"--method", "snell"},         {"--method", "galore", "--galore.rank", "4"},
      {"--optimizer", "came"},       {"--optimizer", "adafactor"},
      {"--optimizer", "singd"},      {"--optimizer", "sgd"},
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
  r = run(tiny({"--steps", "1", "--warmup_steps", "0", "--init",
                dir_ + "/merged/model.safetensors"}));
  EXPECT_EQ(r.code, 0) << r.err;
  // A merge without its required flags is a usage error.
  EXPECT_EQ(run({"merge", "--base", base}).code, 2);
}

}  // namespace
