// One call from a Config to a trained model: builds the model, data, method
// (adapters / projections) and optimizers (with parameter routing), then runs
// the Trainer with metrics, checkpoints and resume. tools/ stays a thin
// front end over these functions.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "lowmem/data/batch.h"
#include "lowmem/train/config.h"
#include "lowmem/train/routing.h"
#include "lowmem/train/trainer.h"

namespace lowmem::models {
class Model;
}
namespace lowmem::adapters {
class AdapterModel;
}

namespace lowmem::train {

/// Everything a run holds, built from a Config without writing anything.
struct Session {
  Config config;
  std::shared_ptr<models::Model> model;
  std::shared_ptr<data::BatchSource> train_data;
  std::shared_ptr<data::BatchSource> eval_data;
  std::string unit;          // what targets are: "tokens" or "samples"
  std::string data_summary;  // the sources' describe()
  /// Loss of the best input-independent predictor fitted on the training
  /// split, on the validation split (unigram bytes; class prior).
  double baseline_loss = 0.0;
  std::vector<Route> routes;  // which optimizer owns which parameters
  /// The injected adapters (methods lora, lotr, snell), else nullptr.
  std::shared_ptr<adapters::AdapterModel> adapter;
  std::unique_ptr<Trainer> trainer;
  /// Config::device, resolved: model, optimizer state and (in the loss
  /// function) every batch live there.
  c10::Device device = c10::Device(c10::kCPU);
  /// Data-parallel position (run() with WORLD_SIZE > 1 in the environment);
  /// 0 of 1 otherwise. Only rank 0 writes files and reports progress.
  int rank = 0;
  int world_size = 1;
};

/// What a configuration's method and optimizers make of a built model.
struct MethodSetup {
  std::vector<Route> routes;  // which optimizer owns which parameters
  std::vector<OptimizerSlot> optimizers;  // one per route, in route order
  /// The injected adapters (methods lora, lotr, snell, ...), else nullptr.
  std::shared_ptr<adapters::AdapterModel> adapter;
  /// projected-adapter: the number of projected adapters injected.
  int64_t projected_adapters = 0;
  /// The option sections the optimizers and the method were built from
  /// (e.g. {"galore", "galore_adamw"}).
  std::vector<std::string> sections;
};

/// Applies `config`'s method to `model` (adapters or projected adapters
/// injected on `device`, frozen as the method freezes), routes the trainable
/// parameters (`route`) and builds one optimizer per route from the
/// registries. build_session does this after building the model; lowmem
/// compare does it for its own models. ConfigError on usage problems.
MethodSetup setup_method(const Config& config,
                         const std::shared_ptr<torch::nn::Module>& model,
                         c10::Device device);

/// The model `config` describes, initialised from its seed on the CPU, without
/// building its data source (a classifier's number of classes comes from the
/// data section, e.g. fashion_mnist.classes): for commands that load weights
/// into it (generate, eval, export). ConfigError on usage problems.
std::shared_ptr<models::Model> build_model(const Config& config);

/// Validates `config` and builds the session. Usage problems (bad names,
/// option values an optimizer or adapter rejects) throw ConfigError;
/// everything else (missing data files, ...) c10::Error.
std::unique_ptr<Session> build_session(const Config& config);

struct RunResult {
  double eval_loss = 0.0;      // last evaluation
  double baseline_loss = 0.0;  // Session::baseline_loss
  int64_t steps = 0;
  int64_t skipped = 0;
  int64_t resumed_from = -1;   // step of the checkpoint resumed, -1 if none
  double seconds = 0.0;
  int64_t peak_bytes = 0;      // tensor_memory(device).peak: CPU tracking
                               // allocator or CUDA caching allocator
  /// This worker's optimizer state at the end (optim::state_bytes over
  /// every slot): under ZeRO its shard, about 1/N of the total.
  int64_t optimizer_state_bytes = 0;
  std::string checkpoint;      // last checkpoint written ("" if none)
  std::string adapter_dir;     // adapter files written ("" if none)
  int rank = 0;                // Session::rank / world_size
  int world_size = 1;
};

/// Builds the session, calls `on_ready` (print the configuration, plug in a
/// GradSync, ...), then creates out_dir (config.yaml, checkpoints/,
/// metrics.jsonl), resumes if asked, and trains. Nothing is written before
/// on_ready returns.
///
/// Data-parallel (WORLD_SIZE > 1 in the environment, as torchrun or
/// `lowmem train --nproc-per-node N` set it; docs/distributed.md): joins the
/// job (dist::Communicator::from_environment, timeout dist_timeout_s), checks
/// that every rank built identical weights, reads its rows of each global
/// batch (dist::ShardedSource, so batch_size is the global batch and must be
/// divisible by WORLD_SIZE), averages gradients across ranks
/// (dist::make_trainer_grad_sync), reports the rank-averaged loss, compares
/// weight and optimizer-state fingerprints at every evaluation, and lets only
/// rank 0 write files (out_dir, metrics, checkpoints, adapter; through
/// dist::run_on_main) and call `progress`. Every rank resumes from the same
/// checkpoint. Combinations whose state would differ between ranks
/// (singd/kfac, galore with accum_steps > 1 or layerwise, projected-adapter
/// with an svd/rsvd basis) are a ConfigError, and so is a device other than
/// the CPU (the all-reduce runs over Gloo on CPU tensors; NCCL is not built).
RunResult run(const Config& config,
              ProgressFn progress = {},
              const std::function<void(Session&)>& on_ready = {});

/// The data-parallel checks run() makes with WORLD_SIZE = `world_size`
/// (device cpu; batch_size divisible by it). Throws ConfigError; launchers
/// call it before starting workers.
void check_data_parallel(const Config& config, int world_size);

/// Copies the tensors of `path` (a checkpoint root or step directory, or a
/// .safetensors file) into `model`'s parameters and buffers, except names
/// matching the regex `exclude`. Every other model tensor must be present
/// with the same shape; extra tensors in the file are an error unless
/// excluded. Checks everything before copying.
void load_weights(torch::nn::Module& model, const std::string& path,
                  const std::string& exclude = "");

/// `lowmem merge`: rebuilds the base model, either a Hugging Face directory
/// `base` (config.json + safetensors: model hf, hf.path its absolute path) or
/// the model described by the configuration stored in the checkpoint `base`
/// of a full or GaLore run (its info.txt) with its weights; loads the adapter
/// directory `adapter_dir` (adapters::load_adapter), folds it in
/// (merge_and_unload) and writes out_dir/model.safetensors and
/// out_dir/config.yaml (method full). Returns the tensor count written.
/// ConfigError when `base` is a checkpoint of an adapter run.
int64_t merge_adapter(const std::string& base, const std::string& adapter_dir,
                      const std::string& out_dir);

/// Parameter counts and memory of a model + method + optimizers, measured
/// over one forward/backward/step on one batch (so lazily created optimizer
/// state exists); nothing is written.
struct InfoReport {
  int64_t total_params = 0;
  int64_t trainable_params = 0;
  int64_t frozen_bytes = 0;  // NF4 storage included
  int64_t nf4_params = 0;    // weights stored as NF4 (base_dtype nf4)
  int64_t nf4_bytes = 0;     // their bytes (codes, scales, offset)
  int64_t trainable_bytes = 0;
  int64_t gradient_bytes = 0;        // peak gradient bytes of the step
  int64_t optimizer_state_bytes = 0;
  int64_t peak_step_bytes = 0;         // peak live bytes during the step
                                       // above those live before it
  int64_t live_before_step_bytes = 0;  // tracked live bytes before the step
  double step_loss = 0.0;              // the step's training loss
  int64_t peak_rss_bytes = 0;          // the process's peak RSS after it
  // Wall and process CPU seconds (all threads) of building the session
  // (model, data, method, optimizers) and of the one step.
  double build_seconds = 0.0, build_cpu_seconds = 0.0;
  double step_seconds = 0.0, step_cpu_seconds = 0.0;
  std::vector<std::pair<std::string, int64_t>> optimizer_bytes;  // per slot
  std::vector<std::pair<std::string, int64_t>> route_params;  // per slot
  // Where the step's wall time went (core/profile.h): exclusive seconds per
  // phase, in profile::Phase order; the rest of step_seconds is "other".
  std::vector<std::pair<std::string, double>> phase_seconds;
  // Training FLOPs of the step for models that count them (LLaMA, GPT):
  // model_flops the 6 N + attention convention (Llama::flops_per_token x
  // tokens); step_flops adds the recomputed forward under checkpointing
  // (a third more). 0 for other models.
  double model_flops = 0.0, step_flops = 0.0;
  // Measured matmul rates of this machine in the same process (info with
  // measure_gemm): GFLOP/s of a float32 and a bfloat16 2048^3 GEMM.
  double gemm_fp32_gflops = 0.0, gemm_bf16_gflops = 0.0;
  std::string data_summary;
  double baseline_loss = 0.0;
  std::string to_string() const;
};
/// Builds the session and measures one step (above). With measure_gemm,
/// also times 2048^3 float32 and bfloat16 GEMMs on the config's device
/// after the step, so the step can be set against the machine's rate.
InfoReport info(const Config& config, bool measure_gemm = false);

}  // namespace lowmem::train
