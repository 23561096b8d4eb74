// Versioned, crash-safe training checkpoints: one directory per save,
// root/step-<8 digits>/ holding weights (safetensors), one safetensors file
// per optimizer (no pickle reader runs on load), the CPU RNG state and a
// manifest.json written last.
// A save builds the directory under a temporary name, fsyncs every file,
// renames it into place and only then repoints root/LATEST (temp + fsync +
// rename), so a crash at any point leaves the previous checkpoint loadable.
// Format: docs/checkpoint-format.md.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace torch::optim {
class Optimizer;
}

namespace lowmem::io {

/// 2: optimizer state as safetensors + JSON (1: LibTorch pickle archives,
/// no longer read).
inline constexpr int64_t kCheckpointFormatVersion = 2;

/// What a checkpoint holds. Save reads it; load writes into it in place.
struct CheckpointState {
  /// Model (or adapter) tensors by name -> weights.safetensors. On load each
  /// must be present with the same shape and dtype; values are copied in.
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  /// Optimizers by unique name -> optimizer-<i>.safetensors (the tensors of
  /// what Optimizer::save writes; its other values as JSON in the metadata).
  std::vector<std::pair<std::string, torch::optim::Optimizer*>> optimizers;
  /// Integer counters (step, data position, skip counts, ...) -> manifest.
  std::map<std::string, int64_t> counters;
  /// Free text stored as info.txt (the resolved configuration).
  std::string info;
  /// Save and restore the default CPU generator's state.
  bool cpu_rng = true;

  /// Sharded optimizer state (ZeRO, train/data_parallel.h). Save: when
  /// shard_world_size > 0, each optimizer is stored as one file per worker,
  /// optimizer-<i>.shard-<r>.safetensors, which the workers wrote into
  /// sharded_staging_dir(root, step) beforehand (save_optimizer_shard);
  /// save_checkpoint then writes no optimizer file itself, requires all of
  /// them, lists them in the manifest with `shard_owners` (the worker that
  /// updates each parameter, in the trainer's parameter order) and commits
  /// the step as usual (manifest last, then the rename and LATEST).
  int64_t shard_world_size = 0;
  std::vector<int64_t> shard_owners;
  /// Load of a sharded checkpoint: the shards read into the optimizers, in
  /// this order (unset: all of them). Each optimizer's load() sees one shard
  /// at a time; torch::optim and lowmem optimizers leave the state of
  /// parameters a shard does not hold as it is, so the shards add up.
  std::optional<std::vector<int64_t>> load_shards;
  /// Called after every loaded shard (and once after an unsharded
  /// checkpoint's optimizers), e.g. to drop state this worker does not keep.
  std::function<void()> after_shard;
};

/// How a checkpoint stores its optimizers (read from its manifest).
struct CheckpointLayout {
  std::string dir;               // resolve_checkpoint(path)
  int64_t shard_world_size = 0;  // 0: unsharded
  std::vector<int64_t> shard_owners;
};
CheckpointLayout read_checkpoint_layout(const std::string& path);

/// The staging directory of a sharded save of `step` under `root`.
std::string sharded_staging_dir(const std::string& root, int64_t step);
/// Creates sharded_staging_dir(root, step) empty (and `root` if needed),
/// removing a stale one of an interrupted save. Called on one worker before
/// any writes its shard.
std::string prepare_sharded_staging(const std::string& root, int64_t step);
/// Writes worker `rank`'s shard of optimizer `index` into `staging` (fsynced).
void save_optimizer_shard(const std::string& staging, size_t index,
                          int64_t rank, torch::optim::Optimizer& optimizer);

/// Writes `state` as root/step-<step> (creating root) and points root/LATEST
/// at it; then removes all but the newest `keep_last` step directories
/// (keep_last <= 0 keeps all) and stale temporaries. Returns the directory.
std::string save_checkpoint(
    const std::string& root,
    int64_t step,
    const CheckpointState& state,
    int64_t keep_last = 0);

/// The checkpoint directory `path` refers to: `path` itself when it holds a
/// manifest.json, else the directory named by path/LATEST. Throws when
/// neither exists.
std::string resolve_checkpoint(const std::string& path);

/// True when `root` holds a LATEST pointer or is a checkpoint directory.
bool has_checkpoint(const std::string& path);

/// Loads the checkpoint at `path` (resolve_checkpoint) into `state`: copies
/// tensors in place (no_grad, onto whatever device they are on), loads every
/// optimizer with its state mapped to the device of the first tensor of
/// `state.tensors` (a checkpoint written on CUDA resumes on the CPU and back;
/// as saved when there are no tensors), replaces `counters`
/// and `info`, restores the RNG. Validates the manifest (format, version,
/// file sizes) and every name and shape first, so a mismatch throws before
/// anything is modified. Returns the resolved directory.
std::string load_checkpoint(const std::string& path, CheckpointState& state);

}  // namespace lowmem::io

namespace lowmem::io::detail {
/// Test hook: called at each phase of save_checkpoint ("weights",
/// "optimizers", "manifest", "renamed", "latest") so tests can kill the
/// process at a chosen point. Not for production use.
void set_checkpoint_phase_hook(void (*hook)(const char* phase));
/// Parses and validates a manifest.json text as load_checkpoint does (size,
/// nesting, fields, ranges); throws c10::Error naming `path`. For the fuzz
/// targets (fuzz/).
void check_manifest(const std::string& text, const std::string& path);
}  // namespace lowmem::io::detail
