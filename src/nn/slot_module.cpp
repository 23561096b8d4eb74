#include "lowmem/nn/slot_module.h"

#include "lowmem/core/check.h"

namespace lowmem::nn {

std::shared_ptr<LinearLike> SlotModule::register_slot(
    const std::string& name, std::shared_ptr<LinearLike> layer) {
  LOWMEM_CHECK(layer != nullptr, "[slots] slot '", name, "' given a null layer");
  LOWMEM_CHECK(!slots_.count(name), "[slots] slot '", name, "' already exists");
  register_module(name, layer);
  slots_[name] = layer;
  return layer;
}

LinearLike& SlotModule::linear(const std::string& name) const {
  auto it = slots_.find(name);
  LOWMEM_CHECK(it != slots_.end(), "[slots] no slot named '", name, "'");
  return *it->second;
}

std::shared_ptr<LinearLike> SlotModule::slot(const std::string& name) const {
  auto it = slots_.find(name);
  LOWMEM_CHECK(it != slots_.end(), "[slots] no slot named '", name, "'");
  return it->second;
}

void SlotModule::replace_slot(const std::string& name,
                              std::shared_ptr<LinearLike> layer) {
  auto it = slots_.find(name);
  LOWMEM_CHECK(it != slots_.end(), "[slots] no slot named '", name, "'");
  LOWMEM_CHECK(layer != nullptr, "[slots] slot '", name, "' given a null layer");
  replace_module(name, layer);
  it->second = std::move(layer);
}

std::vector<SlotRef> find_slots(torch::nn::Module& root) {
  std::vector<SlotRef> out;
  auto add = [&out](SlotModule* owner, const std::string& prefix) {
    if (!owner) return;
    for (const auto& kv : owner->slots()) {
      std::string path = prefix.empty() ? kv.first : prefix + "." + kv.first;
      out.push_back(SlotRef{path, owner, kv.first});
    }
  };
  // The root is visited through its address: named_modules(include_self)
  // needs it to live in a shared_ptr, and models are often on the stack.
  add(dynamic_cast<SlotModule*>(&root), "");
  for (const auto& item : root.named_modules(/*name_prefix=*/"",
                                             /*include_self=*/false)) {
    add(dynamic_cast<SlotModule*>(item.value().get()), item.key());
  }
  return out;
}

}  // namespace lowmem::nn
