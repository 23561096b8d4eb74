// Internals of `lowmem compare`: suites (a model, its data and its
// evaluation) and the method table (rows of lowmem train configuration keys,
// built by train::setup_method and run by train::Trainer).
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "lowmem/compare/compare.h"
#include "lowmem/data/batch.h"
#include "lowmem/train/config.h"
#include "lowmem/train/run.h"

namespace lowmem::compare {
using lowmem::ConfigError;
}  // namespace lowmem::compare

namespace lowmem::compare::detail {

struct Evaluation {
  double loss = 0;
  std::optional<double> accuracy;
};

/// A model to train plus its data and evaluation, built fresh per method
/// (same seed: same initial weights and batch order for every method).
struct Workload {
  std::string task;  // one-line description
  std::shared_ptr<torch::nn::Module> model;
  std::function<at::Tensor(const data::Batch&)> loss;  // forward + loss
  std::function<data::Batch()> next_batch;
  std::function<Evaluation()> evaluate;  // under NoGradGuard
  int64_t items_per_step = 0;            // tokens or samples
  std::string item_unit;                 // "tokens/s" | "samples/s"
};

/// Data loaded once per child, before the memory scope opens (the corpus
/// is not charged to the method).
struct SuiteData {
  virtual ~SuiteData() = default;
};

/// How a method's model differs from the suite's plain one.
struct ModelVariant {
  bool bf16 = false;      // weights (and activations) in bfloat16
  bool fused_qkv = true;  // ViT: false splits attn.qkv into q, k, v
};

struct Suite {
  std::string name;
  std::string metric;  // "val_loss" | "val_accuracy"
  /// lowmem train keys every method of the suite starts from (the model
  /// key selects the methods' default adapter targets).
  std::vector<std::string> config;
  /// "" if the suite can run here, else why not (missing data files).
  std::function<std::string(const CompareOptions&)> unavailable;
  std::function<std::shared_ptr<SuiteData>(const CompareOptions&)> load;
  std::function<Workload(SuiteData&, const CompareOptions&,
                         const ModelVariant&)>
      build;
  int64_t (*steps)(const CompareOptions&) = nullptr;
  /// Finetune: path of the cached base model ("" if the suite has none).
  std::function<std::string(const CompareOptions&)> base_path;
  /// Trains and saves the base model (in a child process).
  std::function<void(const CompareOptions&, const CompareCallbacks&)> make_base;
};

/// What one method's configuration made of a workload.
struct Built {
  train::Config config;
  train::MethodSetup setup;
};

/// One method: a row of lowmem train configuration keys ("optimizer=came",
/// "came.lr=0.0003", ...) applied over the suite's keys, then the run's
/// `--set` overrides.
struct MethodDef {
  MethodInfo info;
  bool bf16 = false;
  /// The row's keys (some depend on the run's options: ranks, refresh gaps).
  std::function<std::vector<std::string>(const CompareOptions&)> config;
  /// The settings shown in the results ("rank 8, refresh 50, lr 0.003").
  std::function<std::string(const Built&)> detail;
};

const std::vector<Suite>& suites();
/// Appends the model-based suites (pretrain, finetune); model_suites.cpp.
void add_model_suites(std::vector<Suite>& suites);
const Suite& suite(const std::string& name);
/// The method table; methods.cpp.
const std::vector<MethodDef>& method_defs();
const MethodDef& method_def(const std::string& suite, const std::string& name);

/// The lowmem train configuration of `method` in `suite` under `options`:
/// the suite's keys, the method's keys, then options.overrides.
train::Config method_config(const MethodDef& method, const Suite& suite,
                            const CompareOptions& options);
/// The model variant of `method` under `options`: its bf16 flag and the
/// `vit.fused_qkv` key of its configuration (overrides included).
ModelVariant model_variant(const MethodDef& method, const Suite& suite,
                           const CompareOptions& options);

/// The device of the module's first parameter (CPU if it has none): the
/// workloads move each batch there, after run_method moved the model to
/// CompareOptions::device.
c10::Device device_of(const torch::nn::Module& module);

/// The seed of a run: CompareOptions::seed + seed_index (the finetune base
/// model and the data subsets use CompareOptions::seed itself).
inline uint64_t run_seed(const CompareOptions& o) {
  return o.seed + static_cast<uint64_t>(o.seed_index);
}

/// Peak learning rate of the pretrain suite's AdamW baseline (the Python
/// baseline uses the same); methods.cpp.
double pretrain_adamw_lr();

/// Runs the pretrain GPT with AdamW under Debian's python3-torch.
PythonBaseline run_python_baseline(const CompareOptions& options);

/// One MethodResult as a single-line JSON object and back (child -> parent).
std::string method_to_json_line(const MethodResult& r);
MethodResult method_from_json_line(const std::string& s);
/// Memory-suite rows as a single-line JSON array and back.
std::string memory_rows_to_json_line(const std::vector<MemoryRow>& rows);
std::vector<MemoryRow> memory_rows_from_json_line(const std::string& s);

// --- memory suite (memory_suite.cpp)

/// A method of the memory suite: lowmem train keys for a LLaMA preset.
struct MemoryMethod {
  std::string name;
  std::vector<std::string> keys;
};
/// The methods at LLaMA preset `model` (GaLore's rank for that size).
std::vector<MemoryMethod> memory_methods(const std::string& model);
/// The lowmem train configuration of `keys` on LLaMA `model` with the
/// suite's batch shape.
train::Config memory_config(const std::string& model,
                            const std::vector<std::string>& keys,
                            const CompareOptions& o);
/// CompareOptions::memory_dtype as a scalar type; ConfigError otherwise.
c10::ScalarType memory_dtype(const CompareOptions& o);
/// lowmem plan's prediction for one row ("not planned" with the reason when
/// plan cannot size the method).
MemoryRow plan_row(const std::string& model, const MemoryMethod& m,
                   const CompareOptions& o);
/// Trains `m` on LLaMA `model` for memory_steps steps of random tokens and
/// returns "peak_bytes peak_rss_bytes median_step_ms" (run in a child).
std::string measure_memory(const std::string& model, const MemoryMethod& m,
                           const CompareOptions& o);

/// Writes `text` to `path` atomically (io::atomic_write_file: temp file,
/// fsync, rename).
void write_text_file(const std::string& path, const std::string& text);

/// Formats a double for JSON/CSV/Markdown ("%.6g").
std::string num(double v);

/// Rows as a Markdown table or as aligned text (the first `left` columns
/// left-aligned, the others right-aligned; each text line starts with
/// `indent`); rows[0] is the header. Every table of the report and the
/// summary goes through it.
std::string render_table(const std::vector<std::vector<std::string>>& rows,
                         bool markdown, size_t left,
                         const std::string& indent = "");

}  // namespace lowmem::compare::detail
