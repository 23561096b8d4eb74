// Internals of `lowmem compare`: suites (model + data + evaluation) and the
// method registry (how each method turns a model into optimizers).
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "lowmem/data/batch.h"
#include "lowmem/train/compare.h"
#include "lowmem/train/fields.h"

namespace lowmem::train::compare::detail {

struct Evaluation {
  double loss = 0;
  std::optional<double> accuracy;
};

/// A model to train plus its data and evaluation, built fresh per method
/// (same seed: same initial weights and batch order for every method).
struct Workload {
  std::string task;                              // one-line description
  std::shared_ptr<torch::nn::Module> model;
  std::function<at::Tensor(const data::Batch&)> loss;  // forward + loss
  std::function<data::Batch()> next_batch;
  std::function<Evaluation()> evaluate;           // under NoGradGuard
  int64_t items_per_step = 0;                     // tokens or samples
  std::string item_unit;                          // "tokens/s" | "samples/s"
  /// Names of the parameters of the task head (trained by every finetune
  /// method, e.g. the new classifier).
  std::vector<std::string> head_params;
  /// Casts the model (bf16 methods).
  std::function<void(c10::ScalarType)> to_dtype;
};

/// What a method makes of a workload.
struct Training {
  std::vector<std::shared_ptr<torch::optim::Optimizer>> optimizers;
  std::string detail;  // "rank 8, refresh 50"
  /// Called before each forward pass (besides optim::before_forward).
  std::function<void()> before_forward;
  /// Keeps objects the optimizers refer to alive (taps, projections).
  std::vector<std::shared_ptr<void>> keep_alive;
  /// The --set overrides applied (configured() records them).
  std::vector<std::string> overrides;
};

/// (field, value) of each of `o.overrides` in `section`, in order.
std::vector<std::pair<std::string, std::string>> overrides_of(
    const CompareOptions& o, const std::string& section);

/// `defaults` (the method's own options) with the run's overrides of
/// `section` applied through the section's field visitor (the fields `lowmem
/// train` knows as "<section>.<field>"); only the named fields change. A
/// field T lacks is left out (GaLore's AdamW under "adamw" has no amsgrad).
/// Each applied override is recorded in `t.overrides`.
template <class T>
T configured(const CompareOptions& o, const std::string& section, T defaults,
             Training& t) {
  const auto kv = overrides_of(o, section);
  if (kv.empty()) return defaults;
  Section s = Section::of<T>(section, "", std::move(defaults));
  for (const auto& [field, value] : kv) {
    const Field* f = s.find(field);
    if (f == nullptr) continue;
    f->set(value);
    // One entry per key, with the value that took effect (the last).
    const std::string key = section + "." + field + "=";
    auto it = std::find_if(t.overrides.begin(), t.overrides.end(),
                           [&key](const std::string& x) { return x.rfind(key, 0) == 0; });
    if (it == t.overrides.end()) it = t.overrides.insert(t.overrides.end(), key);
    *it = key + value;
  }
  return s.get<T>();
}

/// Data loaded once per child, before the memory scope opens (the corpus
/// is not charged to the method).
struct SuiteData {
  virtual ~SuiteData() = default;
};

struct Suite {
  std::string name;
  std::string metric;  // "val_loss" | "val_accuracy"
  /// "" if the suite can run here, else why not (missing data files).
  std::function<std::string(const CompareOptions&)> unavailable;
  std::function<std::shared_ptr<SuiteData>(const CompareOptions&)> load;
  std::function<Workload(SuiteData&, const CompareOptions&, bool bf16)> build;
  int64_t (*steps)(const CompareOptions&) = nullptr;
  /// Finetune: path of the cached base model ("" if the suite has none).
  std::function<std::string(const CompareOptions&)> base_path;
  /// Trains and saves the base model (in a child process).
  std::function<void(const CompareOptions&, const CompareCallbacks&)>
      make_base;
};

struct MethodDef {
  MethodInfo info;
  bool bf16 = false;
  /// "" if the method can run (the build has its pieces), else why not.
  std::function<std::string()> unavailable;
  std::function<Training(Workload&, const CompareOptions&)> setup;
};

const std::vector<Suite>& suites();
/// Appends the model-based suites (pretrain, finetune); compare_models.cpp.
void add_model_suites(std::vector<Suite>& suites);
const Suite& suite(const std::string& name);
std::vector<MethodDef> method_defs();
/// Appends the pretrain and finetune methods; compare_model_methods.cpp.
void add_model_methods(std::vector<MethodDef>& defs);
const MethodDef& method_def(const std::string& suite, const std::string& name);

/// The device of the module's first parameter (CPU if it has none): the
/// workloads move each batch there, after run_method moved the model to
/// CompareOptions::device.
c10::Device device_of(const torch::nn::Module& module);

/// Trainable parameters of `module` (requires_grad), by name.
std::vector<std::pair<std::string, at::Tensor>> trainable_named(
    torch::nn::Module& module);
/// Freezes every parameter whose name is not in `keep` (exact names).
void freeze_all_but(torch::nn::Module& module,
                    const std::vector<std::string>& keep);

/// Peak learning rate of the pretrain suite's AdamW baseline (the Python
/// baseline uses the same); compare_model_methods.cpp.
double pretrain_adamw_lr();

/// Runs the pretrain GPT with AdamW under Debian's python3-torch.
PythonBaseline run_python_baseline(const CompareOptions& options);

/// One MethodResult as a single-line JSON object and back (child -> parent).
std::string method_to_json_line(const MethodResult& r);
MethodResult method_from_json_line(const std::string& s);

/// Writes `text` to `path` atomically (temp file + rename).
void write_text_file(const std::string& path, const std::string& text);

/// Formats a double for JSON/CSV/Markdown ("%.6g").
std::string num(double v);

}  // namespace lowmem::train::compare::detail
