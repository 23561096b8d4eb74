// SlotModule: a torch::nn::Module that holds its linear layers in named slots,
// so adapters can be swapped in by module path without stale handles.
//
// A user's own module becomes injectable by deriving from SlotModule and
// registering its projections with `register_slot`:
//
//   struct MyBlock : lowmem::nn::SlotModule {
//     MyBlock() { register_slot("fc", std::make_shared<Linear>(64, 64)); }
//     at::Tensor forward(const at::Tensor& x) { return linear("fc").forward(x);
//     }
//   };
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "lowmem/nn/linear.h"

namespace lowmem::nn {

class SlotModule : public torch::nn::Module {
 public:
  using torch::nn::Module::Module;

  /// Registers `layer` as child module `name` and as a slot.
  std::shared_ptr<LinearLike> register_slot(const std::string& name,
                                            std::shared_ptr<LinearLike> layer);
  /// The layer currently in slot `name` (throws if there is none).
  LinearLike& linear(const std::string& name) const;
  std::shared_ptr<LinearLike> slot(const std::string& name) const;
  /// Puts `layer` into slot `name` (replace_module + slot update together).
  void replace_slot(const std::string& name, std::shared_ptr<LinearLike> layer);
  const std::map<std::string, std::shared_ptr<LinearLike>>& slots() const {
    return slots_;
  }

 private:
  std::map<std::string, std::shared_ptr<LinearLike>> slots_;
};

/// One slot found by visit_slots: its full module path ("h.0.attn.qkv"), its
/// owner and the slot name inside the owner.
struct SlotRef {
  std::string path;
  SlotModule* owner;
  std::string name;
  std::shared_ptr<LinearLike> layer() const { return owner->slot(name); }
  void replace(std::shared_ptr<LinearLike> l) const {
    owner->replace_slot(name, std::move(l));
  }
};

/// Every slot under `root` (root included), in module-path order.
std::vector<SlotRef> find_slots(torch::nn::Module& root);

}  // namespace lowmem::nn

// TRANSITIONAL: the old names (see nn/linear.h).
namespace lowmem::adapters {
using nn::find_slots;
using nn::SlotModule;
using nn::SlotRef;
}  // namespace lowmem::adapters
