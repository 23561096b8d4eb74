// The training loop: gradient accumulation, data-parallel gradient sync hook,
// non-finite handling (skip and count, as torch.cuda.amp.GradScaler; stop
// after N consecutive skips), global-norm clipping (torch's
// clip_grad_norm_ formula), warmup + cosine schedule, periodic evaluation,
// checkpoints (io/checkpoint.h). Several optimizers may each own a subset of
// the parameters (routing.h). The library never prints: progress goes to a
// callback.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "lowmem/data/batch.h"
#include "lowmem/train/schedule.h"

namespace torch::nn {
class Module;
}
namespace torch::optim {
class Optimizer;
}

namespace lowmem::train {

struct TrainerOptions {
  int64_t max_steps = 1000;        // optimizer updates (attempted) in total
  int64_t accum_steps = 1;         // micro-batches per update
  double clip_norm = 1.0;          // global L2 norm; <= 0 disables clipping
  int64_t warmup_steps = 0;        // schedule.h
  double min_lr_ratio = 0.1;       // schedule.h; groups whose lr is 0 at
                                   // construction (Adafactor's relative
                                   // step) are left unscheduled
  int64_t eval_every = 0;          // 0: only at the end (if an eval source)
  int64_t eval_batches = 8;        // batches per evaluation
  int64_t max_consecutive_skips = 10;  // non-finite steps in a row -> error
  int64_t log_every = 1;           // step events every N updates
  int64_t save_every = 0;          // checkpoint every N updates (0: end only)
  int64_t keep_checkpoints = 2;    // older step-* directories are removed
  std::string checkpoint_dir;      // "" disables checkpoints
};

/// Range checks; throws c10::Error naming the field.
void validate(const TrainerOptions& o);

/// Mean loss of one micro-batch (a 0-dim tensor that requires grad).
using LossFn = std::function<at::Tensor(const data::Batch&)>;

/// Data-parallel hook: called once per update, after all micro-batches'
/// backward passes and before the non-finite check and clipping, with the
/// gradients of every trainable parameter (in optimizer order; undefined
/// gradients are left out). It must reduce them in place (e.g. all-reduce
/// mean across ranks).
using GradSync = std::function<void(std::vector<at::Tensor>& grads)>;

/// Sharded data-parallel hook (ZeRO, dist/zero.h): a GradSync that dropped
/// the gradients this rank does not update leaves only its own in the list;
/// this hook then receives their per-tensor L2 norms (in list order) and
/// returns the per-tensor norms of every gradient of the update in parameter
/// order, so the global norm (clipping, the non-finite check) is the
/// replicated run's.
using NormSync =
    std::function<std::vector<at::Tensor>(const std::vector<at::Tensor>&)>;

/// Called before each micro-batch's backward with whether it is the update's
/// last one (its backward completes the gradients), e.g. for ZeRO-2 to
/// reduce gradients from hooks during that backward (dist/zero.h).
using BeforeBackward = std::function<void(bool last_micro_batch)>;

/// Called after the optimizers stepped (not on a skipped update) and before
/// the after-update probe, e.g. ZeRO's broadcast of the updated parameters.
using AfterUpdate = std::function<void()>;

/// Runs `write` (which saves a checkpoint), e.g. on one rank only with a
/// barrier (data-parallel training: dist::run_on_main). Ranks that do not run
/// it report the checkpoint event with an empty path.
using SaveHook = std::function<void(const std::function<void()>& write)>;

/// ZeRO (train/data_parallel.h): which worker updates, and keeps optimizer
/// state for, each parameter of Trainer::parameters().
struct OptimizerShards {
  int rank = 0;
  int world_size = 1;
  std::vector<int> owners;  // per parameter, in Trainer::parameters() order
};

/// One optimizer and the names of the parameters it owns (for logs and
/// checkpoints).
struct OptimizerSlot {
  std::string name;  // "adamw", "galore", ...
  std::shared_ptr<torch::optim::Optimizer> optimizer;
  std::vector<std::string> param_names;
};

/// What the callback receives.
struct Progress {
  enum class Kind { kStep, kSkip, kEval, kCheckpoint, kDone };
  Kind kind = Kind::kStep;
  int64_t step = 0;            // updates attempted so far
  int64_t max_steps = 0;
  double loss = 0.0;           // kStep/kSkip: mean micro-batch loss
  double grad_norm = 0.0;      // before clipping
  double lr = 0.0;             // first optimizer's first group
  double items_per_second = 0.0;  // targets (tokens or samples) per second
  int64_t items = 0;           // targets seen so far
  double eval_loss = 0.0;      // kEval/kDone (NaN when never evaluated)
  int64_t skipped = 0;         // non-finite updates so far
  // Tensor bytes on the training device (tensor_memory): CPU: the tracking
  // allocator (0 if not installed); CUDA: the caching allocator's allocated
  // bytes (host memory is not in them).
  int64_t live_bytes = 0;
  int64_t peak_bytes = 0;
  std::string path;            // kCheckpoint: the directory written
};
using ProgressFn = std::function<void(const Progress&)>;

/// Result of one update.
struct StepResult {
  double loss = 0.0;
  double grad_norm = 0.0;
  bool skipped = false;
  int64_t items = 0;
};

/// Live and peak tensor bytes on `device`: the tracking CPU allocator
/// (MemoryTracker, when installed) for the CPU, the CUDA caching allocator's
/// allocated bytes for a CUDA device in CUDA builds; {0, 0} where nothing is
/// measured.
struct TensorMemory {
  int64_t live = 0;
  int64_t peak = 0;
};
TensorMemory tensor_memory(c10::Device device);

/// Where a step probe runs inside Trainer::step: after every micro-batch's
/// backward pass and the gradient sync (gradients complete, nothing updated
/// yet), and after the optimizer steps (gradients still alive; not on a
/// skipped update).
enum class ProbePoint { kAfterBackward, kAfterUpdate };
/// Called at both points of every update (memory measurements, e.g. lowmem
/// compare's breakdown by role and `lowmem info`).
using StepProbe = std::function<void(ProbePoint)>;

/// Distinct-storage bytes of a model and its optimizers by role.
struct MemoryBreakdown {
  int64_t frozen_weights = 0;     // parameters without requires_grad and
                                  // NF4 base storage (nn::Nf4Linear)
  int64_t trainable_weights = 0;  // parameters with requires_grad
  int64_t gradients = 0;          // defined .grad of the parameters
  int64_t optimizer_state = 0;    // optim::state_tensors of every optimizer
};
MemoryBreakdown memory_breakdown(torch::nn::Module& model,
                                 const std::vector<OptimizerSlot>& optimizers);

class Trainer {
 public:
  /// `model` provides parameters and buffers (checkpoints) and train/eval
  /// mode; `loss` runs the forward pass (and moves the batch to the model's
  /// device). The training device is the first parameter's.
  Trainer(
      std::shared_ptr<torch::nn::Module> model,
      LossFn loss,
      std::vector<OptimizerSlot> optimizers,
      TrainerOptions options);
  ~Trainer();

  void set_progress(ProgressFn fn) { progress_ = std::move(fn); }
  void set_grad_sync(GradSync fn) { grad_sync_ = std::move(fn); }
  void set_norm_sync(NormSync fn) { norm_sync_ = std::move(fn); }
  void set_after_update(AfterUpdate fn) { after_update_ = std::move(fn); }
  void set_before_backward(BeforeBackward fn) {
    before_backward_ = std::move(fn);
  }
  /// Wraps every checkpoint write of fit() (default: write directly).
  void set_save_hook(SaveHook fn) { save_hook_ = std::move(fn); }
  /// Runs `fn` at the probe points of every update (see ProbePoint).
  void set_step_probe(StepProbe fn) { probe_ = std::move(fn); }
  /// Shards the optimizer state (ZeRO): checkpoints then store one optimizer
  /// file per worker (each rank calls save_optimizer_shard before rank 0's
  /// save_checkpoint commits the step), and load_checkpoint keeps only this
  /// rank's parameters' state, from a checkpoint of any world size, sharded
  /// or not. Throws if `shards` does not cover parameters().
  void set_optimizer_shards(OptimizerShards shards);
  const OptimizerShards* optimizer_shards() const {
    return shards_.world_size > 0 && !shards_.owners.empty() ? &shards_
                                                             : nullptr;
  }
  /// Stored verbatim in every checkpoint (e.g. the resolved YAML config).
  void set_checkpoint_info(std::string text) { info_ = std::move(text); }

  /// One update: accum_steps micro-batches from `source`, sync, non-finite
  /// check, clipping, schedule, optimizer steps. Throws after
  /// max_consecutive_skips non-finite updates in a row.
  StepResult step(data::BatchSource& source);
  /// Mean loss over `batches` batches of `source`, read from its start
  /// (seek(0)), in eval mode without gradients.
  double evaluate(data::BatchSource& source, int64_t batches);
  /// Runs until max_steps with evaluations and checkpoints; returns the last
  /// evaluation loss (NaN without an eval source).
  double fit(data::BatchSource& train, data::BatchSource* eval);

  /// Writes a checkpoint of the whole training state into
  /// checkpoint_dir/step-<step> (atomic); returns its path.
  std::string save_checkpoint(const data::BatchSource& train);
  /// Sharded checkpoints (set_optimizer_shards): writes this rank's file of
  /// every optimizer into io::sharded_staging_dir(checkpoint_dir, step), which
  /// must exist (io::prepare_sharded_staging on one rank first).
  void save_optimizer_shard();
  /// Restores model, optimizers, counters, RNG and data position from a
  /// checkpoint directory (a step-* directory or a root holding LATEST).
  void load_checkpoint(const std::string& path, data::BatchSource& train);

  int64_t steps_done() const { return step_; }
  int64_t skipped_total() const { return skipped_total_; }
  int64_t consecutive_skips() const { return consecutive_skips_; }
  int64_t items_seen() const { return items_total_; }
  const TrainerOptions& options() const { return options_; }
  const std::vector<OptimizerSlot>& optimizers() const { return slots_; }
  /// Every trainable parameter, in optimizer order.
  const std::vector<at::Tensor>& parameters() const { return params_; }
  torch::nn::Module& model() { return *model_; }
  c10::Device device() const { return device_; }

 private:
  void apply_schedule();
  void emit(const Progress& p) const;
  /// An event of `kind` with the counters, last evaluation and memory.
  Progress event(Progress::Kind kind) const;
  /// The micro-batches' forward and backward passes (loss, items).
  StepResult accumulate(data::BatchSource& source);
  /// Clipping, the optimizer steps and the after-update probe.
  void update(std::vector<at::Tensor>& grads, double total_norm);
  /// The step's Progress event, every log_every updates.
  void report(const StepResult& r, double seconds);

  std::shared_ptr<torch::nn::Module> model_;
  LossFn loss_;
  std::vector<OptimizerSlot> slots_;
  TrainerOptions options_;
  ScheduleOptions schedule_;
  std::vector<std::vector<double>> base_lrs_;  // [optimizer][group]
  std::vector<at::Tensor> params_;
  c10::Device device_ = c10::Device(c10::kCPU);
  ProgressFn progress_;
  GradSync grad_sync_;
  NormSync norm_sync_;
  AfterUpdate after_update_;
  BeforeBackward before_backward_;
  SaveHook save_hook_;
  StepProbe probe_;
  std::string info_;
  OptimizerShards shards_{0, 0, {}};
  int64_t step_ = 0;
  int64_t skipped_total_ = 0;
  int64_t consecutive_skips_ = 0;
  int64_t items_total_ = 0;
  double last_eval_ = 0.0;
};

}  // namespace lowmem::train
