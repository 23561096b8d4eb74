// `lowmem compare`: every method side by side (library: train/compare.h).
// This file only parses flags, renders progress and prints the tables.
#include <CLI/CLI.hpp>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <fstream>
#include <sstream>

#include "command.h"
#include "lowmem/core/memory.h"
#include "lowmem/train/compare.h"
#include "lowmem/train/fields.h"

namespace {

namespace cmp = lowmem::train::compare;

std::atomic<bool> g_stop{false};

void on_sigint(int) {
  if (g_stop.exchange(true)) _exit(130);  // second Ctrl-C: leave now
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

std::string fmt_seconds(double s) {
  char b[32];
  const int m = static_cast<int>(s) / 60;
  std::snprintf(b, sizeof b, "%d:%04.1f", m, s - 60.0 * m);
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

void add_flags(CLI::App& app, CompareFlags& f) {
  f.app = &app;
  cmp::CompareOptions& o = f.o;
  app.add_option("--suite", f.suite, "pretrain, finetune, all (or toy: a smoke test)")
      ->capture_default_str();
  app.add_option("--methods", f.methods,
                 "comma-separated method names (see --list); default all");
  app.add_flag("--list", f.list, "list the methods and whether each can run here");
  app.add_option("--steps", f.steps, "training steps of every method (overrides "
                                   "--pretrain-steps/--finetune-steps)");
  app.add_option("--pretrain-steps", o.pretrain_steps)->capture_default_str();
  app.add_option("--finetune-steps", o.finetune_steps)->capture_default_str();
  app.add_option("--base-steps", o.base_steps,
                 "steps of the finetune suite's base model (cached)")
      ->capture_default_str();
  app.add_option("--toy-steps", o.toy_steps)->capture_default_str();
  app.add_flag("--full", f.full, "4x the steps and validation batches (more conclusive)");
  app.add_option("--out", o.out_dir, "output directory")->capture_default_str();
  app.add_option("--cache", o.cache_dir, "base-model cache (default <out>/cache)");
  app.add_option("--seed", o.seed)->capture_default_str();
  app.add_option("--threads", o.threads, "torch threads per method (0: all cores; default 1)")
      ->capture_default_str();
  app.add_option("--rank", o.rank, "rank of LoRA, LoTR, SNELL, the projected adapter")
      ->capture_default_str();
  app.add_option("--projection-rank", o.projection_rank,
                 "rank of GaLore and the random sketch (0: width / 4)")
      ->capture_default_str();
  app.add_option("--lr", o.lr,
                 "peak learning rate of every method's optimizers (0: each method's "
                 "tuned default; for sweeps)")
      ->capture_default_str();
  app.add_option("--set", o.overrides,
                 "KEY=VALUE, repeatable: an option of `lowmem train`'s sections "
                 "(came.beta3=0.999, adafactor.clip_threshold=1e9, adamw.beta2=0.95, "
                 "galore.rank=8, ...) for every method that builds that component; "
                 "compare's other settings stay (docs/compare.md)")
      ->type_name("KEY=VALUE")
      ->allow_extra_args(false);
  app.add_option("--device", o.device,
                 "where each method trains: cpu, cuda, cuda:N (memory columns: "
                 "CUDA allocated bytes there)")
      ->capture_default_str();
  app.add_option("--clip-norm", o.clip_norm,
                 "clip the global gradient norm of the trainable parameters before "
                 "every step (0: off)")
      ->capture_default_str();
  app.add_option("--gpt-width", o.gpt_width)->capture_default_str();
  app.add_option("--gpt-layers", o.gpt_layers)->capture_default_str();
  app.add_option("--gpt-heads", o.gpt_heads)->capture_default_str();
  app.add_option("--gpt-context", o.gpt_context)->capture_default_str();
  app.add_option("--gpt-batch", o.gpt_batch)->capture_default_str();
  app.add_option("--vit-width", o.vit_width)->capture_default_str();
  app.add_option("--vit-layers", o.vit_layers)->capture_default_str();
  app.add_option("--vit-heads", o.vit_heads)->capture_default_str();
  app.add_option("--vit-batch", o.vit_batch)->capture_default_str();
  app.add_option("--finetune-examples", o.finetune_examples)->capture_default_str();
  app.add_option("--finetune-eval-examples", o.finetune_eval_examples,
                 "test images of classes 5-9 to evaluate on (0: all 5000)")
      ->capture_default_str();
  app.add_option("--eval-every", o.eval_every, "0: five evaluations per run")
      ->capture_default_str();
  app.add_option("--text", o.text_path, "text file or folder (pretrain corpus)")
      ->capture_default_str();
  app.add_option("--fashion-mnist", o.fashion_mnist_dir)->capture_default_str();
  app.add_option("--gnuplot", o.gnuplot, "gnuplot executable (\"\": no plots)")
      ->capture_default_str();
  app.add_flag("--python-baseline", o.python_baseline,
               "also train the pretrain GPT with Debian's python3-torch");
  app.add_option("--python", o.python)->capture_default_str();
  app.add_flag("--no-isolate", f.no_isolate,
               "run methods in this process (no fork; RSS is then cumulative)");
}

int run(CompareFlags& f) {
  cmp::CompareOptions& o = f.o;
  CLI::App& app = *f.app;
  const bool full = f.full, list = f.list, no_isolate = f.no_isolate;
  const int64_t steps = f.steps;
  const std::string& suite = f.suite;
  const std::string& methods = f.methods;
  const bool full_set = full;
  if (full_set) {
    // --full first, then explicit flags win: re-parse on top of it.
    cmp::CompareOptions d;
    d.full();
    o.pretrain_steps = app.count("--pretrain-steps") ? o.pretrain_steps : d.pretrain_steps;
    o.finetune_steps = app.count("--finetune-steps") ? o.finetune_steps : d.finetune_steps;
    o.base_steps = app.count("--base-steps") ? o.base_steps : d.base_steps;
    o.gpt_width = app.count("--gpt-width") ? o.gpt_width : d.gpt_width;
    o.gpt_layers = app.count("--gpt-layers") ? o.gpt_layers : d.gpt_layers;
    o.gpt_context = app.count("--gpt-context") ? o.gpt_context : d.gpt_context;
    o.vit_width = app.count("--vit-width") ? o.vit_width : d.vit_width;
    o.vit_layers = app.count("--vit-layers") ? o.vit_layers : d.vit_layers;
    o.eval_batches = d.eval_batches;
  }
  if (steps > 0) o.pretrain_steps = o.finetune_steps = o.toy_steps = steps;
  if (suite == "all") o.suites = {"pretrain", "finetune"};
  else o.suites = split_list(suite);
  o.methods = split_list(methods);
  o.isolate = !no_isolate;
  o.command_line = command_line();

  try {
    cmp::validate_overrides(o.overrides);
    if (o.clip_norm < 0 || !std::isfinite(o.clip_norm))
      throw lowmem::train::ConfigError("--clip-norm must be >= 0 (0: off), got " +
                                       std::to_string(o.clip_norm));
  } catch (const lowmem::train::ConfigError& e) {
    std::fprintf(stderr, "lowmem compare: %s\n", e.what());
    return 2;
  }
  try {
    if (list) {
      for (const auto& m : cmp::list_methods(o, o.suites)) {
        std::printf("%-9s %-18s %-26s %s\n", m.suite.c_str(), m.name.c_str(),
                    m.label.c_str(),
                    m.unavailable.empty() ? "available"
                                          : ("skipped: " + m.unavailable).c_str());
      }
      return 0;
    }
    struct sigaction sa {};
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, nullptr);
    o.stop = &g_stop;

    const bool tty = isatty(STDERR_FILENO);
    using Clock = std::chrono::steady_clock;
    auto t_method = Clock::now();
    int index = 0, count = 0;
    std::string current;
    cmp::CompareCallbacks cb;
    cb.on_start = [&](const cmp::MethodInfo& m, int i, int n) {
      index = i;
      count = n;
      t_method = Clock::now();
      current = m.suite + "/" + m.name;
      if (!tty) std::fprintf(stderr, "[%d/%d] %s ...\n", i + 1, n, current.c_str());
    };
    cb.on_step = [&](const cmp::MethodInfo& m, int64_t step, int64_t total, double loss) {
      if (!tty) return;
      const int width = 24;
      const int fill = total > 0 ? static_cast<int>(width * step / total) : 0;
      const double el = std::chrono::duration<double>(Clock::now() - t_method).count();
      std::fprintf(stderr, "\r\033[K[%2d/%d] %-28s [%s%s] %5lld/%-5lld loss %7.4f  %s",
                   index + 1, count, (m.suite + "/" + m.name + (m.name == "base" ? " (base)" : "")).c_str(),
                   std::string(static_cast<size_t>(fill), '#').c_str(),
                   std::string(static_cast<size_t>(width - fill), '.').c_str(),
                   static_cast<long long>(step), static_cast<long long>(total), loss,
                   fmt_seconds(el).c_str());
      std::fflush(stderr);
    };
    cb.on_note = [&](const std::string& n) {
      std::fprintf(stderr, "%s%s\n", tty ? "\r\033[K" : "", n.c_str());
    };
    cb.on_result = [&](const cmp::MethodResult& r) {
      std::string q;
      if (r.val_accuracy) q = "val acc " + std::to_string(100.0 * *r.val_accuracy).substr(0, 5) + "%";
      else if (r.val_loss) q = "val loss " + std::to_string(*r.val_loss).substr(0, 6);
      const double el = std::chrono::duration<double>(Clock::now() - t_method).count();
      if (r.status == "ok" || r.status == "diverged") {
        std::fprintf(stderr, "%s[%2d/%d] %-28s %-8s %s  state %s  peak %s  %.1f ms/step  (%s)%s\n",
                     tty ? "\r\033[K" : "", index + 1, count,
                     (r.info.suite + "/" + r.info.name).c_str(), r.status.c_str(), q.c_str(),
                     lowmem::format_bytes(r.optimizer_state_bytes).c_str(),
                     lowmem::format_bytes(r.peak_tensor_bytes).c_str(), r.step_time_ms,
                     fmt_seconds(el).c_str(),
                     r.status == "diverged" ? ("  " + r.reason).c_str() : "");
      } else {
        std::fprintf(stderr, "%s[%2d/%d] %-28s %-8s %s\n", tty ? "\r\033[K" : "",
                     index + 1, count, (r.info.suite + "/" + r.info.name).c_str(),
                     r.status.c_str(), r.reason.c_str());
      }
    };
    cmp::CompareResults res = cmp::run_compare(o, cb);

    std::vector<std::string> suites;
    for (const auto& m : res.methods)
      if (std::find(suites.begin(), suites.end(), m.info.suite) == suites.end())
        suites.push_back(m.info.suite);
    for (const auto& s : suites) {
      std::printf("\n== %s\n", s.c_str());
      std::printf("%s", cmp::format_table(res.methods, s, false).c_str());
    }
    std::printf("\nPaper claims in this run:\n");
    for (const auto& c : res.claims)
      std::printf("  %-10s %-24s %s\n             %s\n", c.status.c_str(), c.id.c_str(),
                  c.claim.c_str(), c.evidence.c_str());
    if (res.python.status == "ok")
      std::printf("\nPython (python3-torch %s) AdamW baseline: %.1f ms/step, %.0f tokens/s, peak RSS %s\n",
                  res.python.torch_version.c_str(), res.python.step_time_ms,
                  res.python.throughput, lowmem::format_bytes(res.python.peak_rss_bytes).c_str());
    else if (o.python_baseline)
      std::printf("\nPython baseline: %s (%s)\n", res.python.status.c_str(), res.python.reason.c_str());
    std::printf("\nPlots: %s%s\n", res.plots.status.c_str(),
                res.plots.reason.empty() ? "" : (" (" + res.plots.reason + ")").c_str());
    if (o.device != "cpu")
      std::printf("Device %s: peak/state bytes are CUDA caching-allocator bytes; "
                  "RSS is host memory\n",
                  o.device.c_str());
    std::printf("Wrote %s/{results.json,results.csv,curves.csv,report.md%s} in %s%s\n",
                o.out_dir.c_str(), res.plots.files.empty() ? "" : ",plots/",
                fmt_seconds(res.wall_s).c_str(),
                res.interrupted ? " (interrupted: results cover the finished methods)" : "");
    if (res.interrupted) return 130;
    for (const auto& m : res.methods)
      if (m.status == "failed") return 1;
    return 0;
  } catch (const lowmem::train::ConfigError& e) {
    std::fprintf(stderr, "lowmem compare: %s\n", e.what());
    return 2;  // a usage error (e.g. --device), found before any work
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
