// Starts N local worker processes the way torchrun --nproc-per-node does
// (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT
// in each worker's environment; OMP_NUM_THREADS=1 for N > 1 unless set) and
// forwards their output line by line with the rank. No paper. Single node.
#pragma once

#include <torch/arg.h>

#include <functional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

namespace lowmem::dist {

struct LaunchOptions {
  /// Number of workers (torchrun --nproc-per-node).
  TORCH_ARG(int, nproc_per_node) = 1;
  TORCH_ARG(std::string, master_addr) = "127.0.0.1";
  /// 0 picks a free port.
  TORCH_ARG(int, master_port) = 0;
  /// After the first worker fails, the others get this many seconds to stop
  /// on their own (their collectives fail within the process-group timeout),
  /// then SIGTERM, then SIGKILL 5 s later. torchrun stops them at once; lowmem
  /// waits so each worker can report its own error. < 0: never kill.
  TORCH_ARG(double, kill_grace_s) = 30.0;
  /// Extra environment variables ("NAME", "value") for every worker.
  using EnvList = std::vector<std::pair<std::string, std::string>>;
  TORCH_ARG(EnvList, env) = {};
};

/// One line of a worker's output (without the newline).
using OutputSink =
    std::function<void(int rank, bool is_stderr, const std::string& line)>;

struct LaunchResult {
  /// 0 if every worker exited with 0, else the first failure's status
  /// (exit code, or 128 + signal number for a worker killed by a signal).
  int exit_code = 0;
  /// Rank of the first worker that failed, -1 if none.
  int first_failed_rank = -1;
  /// Per rank: the exit status as above.
  std::vector<int> exit_codes;
};

/// Runs argv (argv[0] is the program; a path, or a name searched in PATH) as
/// nproc_per_node workers and waits for all of them. Output goes to `sink`
/// (from the calling thread). Throws "[dist] ..." if a worker cannot start.
LaunchResult launch_local(
    const std::vector<std::string>& argv,
    const LaunchOptions& options,
    const OutputSink& sink);

/// A sink that writes "[rank N] line" to `out` (stdout and stderr alike).
OutputSink prefixed_stream_sink(std::ostream& out);

/// The running program's path (/proc/self/exe), for re-launching itself.
std::string self_executable();

}  // namespace lowmem::dist
