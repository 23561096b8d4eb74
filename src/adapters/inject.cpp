#include "lowmem/adapters/inject.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <regex>
#include <set>
#include <unordered_set>

#include "lowmem/core/check.h"
#include "lowmem/core/input.h"

namespace lowmem::adapters {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// PEFT list semantics: key == item or key ends with "." + item.
bool list_match(const std::string& path, const std::vector<std::string>& list) {
  for (const auto& item : list) {
    if (path == item || ends_with(path, "." + item)) return true;
  }
  return false;
}

// libstdc++'s regex compiles and matches recursively: a long or deeply
// grouped pattern from adapter_config.json could exhaust the stack, so both
// are bounded first (PEFT's target_modules regexes are a line long).
constexpr size_t kMaxPatternBytes = 4096;
constexpr int kMaxPatternGroups = 32;

std::regex compile(const std::string& pattern, const char* what) {
  LOWMEM_CHECK(pattern.size() <= kMaxPatternBytes, "[inject] ", what, " ",
               quote(pattern), " is longer than ", kMaxPatternBytes, " bytes");
  int depth = 0;
  int deepest = 0;
  for (size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] == '\\') {
      ++i;
    } else if (pattern[i] == '(') {
      deepest = std::max(deepest, ++depth);
    } else if (pattern[i] == ')') {
      --depth;
    }
  }
  LOWMEM_CHECK(deepest <= kMaxPatternGroups, "[inject] ", what, " ",
               quote(pattern), " nests groups deeper than ", kMaxPatternGroups);
  try {
    return std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    LOWMEM_CHECK(false, "[inject] ", what, " ", quote(pattern),
                 " is not a valid regex: ", e.what());
  }
  return {};
}

std::string module_of(const std::string& param_name) {
  auto dot = param_name.find_last_of('.');
  return dot == std::string::npos ? std::string() : param_name.substr(0, dot);
}

}  // namespace

TargetOptions TargetOptions::from_list(const std::string& comma_separated) {
  return TargetOptions(split_list(comma_separated));
}

void validate(const TargetOptions& t) {
  LOWMEM_CHECK(!t.target_modules().empty() || !t.target_regex().empty(),
               "[inject] no targets: set target_modules or target_regex");
  for (const auto& m : t.target_modules()) {
    LOWMEM_CHECK(!m.empty(), "[inject] empty name in target_modules");
  }
  if (!t.target_regex().empty()) compile(t.target_regex(), "target_regex");
  if (!t.exclude_regex().empty()) compile(t.exclude_regex(), "exclude_regex");
}

bool in_modules_to_save(const std::string& module_path, const TargetOptions& t) {
  // (^|.*\.)name($|\..*)
  for (const auto& name : t.modules_to_save()) {
    if (module_path == name || ends_with(module_path, "." + name) ||
        module_path.rfind(name + ".", 0) == 0 ||
        module_path.find("." + name + ".") != std::string::npos) {
      return true;
    }
  }
  return false;
}

bool is_target(const std::string& path, const TargetOptions& t) {
  if (!t.exclude_regex().empty() &&
      std::regex_match(path, compile(t.exclude_regex(), "exclude_regex"))) {
    return false;
  }
  if (list_match(path, t.exclude_modules())) return false;
  if (in_modules_to_save(path, t)) return false;
  if (!t.target_regex().empty()) {
    return std::regex_match(path, compile(t.target_regex(), "target_regex"));
  }
  // PEFT's INCLUDE_LINEAR_LAYERS_SHORTHAND: every linear layer but the output
  // layer (tuners_utils._maybe_include_all_linear_layers drops
  // get_output_embeddings(), lm_head in the causal LMs here).
  if (t.target_modules() == std::vector<std::string>{"all-linear"})
    return path != "lm_head" && !ends_with(path, ".lm_head");
  return list_match(path, t.target_modules());
}

at::TensorOptions adapter_options(const at::TensorOptions& base_weight) {
  const auto t = base_weight.dtype().toScalarType();
  return at::TensorOptions()
      .dtype((t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t)
      .device(base_weight.device());
}

std::vector<nn::SlotRef> find_targets(torch::nn::Module& root,
                                      const TargetOptions& t) {
  validate(t);
  std::vector<nn::SlotRef> all = nn::find_slots(root);
  std::vector<nn::SlotRef> out;
  for (const auto& s : all) {
    if (is_target(s.path, t)) out.push_back(s);
  }
  if (out.empty()) {
    // The slots' distinct names (the last path part), once each: a
    // 7B model has 224 slot paths but seven names.
    std::string avail, wanted;
    std::set<std::string> seen;
    for (const auto& s : all) {
      const std::string name = s.path.substr(s.path.rfind('.') + 1);
      if (seen.insert(name).second) avail += (avail.empty() ? "" : ", ") + name;
    }
    for (const auto& m : t.target_modules())
      wanted += (wanted.empty() ? "" : ", ") + m;
    if (!t.target_regex().empty()) wanted = "regex " + t.target_regex();
    LOWMEM_CHECK(
        false, "[inject] target modules {", clip(wanted),
        "} not found in the model; its ", all.size(), " slots are named {",
        clip(avail), "}",
        all.empty() ? "" : " (paths like " + clip(all.front().path) + ")");
  }
  return out;
}

// ---------------------------------------------------------------------------

AdapterLinear::AdapterLinear(std::shared_ptr<nn::LinearLike> base)
    : nn::WrappedLinear(std::move(base), "base_layer", "[adapter]") {
  // The base is frozen (PEFT: _mark_only_adapters_as_trainable).
  for (auto& p : base_->parameters()) p.set_requires_grad(false);
}

at::Tensor AdapterLinear::forward_impl(const at::Tensor& x) {
  at::Tensor y = base_->forward(x);
  if (merged_) return y;
  return y + delta_output(x).to(y.scalar_type());
}

at::Tensor AdapterLinear::effective_weight() const {
  at::Tensor w = base_->effective_weight();
  if (merged_) return w;
  at::NoGradGuard g;
  return w + delta_weight().to(w.scalar_type());
}

void AdapterLinear::merge() {
  if (merged_) return;
  LOWMEM_CHECK(!base_->is_quantized(),
               "[adapter] cannot merge into a 4-bit (NF4) base weight: "
               "rounding the merged weight to 4 bits would lose the update. "
               "Merge into a bf16 copy of the base instead (load the base "
               "model in bf16 without base_dtype nf4, then merge; lowmem "
               "merge does this from the base checkpoint)");
  at::NoGradGuard g;
  at::Tensor& w = base_->base_weight();
  // PEFT safe_merge: check on a copy before touching the weight.
  at::Tensor merged = w + delta_weight().to(w.device(), w.scalar_type());
  LOWMEM_CHECK(at::isfinite(merged).all().item<bool>(),
               "[adapter] merging would produce non-finite weights");
  w.copy_(merged);
  merged_ = true;
}

void AdapterLinear::unmerge() {
  if (!merged_) return;
  at::NoGradGuard g;
  at::Tensor& w = base_->base_weight();
  w.sub_(delta_weight().to(w.device(), w.scalar_type()));
  merged_ = false;
}

// ---------------------------------------------------------------------------

AdapterModel::AdapterModel(std::shared_ptr<torch::nn::Module> root,
                           TargetOptions targets)
    : root_(std::move(root)), targets_(std::move(targets)) {
  LOWMEM_CHECK(root_ != nullptr, "[inject] null model");
}

std::vector<nn::SlotRef> AdapterModel::prepare() {
  std::vector<nn::SlotRef> slots = find_targets(*root_, targets_);
  at::NoGradGuard g;
  for (auto& p : root_->named_parameters(/*recurse=*/true)) {
    requires_grad_before_[p.key()] = p.value().requires_grad();
    // A module's parameters, or a parameter named directly (vit's cls_token
    // is no module's).
    p.value().set_requires_grad(
        in_modules_to_save(module_of(p.key()), targets_) ||
        in_modules_to_save(p.key(), targets_));
  }
  return slots;
}

void AdapterModel::wrap(const nn::SlotRef& slot,
                        std::shared_ptr<AdapterLinear> layer) {
  slot.replace(layer);
  layers_.push_back(AdaptedLayer{slot.path, slot, std::move(layer)});
}

void AdapterModel::attach(const std::string& name,
                          std::shared_ptr<torch::nn::Module> m) {
  LOWMEM_CHECK(!root_->named_children().contains(name), "[inject] the model ",
               "already has a child named '", name, "'");
  root_->register_module(name, std::move(m));
  attached_.push_back(name);
}

void AdapterModel::merge() {
  LOWMEM_CHECK(!unloaded_, "[inject] adapters were unloaded");
  for (auto& l : layers_) l.layer->merge();
}

void AdapterModel::unmerge() {
  LOWMEM_CHECK(!unloaded_, "[inject] adapters were unloaded");
  for (auto it = layers_.rbegin(); it != layers_.rend(); ++it) it->layer->unmerge();
}

bool AdapterModel::merged() const {
  return !layers_.empty() && layers_.front().layer->merged();
}

void AdapterModel::restore_slots() {
  for (auto& l : layers_) l.slot.replace(l.layer->base());
  for (const auto& name : attached_) root_->unregister_module(name);
  attached_.clear();
}

void AdapterModel::merge_and_unload() {
  merge();
  restore_slots();
  on_unload();
  layers_.clear();
  unloaded_ = true;
}

void AdapterModel::unload() {
  if (unloaded_) return;
  unmerge();
  restore_slots();
  on_unload();
  at::NoGradGuard g;
  for (auto& p : root_->named_parameters(/*recurse=*/true)) {
    auto it = requires_grad_before_.find(p.key());
    if (it != requires_grad_before_.end()) p.value().set_requires_grad(it->second);
  }
  layers_.clear();
  unloaded_ = true;
}

std::vector<at::Tensor> AdapterModel::trainable_parameters() const {
  std::vector<at::Tensor> out;
  std::unordered_set<const void*> seen;
  for (const auto& p : root_->parameters(/*recurse=*/true)) {
    if (p.requires_grad() && seen.insert(p.unsafeGetTensorImpl()).second)
      out.push_back(p);
  }
  return out;
}

int64_t AdapterModel::num_trainable_parameters() const {
  int64_t n = 0;
  for (const auto& p : trainable_parameters()) n += p.numel();
  return n;
}

int64_t AdapterModel::num_total_parameters() const {
  int64_t n = 0;
  std::unordered_set<const void*> seen;
  for (const auto& p : root_->parameters(/*recurse=*/true)) {
    if (seen.insert(p.unsafeGetTensorImpl()).second) n += p.numel();
  }
  return n;
}

std::map<std::string, at::Tensor> AdapterModel::saved_module_tensors() const {
  std::map<std::string, at::Tensor> out;
  if (targets_.modules_to_save().empty()) return out;
  for (const auto& p : root_->named_parameters(/*recurse=*/true)) {
    if (in_modules_to_save(module_of(p.key()), targets_) ||
        in_modules_to_save(p.key(), targets_))
      out[kPeftKeyPrefix + p.key()] = p.value();
  }
  return out;
}

}  // namespace lowmem::adapters
