#include "lowmem/dist/env.h"

#include "lowmem/core/check.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <optional>

namespace lowmem::dist {
namespace {

std::optional<std::string> get_env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr) {
    return std::nullopt;
  }
  return std::string(v);
}

int parse_int(const char* name, const std::string& value) {
  LOWMEM_CHECK(
      !value.empty(), "[dist] environment variable ", name, " is empty");
  size_t pos = 0;
  long long parsed = 0;
  try {
    parsed = std::stoll(value, &pos, 10);
  } catch (const std::exception&) {
    pos = 0;
  }
  LOWMEM_CHECK(
      pos == value.size() && parsed >= -2147483647LL && parsed <= 2147483647LL,
      "[dist] environment variable ",
      name,
      " must be an integer, got '",
      value,
      "'");
  return static_cast<int>(parsed);
}

// The variables one launcher sets for its workers, and the advice its error
// messages give. torchrun's are optional (none set: one process); srun's are
// required (env_from_slurm() is chosen because SLURM_PROCID is set).
struct LauncherVariables {
  const char* rank;
  const char* world_size;
  const char* local_rank;  // defaults to the rank where unset
  bool optional;
  // After "<world_size> is set (w) but <rank> is not; " (optional launchers;
  // a required one says "<rank> is not set").
  const char* rank_missing_hint;
  // After "<rank> is set (r) but <world_size> is not; ".
  const char* world_missing_hint;
};

constexpr LauncherVariables kTorchrun{
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    /*optional=*/true,
    "set both (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, "
    "MASTER_PORT)",
    "set both"};

constexpr LauncherVariables kSlurm{"SLURM_PROCID",
                                   "SLURM_NTASKS",
                                   "SLURM_LOCALID",
                                   /*optional=*/false,
                                   "",
                                   "run the workers with srun"};

// Reads one launcher's rank, world size and local rank, then read_master().
DistEnv read_launcher(const LauncherVariables& v) {
  DistEnv env;
  const auto rank = get_env(v.rank);
  const auto world = get_env(v.world_size);
  if (v.optional && !rank && !world) {
    return env;  // single process: no rendezvous needed
  }
  LOWMEM_CHECK(rank.has_value() || v.optional, "[dist] ", v.rank,
               " is not set");
  LOWMEM_CHECK(rank.has_value(), "[dist] ", v.world_size, " is set (", *world,
               ") but ", v.rank, " is not; ", v.rank_missing_hint);
  LOWMEM_CHECK(world.has_value(), "[dist] ", v.rank, " is set (", *rank,
               ") but ", v.world_size, " is not; ", v.world_missing_hint);
  env.rank = parse_int(v.rank, *rank);
  env.world_size = parse_int(v.world_size, *world);
  const auto local = get_env(v.local_rank);
  env.local_rank = local ? parse_int(v.local_rank, *local) : env.rank;
  read_master(env);
  return env;
}

}  // namespace

void validate(const DistEnv& env) {
  LOWMEM_CHECK(
      env.world_size >= 1, "[dist] WORLD_SIZE must be >= 1, got ", env.world_size);
  LOWMEM_CHECK(
      env.rank >= 0 && env.rank < env.world_size,
      "[dist] RANK must be in [0, WORLD_SIZE=",
      env.world_size,
      "), got ",
      env.rank);
  LOWMEM_CHECK(
      env.local_rank >= 0 && env.local_rank <= env.rank,
      "[dist] LOCAL_RANK must be in [0, RANK=",
      env.rank,
      "], got ",
      env.local_rank);
  LOWMEM_CHECK(
      env.master_port >= 1 && env.master_port <= 65535,
      "[dist] MASTER_PORT must be in [1, 65535], got ",
      env.master_port);
  LOWMEM_CHECK(!env.master_addr.empty(), "[dist] MASTER_ADDR is empty");
}

DistEnv env_from_environment() {
  if (!get_env("RANK") && !get_env("WORLD_SIZE") && get_env("SLURM_PROCID")) {
    return env_from_slurm();
  }
  return read_launcher(kTorchrun);
}

DistEnv env_from_slurm() { return read_launcher(kSlurm); }

void read_master(DistEnv& env) {
  const auto addr = get_env("MASTER_ADDR");
  const auto port = get_env("MASTER_PORT");
  if (env.world_size > 1) {
    LOWMEM_CHECK(
        addr.has_value(),
        "[dist] MASTER_ADDR is not set (WORLD_SIZE=",
        env.world_size,
        "); set it to rank 0's host, e.g. 127.0.0.1");
    LOWMEM_CHECK(
        port.has_value(),
        "[dist] MASTER_PORT is not set (WORLD_SIZE=",
        env.world_size,
        "); set it to a free TCP port on rank 0's host, e.g. 29500");
  }
  if (addr) {
    env.master_addr = *addr;
  }
  if (port) {
    env.master_port = parse_int("MASTER_PORT", *port);
  }
  validate(env);
}

int find_free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  LOWMEM_CHECK(fd >= 0, "[dist] socket() failed: ", std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  const bool ok =
      ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  const int err = errno;
  ::close(fd);
  LOWMEM_CHECK(ok, "[dist] could not find a free port: ", std::strerror(err));
  return ntohs(addr.sin_port);
}

}  // namespace lowmem::dist
