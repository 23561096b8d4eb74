// `lowmem train`: trains from a recipe and/or flags, with a progress bar on a
// terminal and plain lines otherwise.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>

#include "command.h"
#include "lowmem/core/memory.h"
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
        std::cout << "# resolved configuration\n"
                  << s.config.to_yaml() << "# data: " << s.data_summary
                  << "\n";
        for (const auto& r : s.routes) {
          std::cout << "# optimizer " << r.target << ": " << r.params.size()
                    << " parameter tensors\n";
        }
        std::cout << "# baseline loss (input-independent predictor): "
                  << fixed(s.baseline_loss, 4) << "\n"
                  << std::flush;
        printer = std::make_unique<ProgressPrinter>(s.unit, terminal);
      });
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
            << format_bytes(result.peak_bytes) << "; peak RSS "
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

const RegisterCommand kTrain{Command{
    "train",
    "Train a model from a YAML recipe and/or flags",
    [](CLI::App& sub) -> std::function<int()> {
      auto flags = std::make_shared<ConfigFlags>(sub);
      return [flags] { return run_train(*flags); };
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
