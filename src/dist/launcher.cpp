#include "lowmem/dist/launcher.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>

#include "lowmem/core/check.h"
#include "lowmem/dist/env.h"

namespace lowmem::dist {
namespace {

using Clock = std::chrono::steady_clock;

struct Stream {
  int fd = -1;
  int rank = 0;
  bool is_stderr = false;
  std::string pending;
};

struct Worker {
  pid_t pid = -1;
  bool running = true;
  int status = 0;
};

int decode_status(int wstatus) {
  if (WIFEXITED(wstatus)) {
    return WEXITSTATUS(wstatus);
  }
  if (WIFSIGNALED(wstatus)) {
    return 128 + WTERMSIG(wstatus);
  }
  return 1;
}

void flush_lines(Stream& s, const OutputSink& sink, bool final) {
  size_t start = 0;
  for (;;) {
    const size_t nl = s.pending.find('\n', start);
    if (nl == std::string::npos) {
      break;
    }
    if (sink) {
      sink(s.rank, s.is_stderr, s.pending.substr(start, nl - start));
    }
    start = nl + 1;
  }
  s.pending.erase(0, start);
  if (final && !s.pending.empty()) {
    if (sink) {
      sink(s.rank, s.is_stderr, s.pending);
    }
    s.pending.clear();
  }
}

}  // namespace

std::string self_executable() {
  char buf[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  LOWMEM_CHECK(n > 0,
               "[dist] cannot read /proc/self/exe: ", std::strerror(errno));
  return std::string(buf, static_cast<size_t>(n));
}

OutputSink prefixed_stream_sink(std::ostream& out) {
  return [&out](int rank, bool, const std::string& line) {
    out << "[rank " << rank << "] " << line << '\n';
    out.flush();
  };
}

namespace {

/// Local rank r's environment: the parent's, with the torchrun variables and
/// the options' env overriding entries of the same name.
std::vector<std::string> worker_env(int r, int n, int port,
                                    const LaunchOptions& options) {
  const std::string rank = std::to_string(options.node_rank() * n + r);
  const std::string world = std::to_string(options.nnodes() * n);
  std::vector<std::pair<std::string, std::string>> set = {
      {"RANK", rank},
      {"WORLD_SIZE", world},
      {"LOCAL_RANK", std::to_string(r)},
      {"LOCAL_WORLD_SIZE", std::to_string(n)},
      {"GROUP_RANK", std::to_string(options.node_rank())},
      {"GROUP_WORLD_SIZE", std::to_string(options.nnodes())},
      {"ROLE_RANK", rank},
      {"ROLE_WORLD_SIZE", world},
      {"ROLE_NAME", "default"},
      {"MASTER_ADDR", options.master_addr()},
      {"MASTER_PORT", std::to_string(port)},
      {"TORCHELASTIC_RESTART_COUNT", "0"},
      {"TORCHELASTIC_MAX_RESTARTS", "0"},
      {"TORCHELASTIC_RUN_ID", "none"},
  };
  if (n > 1 && std::getenv("OMP_NUM_THREADS") == nullptr) {
    set.emplace_back("OMP_NUM_THREADS", "1");  // as torchrun
  }
  for (const auto& kv : options.env()) {
    set.push_back(kv);
  }
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry(*e);
    const std::string name = entry.substr(0, entry.find('='));
    bool overridden = false;
    for (const auto& kv : set) {
      overridden = overridden || kv.first == name;
    }
    if (!overridden) {
      env.push_back(entry);
    }
  }
  for (const auto& kv : set) {
    env.push_back(kv.first + "=" + kv.second);
  }
  return env;
}

/// Forks one worker per prepared environment, its stdout/stderr on pipes.
/// Everything the child needs is prepared before fork(): after fork in a
/// multithreaded parent only async-signal-safe calls are allowed.
void spawn_workers(std::vector<char*>& cargv,
                   std::vector<std::vector<char*>>& cenvs, int first_rank,
                   std::vector<Worker>& workers, std::vector<Stream>& streams) {
  for (size_t r = 0; r < cenvs.size(); ++r) {
    int out[2];
    int err[2];
    LOWMEM_CHECK(::pipe2(out, O_CLOEXEC) == 0 && ::pipe2(err, O_CLOEXEC) == 0,
                 "[dist] pipe failed: ", std::strerror(errno));
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    LOWMEM_CHECK(pid >= 0, "[dist] fork failed: ", std::strerror(errno));
    if (pid == 0) {
      // Die with the launcher, so no orphaned worker keeps a port.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) {
        ::_exit(126);
      }
      ::dup2(out[1], STDOUT_FILENO);
      ::dup2(err[1], STDERR_FILENO);
      ::execvpe(cargv[0], cargv.data(), cenvs[r].data());
      const char msg[] = "lowmem launcher: exec failed\n";
      (void)!::write(STDERR_FILENO, msg, sizeof(msg) - 1);
      ::_exit(127);
    }
    ::close(out[1]);
    ::close(err[1]);
    workers[r].pid = pid;
    const int rank = first_rank + static_cast<int>(r);
    streams.push_back({out[0], rank, false, {}});
    streams.push_back({err[0], rank, true, {}});
  }
}

/// Reads whatever the open streams hold (waiting up to 100 ms) and hands
/// complete lines to the sink; returns poll's result.
int pump_streams(std::vector<Stream>& streams, size_t& open_streams,
                 const OutputSink& sink) {
  char buf[4096];
  std::vector<pollfd> fds;
  std::vector<size_t> idx;
  for (size_t i = 0; i < streams.size(); ++i) {
    if (streams[i].fd >= 0) {
      fds.push_back({streams[i].fd, POLLIN, 0});
      idx.push_back(i);
    }
  }
  const int ready = ::poll(fds.data(), static_cast<nfds_t>(fds.size()), 100);
  if (ready <= 0) return ready;
  for (size_t k = 0; k < fds.size(); ++k) {
    if ((fds[k].revents & (POLLIN | POLLHUP | POLLERR)) == 0) {
      continue;
    }
    Stream& s = streams[idx[k]];
    const ssize_t got = ::read(s.fd, buf, sizeof(buf));
    if (got > 0) {
      s.pending.append(buf, static_cast<size_t>(got));
      flush_lines(s, sink, false);
    } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
      flush_lines(s, sink, true);
      ::close(s.fd);
      s.fd = -1;
      --open_streams;
    }
  }
  return ready;
}

/// The supervision state of a launch: the first failure and the SIGTERM /
/// SIGKILL deadlines of the others that follow it.
struct Supervisor {
  const LaunchOptions& options;
  LaunchResult& result;
  bool failed = false;
  Clock::time_point term_at{};
  Clock::time_point kill_at{};
  bool termed = false;
  bool killed = false;

  /// Reaps exited workers; returns how many are still running. Of several
  /// failures seen in one pass (100 ms), one killed by a signal counts as the
  /// first: the others most likely failed because their peer vanished.
  int reap(std::vector<Worker>& workers, int running) {
    int first = -1;
    for (size_t r = 0; r < workers.size(); ++r) {
      if (!workers[r].running) {
        continue;
      }
      int wstatus = 0;
      const pid_t w = ::waitpid(workers[r].pid, &wstatus, WNOHANG);
      if (w != workers[r].pid) continue;
      workers[r].running = false;
      --running;
      const int code = decode_status(wstatus);
      result.exit_codes[r] = code;
      const bool signaled = WIFSIGNALED(wstatus);
      if (code != 0 &&
          (first < 0 || (signaled && result.exit_codes[first] < 128))) {
        first = static_cast<int>(r);
      }
    }
    if (first >= 0 && !failed) {
      record_failure(first);
    }
    return running;
  }

  void record_failure(int local_rank) {
    failed = true;
    result.exit_code = result.exit_codes[local_rank];
    result.first_failed_rank =
        options.node_rank() * options.nproc_per_node() + local_rank;
    if (options.kill_grace_s() >= 0) {
      term_at = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(
                                   options.kill_grace_s() * 1000));
      kill_at = term_at + std::chrono::seconds(5);
    }
  }

  /// After a failure: SIGTERM the others at term_at, SIGKILL at kill_at.
  void stop_others(const std::vector<Worker>& workers, int running) {
    if (!failed || options.kill_grace_s() < 0 || running == 0) return;
    const auto now = Clock::now();
    auto signal_all = [&workers](int sig) {
      for (const auto& w : workers) {
        if (w.running) ::kill(w.pid, sig);
      }
    };
    if (!termed && now >= term_at) {
      termed = true;
      signal_all(SIGTERM);
    }
    if (!killed && now >= kill_at) {
      killed = true;
      signal_all(SIGKILL);
    }
  }
};

void check_launch_options(const LaunchOptions& o) {
  LOWMEM_CHECK(o.nproc_per_node() >= 1,
               "[dist] nproc_per_node must be >= 1, got ", o.nproc_per_node());
  LOWMEM_CHECK(o.nnodes() >= 1, "[dist] nnodes must be >= 1, got ", o.nnodes());
  LOWMEM_CHECK(o.node_rank() >= 0 && o.node_rank() < o.nnodes(),
               "[dist] node_rank must be in [0, nnodes=", o.nnodes(), "), got ",
               o.node_rank());
  LOWMEM_CHECK(o.master_port() >= 0 && o.master_port() <= 65535,
               "[dist] master_port must be in [0, 65535], got ",
               o.master_port());
  LOWMEM_CHECK(o.nnodes() == 1 || o.master_port() != 0,
               "[dist] master_port 0 (pick a free port) works on one node "
               "only; with nnodes=",
               o.nnodes(), " every node needs the same port, e.g. 29500");
  LOWMEM_CHECK(!o.master_addr().empty(), "[dist] master_addr is empty");
}

}  // namespace

LaunchResult launch_local(const std::vector<std::string>& argv,
                          const LaunchOptions& options,
                          const OutputSink& sink) {
  LOWMEM_CHECK(!argv.empty(), "[dist] launch_local needs a program to run");
  check_launch_options(options);
  const int n = options.nproc_per_node();
  const int port =
      options.master_port() == 0 ? find_free_port() : options.master_port();

  std::vector<char*> cargv;
  std::vector<std::string> argv_copy = argv;
  for (auto& a : argv_copy) {
    cargv.push_back(a.data());
  }
  cargv.push_back(nullptr);
  std::vector<std::vector<std::string>> envs(n);
  std::vector<std::vector<char*>> cenvs(n);
  for (int r = 0; r < n; ++r) {
    envs[r] = worker_env(r, n, port, options);
    for (auto& e : envs[r]) {
      cenvs[r].push_back(e.data());
    }
    cenvs[r].push_back(nullptr);
  }

  std::vector<Worker> workers(n);
  std::vector<Stream> streams;
  spawn_workers(cargv, cenvs, options.node_rank() * n, workers, streams);

  LaunchResult result;
  result.exit_codes.assign(n, 0);
  Supervisor supervisor{options, result};
  int running = n;
  size_t open_streams = streams.size();
  while (running > 0 || open_streams > 0) {
    const int ready = pump_streams(streams, open_streams, sink);
    running = supervisor.reap(workers, running);
    supervisor.stop_others(workers, running);
    if (running == 0 && ready <= 0) {
      // All exited; grandchildren may still hold the pipes open. Drain what
      // is there and stop.
      for (auto& s : streams) {
        if (s.fd >= 0) {
          flush_lines(s, sink, true);
          ::close(s.fd);
          s.fd = -1;
        }
      }
      open_streams = 0;
    }
  }
  return result;
}

}  // namespace lowmem::dist
