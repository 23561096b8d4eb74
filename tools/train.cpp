// `lowmem train`: trains from a recipe and/or flags, with a progress bar on a
// terminal and plain lines otherwise.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>

#include "command.h"
#include "lowmem/core/memory.h"
#include "lowmem/dist/launcher.h"
#include "lowmem/train/run.h"

namespace lowmem::tools {
namespace {

std::string fixed(double v, int digits) {
  if (!std::isfinite(v)) {
    return "nan";
  }
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}

std::string rate(double v) {
  char buf[64];
  if (v >= 1e6) {
    std::snprintf(buf, sizeof(buf), "%.2fM", v / 1e6);
  } else if (v >= 1e3) {
    std::snprintf(buf, sizeof(buf), "%.1fk", v / 1e3);
  } else {
    std::snprintf(buf, sizeof(buf), "%.1f", v);
  }
  return buf;
}

/// Draws the bar on a terminal; prints one line per event otherwise.
class ProgressPrinter {
 public:
  ProgressPrinter(std::string unit, bool terminal)
      : unit_(std::move(unit)), terminal_(terminal) {}

  void operator()(const train::Progress& p) {
    using K = train::Progress::Kind;
    switch (p.kind) {
      case K::kStep:
      case K::kSkip: {
        // Smoothed throughput (exponential moving average).
        rate_ = rate_ == 0.0 ? p.items_per_second
                             : 0.9 * rate_ + 0.1 * p.items_per_second;
        const std::string stats =
            "loss " + fixed(p.loss, 4) + " | " + rate(rate_) + " " + unit_ +
            "/s | mem " + format_bytes(p.live_bytes) + " (peak " +
            format_bytes(p.peak_bytes) + ")" +
            (p.skipped > 0 ? " | skipped " + std::to_string(p.skipped) : "");
        if (terminal_) {
          const int width = 24;
          const int filled = static_cast<int>(
              width * static_cast<double>(p.step) /
              static_cast<double>(std::max<int64_t>(1, p.max_steps)));
          std::string bar(static_cast<size_t>(filled), '#');
          bar.resize(static_cast<size_t>(width), '.');
          std::cout << "\r\033[K[" << bar << "] " << p.step << "/"
                    << p.max_steps << " " << stats << std::flush;
          open_line_ = true;
        } else {
          std::cout << (p.kind == K::kSkip ? "skip " : "step ") << p.step
                    << "/" << p.max_steps << " " << stats << " | lr "
                    << p.lr << "\n"
                    << std::flush;
        }
        break;
      }
      case K::kEval:
        line("eval  step " + std::to_string(p.step) + ": validation loss " +
             fixed(p.eval_loss, 4));
        break;
      case K::kCheckpoint:
        line("saved " + p.path);
        break;
      case K::kDone:
        break;
    }
  }

 private:
  void line(const std::string& s) {
    if (open_line_) {
      std::cout << "\r\033[K";
      open_line_ = false;
    }
    std::cout << s << "\n" << std::flush;
  }
  std::string unit_;
  bool terminal_;
  bool open_line_ = false;
  double rate_ = 0.0;
};

int run_train(const ConfigFlags& flags) {
  const train::Config config = flags.resolve();
  const bool terminal = ::isatty(STDOUT_FILENO) != 0;
  std::unique_ptr<ProgressPrinter> printer;
  auto result = train::run(
      config,
      [&](const train::Progress& p) {
        if (printer) {
          (*printer)(p);
        }
      },
      [&](train::Session& s) {
        if (s.rank != 0) {
          return;  // rank 0 reports for the job
        }
        std::cout << "# resolved configuration\n"
                  << s.config.to_yaml() << "# data: " << s.data_summary
                  << "\n";
        for (const auto& r : s.routes) {
          std::cout << "# optimizer " << r.target << ": " << r.params.size()
                    << " parameter tensors\n";
        }
        if (s.world_size > 1) {
          std::cout << "# data-parallel: " << s.world_size
                    << " workers, " << s.config.batch_size / s.world_size
                    << " rows of each batch of " << s.config.batch_size
                    << " per worker\n";
        }
        std::cout << "# baseline loss (input-independent predictor): "
                  << fixed(s.baseline_loss, 4) << "\n"
                  << std::flush;
        printer = std::make_unique<ProgressPrinter>(s.unit, terminal);
      });
  if (result.rank != 0) {
    return kExitOk;
  }
  if (terminal) {
    std::cout << "\r\033[K";
  }
  if (result.resumed_from >= 0) {
    std::cout << "resumed from step " << result.resumed_from << "\n";
  }
  std::cout << "done: " << result.steps << " steps in "
            << fixed(result.seconds, 1) << " s; validation loss "
            << fixed(result.eval_loss, 4) << " (baseline "
            << fixed(result.baseline_loss, 4) << "); peak tensor memory "
            << format_bytes(result.peak_bytes)
            << (config.device == "cpu" ? "" : " on " + config.device)
            << "; peak RSS "
            << format_bytes(MemoryTracker::peak_rss_bytes());
  if (result.skipped > 0) {
    std::cout << "; " << result.skipped << " non-finite steps skipped";
  }
  std::cout << "\n";
  if (!result.checkpoint.empty()) {
    std::cout << "checkpoint: " << result.checkpoint << "\n";
  }
  if (!result.adapter_dir.empty()) {
    std::cout << "adapter: " << result.adapter_dir << "\n";
  }
  return kExitOk;
}

/// `--nproc-per-node N`: checks the configuration, then runs this program's
/// own command line minus that flag as N local workers (dist::launch_local:
/// RANK, WORLD_SIZE, ... in their environment), their output prefixed with
/// "[rank i]". Exit code: the first failed worker's, else 0.
int launch_train(const ConfigFlags& flags, int nproc) {
  if (nproc < 1) {
    throw train::ConfigError("--nproc-per-node must be >= 1, got " +
                             std::to_string(nproc));
  }
  const train::Config config = flags.resolve();
  if (nproc == 1) {
    return run_train(flags);
  }
  if (std::getenv("WORLD_SIZE") != nullptr) {
    throw train::ConfigError(
        "--nproc-per-node inside a data-parallel job (WORLD_SIZE is set)");
  }
  train::check_data_parallel(config, nproc);
  std::vector<std::string> argv = {dist::self_executable()};
  const auto& args = program_args();
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--nproc-per-node" || a == "--nproc_per_node") {
      ++i;  // and its value
    } else if (a.rfind("--nproc-per-node=", 0) != 0 &&
               a.rfind("--nproc_per_node=", 0) != 0) {
      argv.push_back(a);
    }
  }
  std::cout << "# launching " << nproc << " workers on 127.0.0.1\n"
            << std::flush;
  const auto r = dist::launch_local(
      argv, dist::LaunchOptions().nproc_per_node(nproc),
      dist::prefixed_stream_sink(std::cout));
  std::cout << std::flush;
  if (r.exit_code != 0) {
    print_error("worker rank " + std::to_string(r.first_failed_rank) +
                " exited with status " + std::to_string(r.exit_code));
  }
  return r.exit_code;
}

const RegisterCommand kTrain{Command{
    "train",
    "Train a model from a YAML recipe and/or flags (data-parallel over N "
    "local processes with --nproc-per-node N)",
    [](CLI::App& sub) -> std::function<int()> {
      auto flags = std::make_shared<ConfigFlags>(sub);
      auto nproc = std::make_shared<int>(0);
      CLI::Option* nproc_flag =
          sub.add_option(
                 "--nproc-per-node,--nproc_per_node", *nproc,
                 "Data-parallel training: launch N local worker processes "
                 "(as torchrun --nproc-per-node; Gloo on 127.0.0.1). "
                 "batch_size stays the global batch (each worker takes "
                 "batch_size/N rows); rank 0 writes the files; output is "
                 "prefixed [rank i]")
              ->type_name("INT")
              ->group("Distributed");
      return [flags, nproc, nproc_flag] {
        return nproc_flag->count() > 0 ? launch_train(*flags, *nproc)
                                       : run_train(*flags);
      };
    }}};

int run_info(const ConfigFlags& flags) {
  const train::Config config = flags.resolve();
  const auto report = train::info(config);
  std::cout << "model " << config.model << ", method " << config.method
            << ", optimizer " << config.optimizer << "\n"
            << report.to_string();
  return kExitOk;
}

const RegisterCommand kInfo{Command{
    "info",
    "Parameter counts and memory breakdown of a model + method (one step on "
    "one batch, nothing written)",
    [](CLI::App& sub) -> std::function<int()> {
      auto flags = std::make_shared<ConfigFlags>(sub);
      return [flags] { return run_info(*flags); };
    }}};

}  // namespace
}  // namespace lowmem::tools
