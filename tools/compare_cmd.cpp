// `lowmem compare`: every method side by side (library: compare/compare.h).
// This file only parses flags (generated from CompareOptions::for_each_field),
// renders progress and prints the tables.
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <type_traits>
#include <vector>

#include "command.h"
#include "lowmem/compare/compare.h"
#include "lowmem/core/fields.h"
#include "lowmem/core/input.h"
#include "lowmem/core/memory.h"

namespace {

namespace cmp = lowmem::compare;

std::atomic<bool> g_stop{false};

void on_sigint(int) {
  if (g_stop.exchange(true)) _exit(130);  // second Ctrl-C: leave now
}

// m:ss.s, rounded to tenths first (179.96 s is 3:00.0, not 2:60.0).
std::string fmt_seconds(double s) {
  char b[32];
  const long tenths = std::lround(std::max(0.0, s) * 10.0);
  std::snprintf(b, sizeof b, "%ld:%02ld.%ld", tenths / 600, tenths / 10 % 60,
                tenths % 10);
  return b;
}



struct CompareFlags {
  cmp::CompareOptions o;
  std::string suite = "all", methods;
  bool full = false, list = false, no_isolate = false;
  int64_t steps = -1;
  CLI::App* app = nullptr;
};

// The command as typed (Linux: /proc/self/cmdline), for results and report.
std::string command_line() {
  std::ifstream f("/proc/self/cmdline", std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::string out;
  size_t start = 0;
  bool first = true;
  while (start < all.size()) {
    size_t end = all.find('\0', start);
    if (end == std::string::npos) end = all.size();
    std::string arg = all.substr(start, end - start);
    if (first) arg = "lowmem";
    if (arg.empty() || arg.find_first_of(" \t\"'") != std::string::npos)
      arg = "'" + arg + "'";
    out += (first ? "" : " ") + arg;
    first = false;
    start = end + 1;
  }
  return out.empty() ? "lowmem compare" : out;
}

// One flag per CompareOptions field that has one.
template <class T>
void add_option(CLI::App& app, const char* flag, T& field, const char* help) {
  if constexpr (std::is_same_v<T, bool>) {
    app.add_flag(flag, field, help);
  } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
    app.add_option(flag, field, help)
        ->type_name("KEY=VALUE")
        ->allow_extra_args(false);
  } else {
    app.add_option(flag, field, help)->capture_default_str();
  }
}

void add_flags(CLI::App& app, CompareFlags& f) {
  f.app = &app;
  app.add_option(
         "--suite", f.suite,
         "memory, pretrain, finetune, lm (comma-separated), all (or toy: "
         "a smoke test)")
      ->capture_default_str();
  app.add_option("--methods", f.methods,
                 "comma-separated method names (see --list); default all");
  app.add_flag("--list", f.list,
               "list the methods and whether each can run here");
  app.add_option("--steps", f.steps,
                 "training steps of every method (overrides "
                 "--pretrain-steps/--finetune-steps/--lm-steps)");
  app.add_flag("--full", f.full,
               "4x the steps and validation batches (more conclusive)");
  app.add_flag("--no-isolate", f.no_isolate,
               "run methods in this process (no fork; RSS is then cumulative)");
  f.o.for_each_field(
      [&app](const char*, auto& field, const char* flag, const char* help) {
        if (*flag != '\0') add_option(app, flag, field, help);
      });
}

// --full's values for every field whose flag was not given.
void apply_full(CompareFlags& f) {
  cmp::CompareOptions full;
  full.full();
  std::vector<const void*> values;
  full.for_each_field([&values](const char*, auto& field, const char*,
                                const char*) { values.push_back(&field); });
  size_t i = 0;
  f.o.for_each_field(
      [&](const char*, auto& field, const char* flag, const char*) {
        using T = std::decay_t<decltype(field)>;
        const T& v = *static_cast<const T*>(values[i++]);
        if (*flag == '\0' || f.app->count(flag) == 0) field = v;
      });
}

// The options the flags describe; throws ConfigError on a usage error.
void resolve(CompareFlags& f) {
  cmp::CompareOptions& o = f.o;
  if (f.full) apply_full(f);
  if (f.steps > 0)
    o.pretrain_steps = o.finetune_steps = o.lm_steps = o.toy_steps = f.steps;
  o.suites = f.suite == "all" ? std::vector<std::string>{"memory", "pretrain",
                                                         "finetune", "lm"}
                              : lowmem::split_list(f.suite);
  o.methods = lowmem::split_list(f.methods);
  o.isolate = !f.no_isolate;
  o.command_line = command_line();
  cmp::validate_overrides(o.overrides);
  if (o.clip_norm < 0 || !std::isfinite(o.clip_norm))
    throw lowmem::ConfigError("--clip-norm must be >= 0 (0: off), got " +
                              std::to_string(o.clip_norm));
}

// Progress on stderr: a bar on a terminal, a line per method otherwise.
struct Progress {
  using Clock = std::chrono::steady_clock;
  bool tty = isatty(STDERR_FILENO);
  Clock::time_point t_method = Clock::now();
  int index = 0, count = 0;

  double elapsed() const {
    return std::chrono::duration<double>(Clock::now() - t_method).count();
  }
  void start(const cmp::MethodInfo& m, int i, int n) {
    index = i;
    count = n;
    t_method = Clock::now();
    if (!tty)
      std::fprintf(stderr, "[%d/%d] %s/%s ...\n", i + 1, n, m.suite.c_str(),
                   m.name.c_str());
  }
  void step(const cmp::MethodInfo& m, int64_t step, int64_t total,
            double loss) const {
    if (!tty) return;
    const int width = 24;
    const int fill = total > 0 ? static_cast<int>(width * step / total) : 0;
    const std::string name =
        m.suite + "/" + m.name + (m.name == "base" ? " (base)" : "");
    std::fprintf(stderr,
                 "\r\033[K[%2d/%d] %-28s [%s%s] %5lld/%-5lld loss %7.4f  %s",
                 index + 1, count, name.c_str(),
                 std::string(static_cast<size_t>(fill), '#').c_str(),
                 std::string(static_cast<size_t>(width - fill), '.').c_str(),
                 static_cast<long long>(step), static_cast<long long>(total),
                 loss, fmt_seconds(elapsed()).c_str());
    std::fflush(stderr);
  }
  void result(const cmp::MethodResult& r) const {
    std::string q;
    if (r.val_accuracy)
      q = "val acc " + std::to_string(100.0 * *r.val_accuracy).substr(0, 5) +
          "%";
    else if (r.val_loss)
      q = "val loss " + std::to_string(*r.val_loss).substr(0, 6);
    const std::string name = r.info.suite + "/" + r.info.name;
    const char* clear = tty ? "\r\033[K" : "";
    if (r.status == "ok" || r.status == "diverged") {
      std::fprintf(
          stderr,
          "%s[%2d/%d] %-28s %-8s %s  state %s  peak %s  %.1f ms/step  (%s)%s\n",
          clear, index + 1, count, name.c_str(), r.status.c_str(), q.c_str(),
          lowmem::format_bytes(r.optimizer_state_bytes).c_str(),
          lowmem::format_bytes(r.peak_tensor_bytes).c_str(), r.step_time_ms,
          fmt_seconds(elapsed()).c_str(),
          r.status == "diverged" ? ("  " + r.reason).c_str() : "");
    } else {
      std::fprintf(stderr, "%s[%2d/%d] %-28s %-8s %s\n", clear, index + 1,
                   count, name.c_str(), r.status.c_str(), r.reason.c_str());
    }
  }
};

void print_results(const cmp::CompareResults& res,
                   const cmp::CompareOptions& o) {
  std::vector<std::string> suites;
  for (const auto& m : res.methods)
    if (std::find(suites.begin(), suites.end(), m.info.suite) == suites.end())
      suites.push_back(m.info.suite);
  for (const auto& s : suites) {
    std::printf("\n== %s\n", s.c_str());
    std::printf("%s", cmp::format_table(res.methods, s, false).c_str());
  }
  if (!res.memory.rows.empty())
    std::printf("\n== memory (lowmem plan; measured at %s)\n%s",
                o.memory_measure.c_str(),
                cmp::format_memory_table(res.memory, false).c_str());
  std::printf("\nPaper claims in this run:\n");
  for (const auto& c : res.claims)
    std::printf("  %-10s %-24s %s\n             %s\n", c.status.c_str(),
                c.id.c_str(), c.claim.c_str(), c.evidence.c_str());
  if (res.python.status == "ok")
    std::printf(
        "\nPython (python3-torch %s) AdamW baseline: %.1f ms/step, %.0f "
        "tokens/s, peak RSS %s\n",
        res.python.torch_version.c_str(), res.python.step_time_ms,
        res.python.throughput,
        lowmem::format_bytes(res.python.peak_rss_bytes).c_str());
  else if (o.python_baseline)
    std::printf("\nPython baseline: %s (%s)\n", res.python.status.c_str(),
                res.python.reason.c_str());
  std::printf("\n== Summary\n%s", cmp::format_summary(res, false).c_str());
  std::printf(
      "\nPlots: %s%s\n", res.plots.status.c_str(),
      res.plots.reason.empty() ? "" : (" (" + res.plots.reason + ")").c_str());
  if (o.device != "cpu")
    std::printf(
        "Device %s: peak/state bytes are CUDA caching-allocator bytes; RSS "
        "is host memory\n",
        o.device.c_str());
  std::printf(
      "Wrote %s/{results.json,results.csv,curves.csv,report.md%s} in "
      "%s%s\n",
      o.out_dir.c_str(), res.plots.files.empty() ? "" : ",plots/",
      fmt_seconds(res.wall_s).c_str(),
      res.interrupted ? " (interrupted: results cover the finished methods)"
                      : "");
}

int compare(cmp::CompareOptions& o) {
  struct sigaction sa {};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  o.stop = &g_stop;
  Progress progress;
  cmp::CompareCallbacks cb;
  cb.on_start = [&](const cmp::MethodInfo& m, int i, int n) {
    progress.start(m, i, n);
  };
  cb.on_step = [&](const cmp::MethodInfo& m, int64_t step, int64_t total,
                   double loss) { progress.step(m, step, total, loss); };
  cb.on_note = [&](const std::string& n) {
    std::fprintf(stderr, "%s%s\n", progress.tty ? "\r\033[K" : "", n.c_str());
  };
  cb.on_result = [&](const cmp::MethodResult& r) { progress.result(r); };
  const cmp::CompareResults res = cmp::run_compare(o, cb);
  print_results(res, o);
  if (res.interrupted) return 130;
  for (const auto& m : res.methods)
    if (m.status == "failed") return 1;
  return 0;
}

int run(CompareFlags& f) {
  try {
    resolve(f);
  } catch (const lowmem::ConfigError& e) {
    std::fprintf(stderr, "lowmem compare: %s\n", e.what());
    return 2;
  }
  cmp::CompareOptions& o = f.o;
  try {
    if (f.list) {
      for (const auto& m : cmp::list_methods(o, o.suites)) {
        std::printf("%-9s %-18s %-26s %s\n", m.suite.c_str(), m.name.c_str(),
                    m.label.c_str(),
                    m.unavailable.empty()
                        ? "available"
                        : ("skipped: " + m.unavailable).c_str());
      }
      return 0;
    }
    return compare(o);
  } catch (const lowmem::ConfigError& e) {
    std::fprintf(stderr, "lowmem compare: %s\n", e.what());
    return 2;  // a usage error (e.g. --device), found before any work
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "lowmem compare: %s\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lowmem compare: %s\n", e.what());
    return 1;
  }
}

const lowmem::tools::RegisterCommand kCompare{lowmem::tools::Command{
    "compare",
    "Train the same model with every method; compare memory, time and quality",
    [](CLI::App& sub) {
      auto f = std::make_shared<CompareFlags>();
      add_flags(sub, *f);
      return std::function<int()>([f]() { return run(*f); });
    }}};

}  // namespace
