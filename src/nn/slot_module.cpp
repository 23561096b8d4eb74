#include "lowmem/nn/slot_module.h"

#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>

#include "lowmem/core/check.h"

namespace lowmem::nn {

std::shared_ptr<LinearLike> SlotModule::register_slot(
    const std::string& name, std::shared_ptr<LinearLike> layer) {
  LOWMEM_CHECK(layer != nullptr, "[slots] slot '", name,
               "' given a null layer");
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
  LOWMEM_CHECK(layer != nullptr, "[slots] slot '", name,
               "' given a null layer");
  replace_module(name, layer);
  it->second = std::move(layer);
}

std::shared_ptr<LinearLike> SlotModule::remove_slot(const std::string& name) {
  auto it = slots_.find(name);
  LOWMEM_CHECK(it != slots_.end(), "[slots] no slot named '", name, "'");
  std::shared_ptr<LinearLike> layer = std::move(it->second);
  slots_.erase(it);
  unregister_module(name);
  return layer;
}

std::shared_ptr<LinearLike> SlotRef::layer() const {
  if (owner != nullptr) return owner->slot(name);
  LOWMEM_CHECK(sequence != nullptr, "[slots] empty slot reference '", path,
               "'");
  return std::dynamic_pointer_cast<LinearLike>(sequence->ptr(index));
}

void SlotRef::replace(std::shared_ptr<LinearLike> l) const {
  if (owner != nullptr) {
    owner->replace_slot(name, std::move(l));
    return;
  }
  LOWMEM_CHECK(sequence != nullptr, "[slots] empty slot reference '", path,
               "'");
  LOWMEM_CHECK(l != nullptr, "[slots] slot '", path, "' given a null layer");
  *(sequence->begin() + static_cast<std::ptrdiff_t>(index)) =
      torch::nn::AnyModule(l);
  sequence->replace_module(name, l);
}

namespace {

std::string join(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "." + name;
}

// The Sequential entries of `seq`: (child name, index), in order.
std::vector<std::pair<std::string, size_t>> entries(
    torch::nn::SequentialImpl& seq) {
  std::vector<std::pair<std::string, size_t>> out;
  const auto children = seq.named_children();
  for (size_t i = 0; i < seq.size(); ++i) {
    for (const auto& c : children) {
      if (c.value().get() == seq.ptr(i).get()) {
        out.emplace_back(c.key(), i);
        break;
      }
    }
  }
  return out;
}

// Calls fn(module, path) for `root` (path "") and every module under it.
template <class F>
void each_module(torch::nn::Module& root, F&& fn) {
  // The root is visited through its address: named_modules(include_self)
  // needs it to live in a shared_ptr, and models are often on the stack.
  fn(root, std::string());
  for (const auto& item : root.named_modules(/*name_prefix=*/"",
                                             /*include_self=*/false)) {
    fn(*item.value(), item.key());
  }
}

}  // namespace

std::vector<SlotRef> find_slots(torch::nn::Module& root) {
  std::vector<SlotRef> out;
  each_module(root, [&out](torch::nn::Module& m, const std::string& prefix) {
    if (auto* owner = dynamic_cast<SlotModule*>(&m)) {
      for (const auto& kv : owner->slots()) {
        SlotRef ref;
        ref.path = join(prefix, kv.first);
        ref.owner = owner;
        ref.name = kv.first;
        out.push_back(ref);
      }
    } else if (auto* seq = dynamic_cast<torch::nn::SequentialImpl*>(&m)) {
      for (const auto& [name, i] : entries(*seq)) {
        if (!std::dynamic_pointer_cast<LinearLike>(seq->ptr(i))) continue;
        SlotRef ref;
        ref.path = join(prefix, name);
        ref.sequence = seq;
        ref.name = name;
        ref.index = i;
        out.push_back(ref);
      }
    }
  });
  return out;
}

int64_t adopt_linears(torch::nn::Module& root) {
  struct Swap {
    torch::nn::SequentialImpl* seq;
    std::string name;
    size_t index;
    std::shared_ptr<torch::nn::LinearImpl> old;
  };
  std::vector<Swap> swaps;
  std::vector<std::string> stuck;
  each_module(root, [&](torch::nn::Module& m, const std::string& prefix) {
    auto* seq = dynamic_cast<torch::nn::SequentialImpl*>(&m);
    for (const auto& c : m.named_children()) {
      auto lin = std::dynamic_pointer_cast<torch::nn::LinearImpl>(c.value());
      if (!lin) continue;
      bool entry = false;
      if (seq != nullptr) {
        for (const auto& [name, i] : entries(*seq)) {
          if (name == c.key()) {
            swaps.push_back({seq, name, i, lin});
            entry = true;
          }
        }
      }
      if (!entry) stuck.push_back(join(prefix, c.key()));
    }
  });
  if (!stuck.empty()) {
    std::string list;
    for (size_t i = 0; i < stuck.size() && i < 8; ++i)
      list += (i ? ", " : "") + stuck[i];
    if (stuck.size() > 8) list += ", ...";
    LOWMEM_CHECK(false, "[slots] cannot adopt torch::nn::Linear '", list,
                 "': its parent calls it through its own handle, so a "
                 "swapped layer would never run. Hold it as a "
                 "lowmem::nn::Linear in a slot of a lowmem::nn::SlotModule "
                 "(register_slot(name, std::make_shared<nn::Linear>(in, out))"
                 " and call linear(name).forward(x)), or put it in a "
                 "torch::nn::Sequential");
  }
  for (const auto& s : swaps) {
    auto adopted = std::make_shared<Linear>(
        s.old->weight, s.old->options.bias() ? s.old->bias : at::Tensor());
    SlotRef ref;
    ref.sequence = s.seq;
    ref.name = s.name;
    ref.index = s.index;
    ref.replace(adopted);
  }
  return static_cast<int64_t>(swaps.size());
}

}  // namespace lowmem::nn
