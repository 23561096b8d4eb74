// Data-parallel wiring of a train::Trainer (docs/distributed.md): replicated
// (ZeRO stage 0: every gradient all-reduced, dist::make_trainer_grad_sync)
// or sharded (stage 1/2: dist::ZeroSharding through the trainer's grad-sync,
// norm-sync and after-update hooks). No paper beyond dist/zero.h's.
#pragma once

#include <cstdint>
#include <memory>

#include "lowmem/dist/communicator.h"
#include "lowmem/dist/zero.h"
#include "lowmem/train/trainer.h"

namespace lowmem::train {

/// Makes `trainer` one rank of the data-parallel job `comm` with ZeRO stage
/// `zero_stage` (0, 1 or 2). Returns the sharding for stages 1 and 2 (null
/// for 0); throws "[dist] ..." for a stage outside 0..2. Every optimizer
/// averages what it computes outside the gradient sync over the workers
/// (OptimizerExtras::set_statistics_sync); under ZeRO each learns which
/// parameters it owns (set_ownership), and after each update the owners
/// broadcast every parameter that had a gradient or was updated outside the
/// sync (updated_outside_sync), and optimizers hear of steps taken elsewhere
/// (stepped_elsewhere). Also installs the checkpoint save hook: rank 0
/// writes (stage 0), or every rank writes its optimizer shard and rank 0
/// commits the step (stages 1 and 2, Trainer::set_optimizer_shards).
/// `zero_overlap` (stage 2): reduce during the last backward through the
/// trainer's before-backward hook (dist::ZeroOptions::overlap).
std::shared_ptr<dist::ZeroSharding> attach_data_parallel(
    Trainer& trainer, std::shared_ptr<dist::Communicator> comm,
    int64_t zero_stage, double bucket_cap_mb = 25.0, bool zero_overlap = true);

}  // namespace lowmem::train
