// lowmem plan: the peak tensor memory of a training step, predicted from a
// configuration (the Config of lowmem train: model, method, optimizers,
// batch) without allocating the model. The model is built on the meta device
// (shapes, dtypes and names, no storage), the method is applied and the
// parameters are routed by the code lowmem train runs (setup_method), the
// optimizer state is sized by each optimizer's registry row
// (OptimizerKind::state_bytes, from its own init_state), the update's
// temporaries by running that optimizer once on a small probe tensor, and the
// activations by the model's closed form (models::llama_activation_bytes).
// The peak is the largest of the live sums at the step's events (forward
// end, each backward stage, the optimizer step) in the steady state (state
// already created). docs/memory.md ("lowmem plan") states the model and its
// assumptions; tests/train/plan_test.cpp checks it against MemoryTracker.
// Only the llama model has an activation model so far.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/Optional.h>
#include <torch/arg.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "lowmem/train/config.h"

namespace lowmem::train {

struct PlanOptions {
  /// Rows per micro-batch; 0: the configuration's batch_size.
  TORCH_ARG(int64_t, batch_size) = 0;
  /// Tokens per row; 0: the model's (llama.context).
  TORCH_ARG(int64_t, seq_len) = 0;
  /// Weights' dtype (activations follow it): kFloat, kBFloat16, kHalf;
  /// unset: the configuration's (llama.dtype, float32 by default).
  TORCH_ARG(c10::optional<c10::ScalarType>, dtype) = c10::nullopt;
  /// Data-parallel workers. With the configuration's dist.zero_stage 1 or 2
  /// the optimizer state is planned per worker (ZeRO, dist/zero.h): the
  /// parameters split by bytes as dist::partition_by_bytes does, the peak
  /// with the most loaded worker's share.
  TORCH_ARG(int64_t, workers) = 1;
};

/// Activation bytes of a model family for one batch shape (see
/// models::LlamaActivationBytes for the meaning of each field).
struct ActivationModel {
  int64_t layers = 0;
  bool checkpointing = false;
  int64_t layer = 0, checkpoint = 0, layer_backward = 0;
  int64_t head = 0, head_forward = 0, head_backward = 0;
  int64_t log_probs = 0, logits_grad = 0;
  /// Where a parameter's gradient appears in backward: -1 the head (first),
  /// 0..layers-1 its decoder layer, `layers` the embedding (last).
  std::function<int64_t(const std::string& name)> stage_of;
};

/// One line of a plan: a part of the peak and what it holds.
struct PlanPart {
  std::string name;
  int64_t bytes = 0;
  std::string detail;
};

struct Plan {
  int64_t batch_size = 0, seq_len = 0;
  int64_t params = 0, trainable_params = 0;
  int64_t weights = 0;          // all parameters (adapters included)
  int64_t gradients = 0;        // gradients alive at the peak
  int64_t optimizer_state = 0;  // every slot's state (bases included)
  /// ZeRO (PlanOptions::workers > 1, dist.zero_stage 1 or 2): each worker's
  /// optimizer state; the peak counts the largest. Empty otherwise.
  std::vector<int64_t> worker_state;
  int64_t activations = 0;  // saved for backward at the peak
  /// Saved for backward when backward starts, without and with activation
  /// checkpointing (whichever the configuration uses is in `activations`'
  /// sums).
  int64_t activations_full = 0, activations_checkpointed = 0;
  int64_t transient = 0;  // short-lived buffers at the peak
  int64_t peak = 0;       // sum of the above at the peak event
  std::string peak_at;    // the event: "optimizer step", "backward of layer 3"
  /// The largest single short-lived buffer set and where it occurs.
  int64_t largest_transient = 0;
  std::string largest_transient_at;
  /// Weights by dtype and role, state per slot, and the rest, for printing.
  std::vector<PlanPart> parts;
  std::string to_string() const;
};

/// Predicts `config`'s training step (ConfigError on usage problems, e.g. a
/// model or optimizer lowmem plan cannot size).
Plan plan(const Config& config, const PlanOptions& options = {});

/// The largest batch size (rows) whose planned peak is at most
/// `budget_bytes`, searched up to 2^20; 0 when batch 1 does not fit.
int64_t largest_batch(const Config& config, PlanOptions options,
                      int64_t budget_bytes);

/// "24GiB", "512MiB", "1.5 GB", "1000000" -> bytes (KiB/MiB/GiB/TiB binary,
/// KB/MB/GB/TB decimal). ConfigError on anything else.
int64_t parse_bytes(const std::string& text);

/// The methods of the table (`lowmem plan --table`), each as the lowmem
/// train keys that make it (as lowmem compare's method rows).
struct PlanMethod {
  std::string name;
  std::vector<std::string> keys;  // "method=galore", "galore.rank=128", ...
};
std::vector<PlanMethod> plan_methods();

}  // namespace lowmem::train
