// Cross-rank invariants of data-parallel training: every rank must hold
// bit-identical weights and optimizer state (checked by fingerprints), and
// only rank 0 writes files. No paper; DDP has no periodic check.
#pragma once

#include "lowmem/dist/communicator.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace torch::optim {
class Optimizer;
}

namespace lowmem::dist {

/// A 64-bit hash of the tensor's dtype, shape and raw bytes (copied to the CPU
/// if needed). Bit-identical tensors give equal fingerprints.
int64_t fingerprint(const at::Tensor& tensor);

/// Allgathers the fingerprints of `tensors` and throws
/// "[dist] ranks disagree on <what>: tensor i differs between rank 0 and rank
/// r ..." if any rank differs. All ranks must call it with the same count.
/// ordered=false compares the tensors as a multiset (for lists whose order
/// is not reproducible across processes).
void check_identical(
    Communicator& comm,
    const std::vector<at::Tensor>& tensors,
    const std::string& what,
    bool ordered = true);

/// check_identical on the parameters ("weights") and on
/// lowmem::optim::state_tensors(optimizer) ("optimizer state"), if given.
void check_identical(
    Communicator& comm,
    const std::vector<at::Tensor>& params,
    const torch::optim::Optimizer* optimizer);

/// Runs `fn` on rank 0 only (e.g. writing a checkpoint), then every rank learns
/// whether it succeeded: rank 0 rethrows its own error, the others throw
/// "[dist] rank 0 failed to <what>". Acts as a barrier.
void run_on_main(
    Communicator& comm,
    const std::function<void()>& fn,
    const std::string& what);

/// Runs `fn` on every rank, then every rank learns whether all succeeded:
/// a rank rethrows its own error, the others throw "[dist] rank r failed to
/// <what>" naming the lowest failed rank. Acts as a barrier.
void run_on_every_rank(Communicator& comm, const std::function<void()>& fn,
                       const std::string& what);

}  // namespace lowmem::dist
