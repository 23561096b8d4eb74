#include "lowmem/adapters/lora.h"

#include <ATen/ATen.h>
#include <torch/nn/init.h>

#include <cmath>

#include "config_json.h"
#include "lowmem/core/check.h"
#include "lowmem/core/input.h"

namespace lowmem::adapters {
namespace {

// Holds one parameter named "weight", so model parameter names read
// "<path>.lora_A.weight" as in PEFT.
struct WeightHolder : torch::nn::Module {
  explicit WeightHolder(at::Tensor w) { weight = register_parameter("weight", w); }
  at::Tensor weight;
};

}  // namespace

double LoraOptions::scaling() const {
  return use_rslora_ ? lora_alpha_ / std::sqrt(static_cast<double>(r_))
                     : lora_alpha_ / static_cast<double>(r_);
}

void validate(const LoraOptions& o) {
  LOWMEM_CHECK(o.r() > 0, "[lora] r must be > 0, got ", o.r());
  LOWMEM_CHECK(std::isfinite(o.lora_alpha()), "[lora] lora_alpha must be finite, got ",
               o.lora_alpha());
  LOWMEM_CHECK(o.lora_dropout() >= 0.0 && o.lora_dropout() < 1.0,
               "[lora] lora_dropout must be in [0, 1), got ", o.lora_dropout());
  LOWMEM_CHECK(o.init_lora_weights() == "true" ||
                   o.init_lora_weights() == "false" ||
                   o.init_lora_weights() == "gaussian",
               "[lora] init_lora_weights must be true, false or gaussian, got ",
               quote(o.init_lora_weights()));
  LOWMEM_CHECK(o.bias() == "none", "[lora] bias ", quote(o.bias()),
               " is not supported (only 'none')");
}

LoraLinear::LoraLinear(std::shared_ptr<nn::LinearLike> base,
                       const LoraOptions& options)
    : AdapterLinear(std::move(base)), options_(options) {
  validate(options_);
  // The base's compute dtype and device (an NF4 base has no dense weight).
  const at::TensorOptions w = this->base()->weight_options();
  auto opts = adapter_options(w);
  a_ = register_module("lora_A", std::make_shared<WeightHolder>(
                                     at::empty({options_.r(), in_features()}, opts)))
           ->weight;
  b_ = register_module("lora_B", std::make_shared<WeightHolder>(
                                     at::empty({out_features(), options_.r()}, opts)))
           ->weight;
  reset_parameters();
}

void LoraLinear::reset_parameters() {
  at::NoGradGuard g;
  const std::string& init = options_.init_lora_weights();
  if (init == "gaussian") {
    a_.normal_(0.0, 1.0 / static_cast<double>(options_.r()));
  } else {
    // bound = 1/sqrt(in) (nn.Linear's reset_parameters).
    torch::nn::init::kaiming_uniform_(a_, std::sqrt(5.0));
  }
  if (init == "false") {
    torch::nn::init::kaiming_uniform_(b_, std::sqrt(5.0));
  } else {
    b_.zero_();
  }
}

at::Tensor LoraLinear::delta_output(const at::Tensor& x) {
  at::Tensor u = x.to(a_.scalar_type());
  if (options_.lora_dropout() > 0.0) {
    u = at::dropout(u, options_.lora_dropout(), is_training());
  }
  return at::linear(at::linear(u, a_), b_) * options_.scaling();
}

at::Tensor LoraLinear::delta_weight() const {
  at::NoGradGuard g;
  return at::mm(b_, a_) * options_.scaling();
}

// ---------------------------------------------------------------------------

std::shared_ptr<LoraModel> inject_lora(std::shared_ptr<torch::nn::Module> model,
                                       const TargetOptions& targets,
                                       const LoraOptions& options) {
  validate(options);
  std::shared_ptr<LoraModel> m(new LoraModel(std::move(model), targets, options));
  try {
    for (const auto& slot : m->prepare()) {
      m->wrap(slot, std::make_shared<LoraLinear>(slot.layer(), options));
    }
  } catch (...) {
    m->unload();  // leave the model as it was
    throw;
  }
  return m;
}

std::map<std::string, at::Tensor> LoraModel::state_tensors() const {
  std::map<std::string, at::Tensor> out = saved_module_tensors();
  for (const auto& l : layers()) {
    auto* lora = static_cast<LoraLinear*>(l.layer.get());
    out[kPeftKeyPrefix + l.path + ".lora_A.weight"] = lora->lora_A();
    out[kPeftKeyPrefix + l.path + ".lora_B.weight"] = lora->lora_B();
  }
  return out;
}

std::string LoraModel::config_json() const {
  using detail::json;
  json j;
  j["peft_type"] = "LORA";
  j["task_type"] = nullptr;
  j["base_model_name_or_path"] =
      base_model_name_or_path.empty() ? json(nullptr) : json(base_model_name_or_path);
  j["revision"] = nullptr;
  j["inference_mode"] = true;  // PEFT forces true when saving
  j["auto_mapping"] = nullptr;
  j["r"] = options_.r();
  j["lora_alpha"] = detail::number(options_.lora_alpha());
  j["lora_dropout"] = options_.lora_dropout();
  j["use_rslora"] = options_.use_rslora();
  j["fan_in_fan_out"] = false;
  j["bias"] = options_.bias();
  j["lora_bias"] = false;
  j["use_dora"] = false;
  if (options_.init_lora_weights() == "gaussian") {
    j["init_lora_weights"] = "gaussian";
  } else {
    j["init_lora_weights"] = options_.init_lora_weights() == "true";
  }
  j["layers_to_transform"] = nullptr;
  j["layers_pattern"] = nullptr;
  j["rank_pattern"] = json::object();
  j["alpha_pattern"] = json::object();
  j["megatron_config"] = nullptr;
  j["megatron_core"] = "megatron.core";
  j["loftq_config"] = json::object();
  j["layer_replication"] = nullptr;
  detail::put_targets(j, targets());
  return j.dump(2);
}

std::pair<TargetOptions, LoraOptions> lora_config_from_json(const std::string& text) {
  using detail::get_or;
  using detail::json;
  const char* c = "lora";
  json j = detail::parse_config(text, c);
  std::string type = get_or<std::string>(j, "peft_type", "", c);
  LOWMEM_CHECK(type == "LORA", "[lora] adapter_config.json peft_type is ",
               quote(type), ", expected 'LORA'");
  LOWMEM_CHECK(!get_or<bool>(j, "use_dora", false, c), "[lora] use_dora is not supported");
  LOWMEM_CHECK(!get_or<bool>(j, "lora_bias", false, c), "[lora] lora_bias is not supported");
  LOWMEM_CHECK(!get_or<bool>(j, "fan_in_fan_out", false, c),
               "[lora] fan_in_fan_out=true is not supported (weights are [out, in])");
  for (const char* k : {"rank_pattern", "alpha_pattern"}) {
    auto it = j.find(k);
    LOWMEM_CHECK(it == j.end() || it->is_null() || it->empty(), "[lora] ", k,
                 " is not supported, got ", clip_json(*it));
  }
  for (const char* k : {"layers_to_transform", "layer_replication"}) {
    auto it = j.find(k);
    LOWMEM_CHECK(it == j.end() || it->is_null(), "[lora] ", k,
                 " is not supported, got ", clip_json(*it));
  }
  LoraOptions o;
  o.r(get_or<int64_t>(j, "r", 8, c));
  o.lora_alpha(get_or<double>(j, "lora_alpha", 8.0, c));
  o.lora_dropout(get_or<double>(j, "lora_dropout", 0.0, c));
  o.use_rslora(get_or<bool>(j, "use_rslora", false, c));
  o.bias(get_or<std::string>(j, "bias", "none", c));
  auto init = j.find("init_lora_weights");
  if (init != j.end() && init->is_boolean()) {
    o.init_lora_weights(init->get<bool>() ? "true" : "false");
  } else if (init != j.end() && init->is_string()) {
    o.init_lora_weights(init->get<std::string>());
  }
  validate(o);
  return {detail::get_targets(j, c), o};
}

void LoraModel::check_config(const std::string& text) const {
  auto [t, o] = lora_config_from_json(text);
  LOWMEM_CHECK(o.r() == options_.r(), "[lora] saved r ", o.r(),
               " != the model's r ", options_.r());
  LOWMEM_CHECK(o.lora_alpha() == options_.lora_alpha(), "[lora] saved lora_alpha ",
               o.lora_alpha(), " != the model's ", options_.lora_alpha());
  LOWMEM_CHECK(o.use_rslora() == options_.use_rslora(), "[lora] saved use_rslora ",
               o.use_rslora(), " != the model's ", options_.use_rslora());
}

}  // namespace lowmem::adapters
