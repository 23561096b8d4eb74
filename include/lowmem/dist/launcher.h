// Starts this node's K worker processes the way torchrun --nnodes N
// --node-rank R --nproc-per-node K does with a static rendezvous: each
// worker's environment has RANK = R*K + local rank, WORLD_SIZE = N*K,
// LOCAL_RANK, LOCAL_WORLD_SIZE = K, GROUP_RANK = R, GROUP_WORLD_SIZE = N,
// ROLE_RANK, ROLE_WORLD_SIZE, ROLE_NAME=default, MASTER_ADDR, MASTER_PORT,
// TORCHELASTIC_RESTART_COUNT=0, TORCHELASTIC_MAX_RESTARTS=0,
// TORCHELASTIC_RUN_ID=none (torch/distributed/elastic/agent/server/
// local_elastic_agent.py); OMP_NUM_THREADS=1 for K > 1 unless set. Output is
// forwarded line by line with the global rank. No paper. No elastic
// membership: every node must start, and a failure ends the job.
#pragma once

#include <torch/arg.h>

#include <functional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

namespace lowmem::dist {

struct LaunchOptions {
  /// Number of workers on this node (torchrun --nproc-per-node).
  TORCH_ARG(int, nproc_per_node) = 1;
  /// Number of nodes (torchrun --nnodes) and this node's index in [0, nnodes)
  /// (torchrun --node-rank).
  TORCH_ARG(int, nnodes) = 1;
  TORCH_ARG(int, node_rank) = 0;
  /// Rank 0's host: node 0 serves the TCP store there, the others connect.
  TORCH_ARG(std::string, master_addr) = "127.0.0.1";
  /// 0 picks a free port (one node only; with nnodes > 1 every node must be
  /// told the same port).
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
  /// Global rank of the first worker that failed, -1 if none.
  int first_failed_rank = -1;
  /// Per local rank: the exit status as above.
  std::vector<int> exit_codes;
};

/// Runs argv (argv[0] is the program; a path, or a name searched in PATH) as
/// this node's nproc_per_node workers and waits for all of them. Output goes
/// to `sink` with each worker's global rank (from the calling thread). Throws
/// "[dist] ..." naming the bad value if nproc_per_node < 1, nnodes < 1,
/// node_rank is outside [0, nnodes), master_port is outside [0, 65535] or 0
/// with nnodes > 1, master_addr is empty, or a worker cannot start.
LaunchResult launch_local(
    const std::vector<std::string>& argv,
    const LaunchOptions& options,
    const OutputSink& sink);

/// A sink that writes "[rank N] line" to `out` (stdout and stderr alike).
OutputSink prefixed_stream_sink(std::ostream& out);

/// The running program's path (/proc/self/exe), for re-launching itself.
std::string self_executable();

}  // namespace lowmem::dist
