// Rendezvous settings read the way torchrun sets them: RANK, WORLD_SIZE,
// LOCAL_RANK, MASTER_ADDR, MASTER_PORT (PyTorch's env:// init method, see
// torch/distributed/rendezvous.py). No paper; no deviation except that an
// environment without any of these variables means "one process, no peers".
#pragma once

#include <cstdint>
#include <string>

namespace lowmem::dist {

/// Where this process sits in the job and where rank 0's TCPStore listens.
struct DistEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;  // torchrun's default (TCPStoreOptions::kDefaultPort)

  /// True when there are peers to talk to (world_size > 1).
  bool distributed() const {
    return world_size > 1;
  }
};

/// Reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT. If neither
/// RANK nor WORLD_SIZE is set but SLURM_PROCID is (a task started by srun),
/// returns env_from_slurm(). If none of these is set, returns the
/// single-process default. If either RANK or WORLD_SIZE is set, both must be,
/// together with MASTER_ADDR and MASTER_PORT when WORLD_SIZE > 1; LOCAL_RANK
/// defaults to RANK. Throws "[dist] ..." naming the variable and its bad value
/// (not an integer, rank outside [0, world_size), port outside [1, 65535]).
DistEnv env_from_environment();

/// Slurm's spelling of the same: SLURM_PROCID as RANK, SLURM_NTASKS as
/// WORLD_SIZE, SLURM_LOCALID as LOCAL_RANK (default SLURM_PROCID). Slurm does
/// not say where rank 0 listens, so MASTER_ADDR and MASTER_PORT are read (and
/// required when SLURM_NTASKS > 1) as above; docs/distributed.md shows how a
/// batch script sets them.
DistEnv env_from_slurm();

/// Reads MASTER_ADDR and MASTER_PORT into `env` (required when
/// env.world_size > 1), then validate(env).
void read_master(DistEnv& env);

/// Checks the invariants env_from_environment() checks, for hand-built values.
void validate(const DistEnv& env);

/// A TCP port that was free on 127.0.0.1 a moment ago (bind to port 0, read
/// the port, close). Tests and the local launcher use it.
int find_free_port();

}  // namespace lowmem::dist
