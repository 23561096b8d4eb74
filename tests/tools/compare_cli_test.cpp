// `lowmem compare` as a user runs it: forked per-method children, the
// terminal output and files, and Ctrl-C leaving complete partial results.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "testing/files.h"

namespace fs = std::filesystem;
using lowmem::testing::fresh_temp_dir;
using lowmem::testing::read_file;

namespace {

// Starts the CLI in its own process group with stdout/stderr to `log`.
pid_t spawn(const std::vector<std::string>& args, const fs::path& log) {
  pid_t pid = ::fork();
  if (pid == 0) {
    ::setpgid(0, 0);
    FILE* f = std::freopen(log.c_str(), "w", stdout);
    (void)f;
    ::dup2(STDOUT_FILENO, STDERR_FILENO);
    std::vector<char*> argv;
    std::string exe = LOWMEM_CLI_PATH;
    argv.push_back(exe.data());
    std::vector<std::string> copy = args;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(exe.c_str(), argv.data());
    ::_exit(127);
  }
  return pid;
}

int wait_exit(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + WTERMSIG(status);
}

}  // namespace

TEST(CompareCliTest, ToyRunWritesTablesAndFilesPerForkedMethod) {
  const fs::path out = fresh_temp_dir("compare_cli_toy");
  const pid_t pid = spawn({"compare", "--suite", "toy", "--steps", "5", "--out",
                           out.string(), "--gnuplot", "", "--threads", "1"},
                          out / "log.txt");
  ASSERT_EQ(wait_exit(pid), 0) << read_file(out / "log.txt");
  const std::string log = read_file(out / "log.txt");
  EXPECT_NE(log.find("== toy"), std::string::npos) << log;
  EXPECT_NE(log.find("optim state"), std::string::npos) << log;
  const auto j = nlohmann::json::parse(read_file(out / "results.json"));
  EXPECT_EQ(j.at("schema_version"), 1);
  ASSERT_EQ(j.at("methods").size(), 2u);
  for (const auto& m : j.at("methods")) {
    EXPECT_EQ(m.at("status"), "ok") << m.dump();
    // Each method ran in its own child: its own peak RSS is recorded.
    EXPECT_GT(m.at("memory").at("peak_rss_bytes").get<int64_t>(), 0);
  }
  EXPECT_TRUE(fs::exists(out / "results.csv"));
  EXPECT_TRUE(fs::exists(out / "report.md"));
  EXPECT_EQ(j.at("plots").at("status"), "skipped");
}

TEST(CompareCliTest, ListShowsEveryMethodAndItsAvailability) {
  const fs::path out = fresh_temp_dir("compare_cli_list");
  const pid_t pid = spawn({"compare", "--list", "--fashion-mnist", "/nonexistent/fm"},
                          out / "log.txt");
  ASSERT_EQ(wait_exit(pid), 0);
  const std::string log = read_file(out / "log.txt");
  EXPECT_NE(log.find("pretrain  adamw"), std::string::npos) << log;
  EXPECT_NE(log.find("skipped:"), std::string::npos) << log;
  EXPECT_NE(log.find("/nonexistent/fm"), std::string::npos) << log;
}

TEST(CompareCliTest, BadFlagIsAUsageError) {
  const fs::path out = fresh_temp_dir("compare_cli_bad");
  const pid_t pid = spawn({"compare", "--no-such-flag"}, out / "log.txt");
  EXPECT_NE(wait_exit(pid), 0);
  EXPECT_NE(read_file(out / "log.txt").find("--no-such-flag"), std::string::npos);
}

TEST(CompareCliTest, SetOverridesAreAppliedAndRecorded) {
  const fs::path out = fresh_temp_dir("compare_cli_set");
  const pid_t pid = spawn({"compare", "--suite", "toy", "--steps", "3", "--out",
                           out.string(), "--gnuplot", "", "--set", "sgd.momentum=0",
                           "--set", "adamw.beta2=0.95", "--clip-norm", "1"},
                          out / "log.txt");
  ASSERT_EQ(wait_exit(pid), 0) << read_file(out / "log.txt");
  const auto j = nlohmann::json::parse(read_file(out / "results.json"));
  EXPECT_EQ(j.at("options").at("overrides"),
            nlohmann::json({"sgd.momentum=0", "adamw.beta2=0.95"}));
  EXPECT_EQ(j.at("options").at("clip_norm"), 1.0);
  ASSERT_EQ(j.at("methods").size(), 2u);
  EXPECT_EQ(j.at("methods")[0].at("overrides"), nlohmann::json({"adamw.beta2=0.95"}));
  EXPECT_EQ(j.at("methods")[1].at("overrides"), nlohmann::json({"sgd.momentum=0"}));
  EXPECT_EQ(j.at("methods")[1].at("memory").at("optimizer_state_bytes"), 0);
}

TEST(CompareCliTest, BadSetIsAUsageErrorNamingTheKey) {
  const fs::path out = fresh_temp_dir("compare_cli_set_bad");
  for (const auto& [arg, needle] :
       std::vector<std::pair<std::string, std::string>>{
           {"came.beta4=0.5", "unknown key 'came.beta4'"},
           {"came.beta3=x", "bad value 'x' for came.beta3"}}) {
    const pid_t pid = spawn({"compare", "--suite", "toy", "--out", out.string(),
                             "--set", arg},
                            out / "log.txt");
    EXPECT_EQ(wait_exit(pid), 2) << arg;
    EXPECT_NE(read_file(out / "log.txt").find(needle), std::string::npos)
        << read_file(out / "log.txt");
  }
  EXPECT_FALSE(fs::exists(out / "results.json"));
  // An unavailable device: a usage error before any work (checked in a child).
  const pid_t pid = spawn({"compare", "--suite", "toy", "--out", (out / "d").string(),
                           "--device", "cuda:99"},
                          out / "log.txt");
  EXPECT_EQ(wait_exit(pid), 2);
  EXPECT_NE(read_file(out / "log.txt").find("device 'cuda:99' is not available"),
            std::string::npos)
      << read_file(out / "log.txt");
  EXPECT_FALSE(fs::exists(out / "d"));
  // An unknown method: one line naming it, exit 2, nothing written.
  const pid_t bad = spawn({"compare", "--suite", "toy", "--out",
                           (out / "m").string(), "--methods", "adamw,nosuch"},
                          out / "log.txt");
  EXPECT_EQ(wait_exit(bad), 2);
  const std::string log = read_file(out / "log.txt");
  EXPECT_NE(log.find("unknown method 'nosuch' for the selected suites"),
            std::string::npos)
      << log;
  EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 1) << log;
  EXPECT_FALSE(fs::exists(out / "m"));
}

TEST(CompareCliTest, CtrlCKeepsCompleteResultsOfFinishedMethods) {
  const fs::path out = fresh_temp_dir("compare_cli_sigint");
  // adamw finishes quickly; sgd is long enough to be interrupted.
  const pid_t pid = spawn({"compare", "--suite", "toy", "--methods", "adamw,sgd",
                           "--toy-steps", "8000", "--eval-every", "4000",
                           "--out", out.string(), "--gnuplot", "", "--threads", "1"},
                          out / "log.txt");
  // Wait for adamw's row in results.json (written after each method)...
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(240);
  bool first_done = false;
  while (std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (!fs::exists(out / "results.json")) continue;
    try {
      auto j = nlohmann::json::parse(read_file(out / "results.json"));
      if (j.at("methods").size() == 1) {
        first_done = true;
        break;
      }
    } catch (const std::exception&) {
    }
  }
  ASSERT_TRUE(first_done) << read_file(out / "log.txt");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ::kill(-pid, SIGINT);  // the terminal sends it to the whole group
  EXPECT_EQ(wait_exit(pid), 130) << read_file(out / "log.txt");
  const auto j = nlohmann::json::parse(read_file(out / "results.json"));
  EXPECT_TRUE(j.at("interrupted").get<bool>());
  ASSERT_EQ(j.at("methods").size(), 2u);
  EXPECT_EQ(j.at("methods")[0].at("name"), "adamw");
  EXPECT_EQ(j.at("methods")[0].at("status"), "ok");
  EXPECT_EQ(j.at("methods")[0].at("steps"), 8000);
  EXPECT_EQ(j.at("methods")[1].at("name"), "sgd");
  EXPECT_EQ(j.at("methods")[1].at("status"), "interrupted");
  const std::string csv = read_file(out / "results.csv");
  EXPECT_NE(csv.find(",toy,adamw,"), std::string::npos);
  EXPECT_NE(read_file(out / "report.md").find("interrupted"), std::string::npos);
}
