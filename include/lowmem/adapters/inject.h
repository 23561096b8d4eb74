// Adapter injection into any module whose linear layers sit in SlotModule
// slots, with Hugging Face PEFT's target semantics (peft/tuners/tuners_utils.py
// check_target_module_exists, utils/other.py): a list entry matches a module
// path exactly or as a dotted suffix, a regex must match the whole path, and
// exclusions win. Deviation: modules_to_save keeps the matched modules'
// parameters trainable in place instead of training a wrapped copy.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/arg.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "lowmem/nn/linear.h"
#include "lowmem/nn/slot_module.h"

namespace lowmem::adapters {

/// Which slots get an adapter (PEFT LoraConfig field names).
struct TargetOptions {
  TargetOptions() = default;
  explicit TargetOptions(std::vector<std::string> target_modules)
      : target_modules_(std::move(target_modules)) {}
  /// Exact path or "." + suffix match ("qkv" matches "h.0.attn.qkv").
  TORCH_ARG(std::vector<std::string>, target_modules) = {};
  /// If set, used instead of target_modules: std::regex full match.
  TORCH_ARG(std::string, target_regex) = "";
  /// Exact path or suffix match; takes precedence over the targets.
  TORCH_ARG(std::vector<std::string>, exclude_modules) = {};
  /// If set: paths that fully match are excluded.
  TORCH_ARG(std::string, exclude_regex) = "";
  /// Modules kept trainable and saved with the adapter (PEFT modules_to_save,
  /// e.g. a new classification head); a name matches a module path as
  /// (^|.*\.)name($|\..*). A name may also match a parameter's own name
  /// (lowmem: ViT's cls_token belongs to no submodule; PEFT would name its
  /// embeddings module). Never targeted by adapters.
  TORCH_ARG(std::vector<std::string>, modules_to_save) = {};

 public:
  /// "a,b,c" -> target_modules {a, b, c} (the CLI's --targets).
  static TargetOptions from_list(const std::string& comma_separated);
};

void validate(const TargetOptions& t);

/// PEFT's rule for one module path: excluded -> false; regex -> full match;
/// list -> exact or suffix match. Paths inside modules_to_save never match.
bool is_target(const std::string& path, const TargetOptions& t);

/// Whether `module_path` lies in a modules_to_save entry.
bool in_modules_to_save(const std::string& module_path, const TargetOptions& t);

/// The options of an adapter's weights for a base weight with `base_weight`'s
/// options: PEFT keeps adapter weights in fp32 for fp16/bf16 bases
/// (autocast_adapter_dtype=True), else in the base dtype; the base's device.
at::TensorOptions adapter_options(const at::TensorOptions& base_weight);

/// The slots under `root` that `t` selects, in path order; throws naming the
/// targets and the available slot paths if none matches.
std::vector<nn::SlotRef> find_targets(torch::nn::Module& root,
                                      const TargetOptions& t);

/// A slot layer that wraps a frozen base layer and adds an update:
/// y = base(x) + delta(x), or y = base(x) with the update folded into the base
/// weight after merge(). The base is registered as child "base_layer" (PEFT's
/// name), so model parameter names read "<path>.base_layer.weight".
class AdapterLinear : public nn::WrappedLinear {
 public:
  explicit AdapterLinear(std::shared_ptr<nn::LinearLike> base);

  at::Tensor forward_impl(const at::Tensor& x) override;
  /// The adapter branch alone, shaped like base(x).
  virtual at::Tensor delta_output(const at::Tensor& x) = 0;
  /// The update ΔW [out, in] in the base weight's layout (no grad needed).
  virtual at::Tensor delta_weight() const = 0;
  /// The adapter's trainable parameters (shared ones included).
  virtual std::vector<at::Tensor> adapter_parameters() const = 0;

  /// base.W += ΔW (no-op if merged). Throws if the result is not finite, and
  /// on a quantized (NF4) base, saying to merge into a bf16 copy instead.
  void merge();
  /// base.W -= ΔW (no-op if not merged).
  void unmerge();
  bool merged() const { return merged_; }

  at::Tensor effective_weight() const override;

 private:
  bool merged_ = false;
};

/// One adapted slot.
struct AdaptedLayer {
  std::string path;  // module path, e.g. "h.0.attn.qkv"
  nn::SlotRef slot;
  std::shared_ptr<AdapterLinear> layer;
};

/// The adapters injected into one model (PEFT's LoraModel/PeftModel role).
/// Holds the model by shared pointer. Creating it freezes every model
/// parameter except the adapters' and modules_to_save's; unload() and
/// merge_and_unload() put the base layers back and restore the previous
/// requires_grad flags.
class AdapterModel {
 public:
  virtual ~AdapterModel() = default;
  AdapterModel(const AdapterModel&) = delete;
  AdapterModel& operator=(const AdapterModel&) = delete;

  /// PEFT-style method id: "LORA", "LOTR", "SNELL".
  virtual std::string peft_type() const = 0;
  /// Every tensor the adapter file holds, by file key
  /// ("base_model.model.<path>.lora_A.weight", ...); live tensors, not copies.
  virtual std::map<std::string, at::Tensor> state_tensors() const = 0;
  /// adapter_config.json text (sorted keys, 2-space indent, as PEFT).
  virtual std::string config_json() const = 0;
  /// Throws naming the field if a saved config does not describe this
  /// adapter (method, rank, options, targets).
  virtual void check_config(const std::string& config_json) const = 0;

  torch::nn::Module& model() const { return *root_; }
  const std::shared_ptr<torch::nn::Module>& model_ptr() const { return root_; }
  const std::vector<AdaptedLayer>& layers() const { return layers_; }
  const TargetOptions& targets() const { return targets_; }
  /// Base model id written as base_model_name_or_path (optional).
  std::string base_model_name_or_path;

  /// Folds every update into its base weight.
  void merge();
  /// Exact inverse of merge() up to float rounding.
  void unmerge();
  bool merged() const;
  /// merge(), then put every base layer back into its slot and drop the
  /// adapters; the model is a plain model again (parameters stay frozen).
  /// This handle is empty afterwards.
  void merge_and_unload();
  /// Put the base layers back without merging and restore requires_grad.
  void unload();
  bool unloaded() const { return unloaded_; }

  /// Distinct trainable tensors (adapters + modules_to_save), each once even
  /// when shared between layers: hand these to the optimizer.
  std::vector<at::Tensor> trainable_parameters() const;
  int64_t num_trainable_parameters() const;
  /// Distinct parameters of the whole model (frozen ones included).
  int64_t num_total_parameters() const;
  /// modules_to_save parameters by file key ("base_model.model.head.weight").
  std::map<std::string, at::Tensor> saved_module_tensors() const;

 protected:
  AdapterModel(std::shared_ptr<torch::nn::Module> root, TargetOptions targets);
  /// Freezes the model (recording flags) and resolves the target slots.
  std::vector<nn::SlotRef> prepare();
  /// Puts `layer` into `slot` and records it.
  void wrap(const nn::SlotRef& slot, std::shared_ptr<AdapterLinear> layer);
  /// Registers an extra module under the root (e.g. LoTR's shared factors);
  /// removed again by unload().
  void attach(const std::string& name, std::shared_ptr<torch::nn::Module> m);
  /// Called by unload() after the slots are restored.
  virtual void on_unload() {}

 private:
  void restore_slots();
  std::shared_ptr<torch::nn::Module> root_;
  TargetOptions targets_;
  std::vector<AdaptedLayer> layers_;
  std::vector<std::string> attached_;
  std::map<std::string, bool> requires_grad_before_;
  bool unloaded_ = false;
};

/// Prefix of every key in a PEFT adapter file.
inline constexpr const char* kPeftKeyPrefix = "base_model.model.";

}  // namespace lowmem::adapters
