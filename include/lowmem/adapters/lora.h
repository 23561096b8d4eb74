// LoRA (Hu et al., arXiv 2106.09685) as Hugging Face PEFT implements it
// (peft/tuners/lora/layer.py, config.py @ 5d602fdb): y = base(x) +
// s·B A dropout(x), s = lora_alpha/r (or lora_alpha/sqrt(r) with rslora).
// Deviations: Linear layers only (no Embedding/Conv/DoRA/lora_bias); bias
// "none" only; one adapter per layer (PEFT's adapter name "default").
#pragma once

#include <torch/arg.h>

#include <memory>
#include <string>

#include "lowmem/adapters/inject.h"

namespace lowmem::adapters {

struct LoraOptions {
  LoraOptions() = default;
  explicit LoraOptions(int64_t r) : r_(r) {}
  TORCH_ARG(int64_t, r) = 8;              // LoraConfig.r default 8
  TORCH_ARG(double, lora_alpha) = 8.0;    // LoraConfig.lora_alpha default 8
  TORCH_ARG(double, lora_dropout) = 0.0;  // LoraConfig.lora_dropout default 0.0
  TORCH_ARG(bool, use_rslora) = false;    // LoraConfig.use_rslora default False
  /// "true" (A Kaiming-uniform a=sqrt(5), B = 0), "gaussian" (A ~ N(0, 1/r),
  /// B = 0) or "false" (both nn.Linear defaults; not a no-op). PEFT default True.
  TORCH_ARG(std::string, init_lora_weights) = "true";
  /// Only "none" (PEFT default: all non-adapter parameters frozen).
  TORCH_ARG(std::string, bias) = "none";

 public:
  /// scaling = lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora.
  double scaling() const;
  template <class V>
  void for_each_field(V&& v) {
    v("r", r_);
    v("lora_alpha", lora_alpha_);
    v("lora_dropout", lora_dropout_);
    v("use_rslora", use_rslora_);
    v("init_lora_weights", init_lora_weights_);
    v("bias", bias_);
  }
};

void validate(const LoraOptions& o);

/// A LoRA-wrapped linear. Parameters (PEFT names): lora_A.weight [r, in],
/// lora_B.weight [out, r]; kept in float32 when the base is fp16/bf16 (PEFT's
/// autocast_adapter_dtype), else in the base dtype.
class LoraLinear final : public AdapterLinear {
 public:
  LoraLinear(std::shared_ptr<nn::LinearLike> base, const LoraOptions& options);
  at::Tensor delta_output(const at::Tensor& x) override;
  at::Tensor delta_weight() const override;  // scaling · B A
  std::vector<at::Tensor> adapter_parameters() const override { return {a_, b_}; }
  /// Re-draws A and B as init_lora_weights says.
  void reset_parameters();

  at::Tensor& lora_A() { return a_; }
  at::Tensor& lora_B() { return b_; }
  double scaling() const { return options_.scaling(); }
  const LoraOptions& options() const { return options_; }

 private:
  LoraOptions options_;
  at::Tensor a_;  // [r, in]
  at::Tensor b_;  // [out, r]
};

/// LoRA injected into a model; the adapter file is PEFT's layout.
class LoraModel final : public AdapterModel {
 public:
  std::string peft_type() const override { return "LORA"; }
  std::map<std::string, at::Tensor> state_tensors() const override;
  std::string config_json() const override;
  void check_config(const std::string& config_json) const override;
  const LoraOptions& options() const { return options_; }

 private:
  friend std::shared_ptr<LoraModel> inject_lora(std::shared_ptr<torch::nn::Module>,
                                                const TargetOptions&,
                                                const LoraOptions&);
  LoraModel(std::shared_ptr<torch::nn::Module> root, TargetOptions t, LoraOptions o)
      : AdapterModel(std::move(root), std::move(t)), options_(std::move(o)) {}
  LoraOptions options_;
};

/// Wraps every targeted slot of `model` in a LoraLinear and freezes the rest.
std::shared_ptr<LoraModel> inject_lora(std::shared_ptr<torch::nn::Module> model,
                                       const TargetOptions& targets,
                                       const LoraOptions& options = {});

/// LoraOptions + targets from a PEFT adapter_config.json text (unknown keys
/// ignored, missing ones defaulted, unsupported settings rejected).
std::pair<TargetOptions, LoraOptions> lora_config_from_json(const std::string& json);

}  // namespace lowmem::adapters
