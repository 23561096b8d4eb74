// `lowmem train`: trains from a recipe and/or flags, with a progress bar on a
// terminal and plain lines otherwise.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "command.h"
#include "lowmem/core/memory.h"
#include "lowmem/dist/launcher.h"
#include "lowmem/models/layers.h"
#include "lowmem/nn/nf4.h"
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

// base_dtype nf4: how many linear layers are stored in 4 bits, and their
// bytes (codes, scales and offsets).
void print_nf4_base(torch::nn::Module& model) {
  int64_t layers = 0, bytes = 0;
  for (const auto& m : model.modules(/*include_self=*/false)) {
    if (const auto* q = dynamic_cast<const nn::Nf4Linear*>(m.get())) {
      ++layers;
      bytes += q->weight().nbytes();
    }
  }
  if (layers > 0) {
    std::cout << "# base: " << layers << " linear layers stored in NF4 ("
              << format_bytes(bytes) << ")\n";
  }
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
        print_nf4_base(*s.model);
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
  if (result.world_size > 1) {
    // Every worker's own figures (the launcher prefixes its rank): under
    // ZeRO the state is this worker's shard.
    std::cout << "worker " << result.rank << " of " << result.world_size
              << ": peak tensor memory " << format_bytes(result.peak_bytes)
              << "; optimizer state "
              << format_bytes(result.optimizer_state_bytes) << "; peak RSS "
              << format_bytes(MemoryTracker::peak_rss_bytes()) << "\n";
  }
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

/// The launcher flags of `lowmem train` (torchrun's names, both spellings).
struct LaunchFlags {
  int nproc = 1;
  int nnodes = 1;
  int node_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 0;     // 0: a free port (one node), else torchrun's 29500
  std::string local_addr;  // "": Gloo's default choice
  std::vector<CLI::Option*> options;

  bool given() const {
    for (const CLI::Option* o : options) {
      if (o->count() > 0) return true;
    }
    return false;
  }
};

/// Adds --nproc-per-node, --nnodes, --node-rank, --master-addr,
/// --master-port to `sub`.
std::shared_ptr<LaunchFlags> add_launch_flags(CLI::App& sub) {
  auto f = std::make_shared<LaunchFlags>();
  auto add = [&](const std::string& names, auto& value, const char* help,
                 const char* type) {
    f->options.push_back(sub.add_option(names, value, help)
                             ->type_name(type)
                             ->group("Distributed"));
  };
  add("--nproc-per-node,--nproc_per_node", f->nproc,
      "Data-parallel training: launch N worker processes on this node (as "
      "torchrun --nproc-per-node; Gloo). batch_size stays the global batch "
      "(each worker takes batch_size/world rows); rank 0 writes the files; "
      "output is prefixed [rank i]",
      "INT");
  add("--nnodes", f->nnodes,
      "Number of nodes (as torchrun --nnodes; run this command on each node "
      "with its --node-rank)",
      "INT");
  add("--node-rank,--node_rank", f->node_rank,
      "This node's index in [0, nnodes): its workers get global ranks "
      "node_rank*nproc_per_node + local rank",
      "INT");
  add("--master-addr,--master_addr", f->master_addr,
      "Address of node 0, where rank 0 serves the rendezvous store "
      "(default 127.0.0.1)",
      "ADDR");
  add("--master-port,--master_port", f->master_port,
      "Port of the rendezvous store on node 0 (default: a free port on one "
      "node, 29500 with --nnodes > 1)",
      "PORT");
  add("--local-addr,--local_addr", f->local_addr,
      "This node's address for the workers' Gloo connections (sets "
      "LOWMEM_LOCAL_ADDR; GLOO_SOCKET_IFNAME, if set, wins)",
      "ADDR");
  return f;
}

/// Checks the launcher flags; throws ConfigError naming the bad value.
void check_launch_flags(const LaunchFlags& l) {
  auto fail = [](const std::string& what) { throw train::ConfigError(what); };
  if (l.nproc < 1) {
    fail("--nproc-per-node must be >= 1, got " + std::to_string(l.nproc));
  }
  if (l.nnodes < 1) {
    fail("--nnodes must be >= 1, got " + std::to_string(l.nnodes));
  }
  if (l.node_rank < 0 || l.node_rank >= l.nnodes) {
    fail("--node-rank must be in [0, --nnodes=" + std::to_string(l.nnodes) +
         "), got " + std::to_string(l.node_rank));
  }
  if (l.master_port < 0 || l.master_port > 65535) {
    fail("--master-port must be in [0, 65535] (0: a free port), got " +
         std::to_string(l.master_port));
  }
  if (l.master_addr.empty()) {
    fail("--master-addr is empty");
  }
}

/// This program's own command line minus the launcher flags (and values).
std::vector<std::string> worker_argv() {
  static const std::vector<std::string> kFlags = {
      "--nproc-per-node", "--nproc_per_node", "--nnodes",      "--node-rank",
      "--node_rank",      "--master-addr",    "--master_addr", "--master-port",
      "--master_port",    "--local-addr",     "--local_addr"};
  std::vector<std::string> argv = {dist::self_executable()};
  const auto& args = program_args();
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    bool skip = false;
    for (const auto& f : kFlags) {
      if (a == f) {
        ++i;  // and its value
        skip = true;
      } else if (a.rfind(f + "=", 0) == 0) {
        skip = true;
      }
    }
    if (!skip) argv.push_back(a);
  }
  return argv;
}

/// `--nproc-per-node K` (and --nnodes/--node-rank/--master-*): checks the
/// configuration, then runs this program's own command line minus those
/// flags as this node's K workers (dist::launch_local: RANK, WORLD_SIZE, ...
/// in their environment), their output prefixed with "[rank i]". Exit code:
/// the first failed worker's, else 0.
int launch_train(const ConfigFlags& flags, const LaunchFlags& l) {
  check_launch_flags(l);
  const train::Config config = flags.resolve();
  if (l.nproc == 1 && l.nnodes == 1) {
    return run_train(flags);
  }
  if (std::getenv("WORLD_SIZE") != nullptr) {
    throw train::ConfigError(
        "--nproc-per-node inside a data-parallel job (WORLD_SIZE is set)");
  }
  train::check_data_parallel(config, l.nproc * l.nnodes);
  const int port = l.master_port != 0 ? l.master_port
                   : l.nnodes > 1     ? 29500
                                      : 0;
  const int first = l.node_rank * l.nproc;
  std::cout << "# launching " << l.nproc << " workers (ranks " << first << ".."
            << first + l.nproc - 1 << " of " << l.nproc * l.nnodes
            << "), rendezvous at " << l.master_addr
            << (port != 0 ? ":" + std::to_string(port) : std::string()) << "\n"
            << std::flush;
  std::vector<std::pair<std::string, std::string>> env;
  if (!l.local_addr.empty())
    env.emplace_back("LOWMEM_LOCAL_ADDR", l.local_addr);
  const auto r = dist::launch_local(worker_argv(),
                                    dist::LaunchOptions()
                                        .env(env)
                                        .nproc_per_node(l.nproc)
                                        .nnodes(l.nnodes)
                                        .node_rank(l.node_rank)
                                        .master_addr(l.master_addr)
                                        .master_port(port),
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
    "processes per node with --nproc-per-node N, over several nodes with "
    "--nnodes/--node-rank/--master-addr/--master-port)",
    [](CLI::App& sub) -> std::function<int()> {
      auto flags = std::make_shared<ConfigFlags>(sub);
      auto launch = add_launch_flags(sub);
      return [flags, launch] {
        return launch->given() ? launch_train(*flags, *launch)
                               : run_train(*flags);
      };
    }}};

int run_info(const ConfigFlags& flags, bool gemm_rate) {
  const train::Config config = flags.resolve();
  const auto report = train::info(config, gemm_rate);
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
      auto gemm_rate = std::make_shared<bool>(false);
      sub.add_flag("--gemm-rate", *gemm_rate,
                   "after the step, also time float32 and bfloat16 2048^3 "
                   "GEMMs (this machine's matmul rate, for the step's FLOPs)");
      return [flags, gemm_rate] { return run_info(*flags, *gemm_rate); };
    }}};

}  // namespace
}  // namespace lowmem::tools
