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

namespace torch::nn {
class SequentialImpl;
}  // namespace torch::nn

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
  /// Removes slot `name` and its child module; returns its layer (throws if
  /// there is none). For model surgery before adapters are injected.
  std::shared_ptr<LinearLike> remove_slot(const std::string& name);
  const std::map<std::string, std::shared_ptr<LinearLike>>& slots() const {
    return slots_;
  }

 private:
  std::map<std::string, std::shared_ptr<LinearLike>> slots_;
};

/// One slot found by find_slots: its full module path ("h.0.attn.qkv") and
/// where it sits -- a slot of a SlotModule (`owner`, slot `name`) or an entry
/// of a torch::nn::Sequential (`sequence`, child `name`, position `index`)
/// that holds a LinearLike (e.g. after adopt_linears).
struct SlotRef {
  std::string path;
  SlotModule* owner = nullptr;
  torch::nn::SequentialImpl* sequence = nullptr;
  std::string name;
  size_t index = 0;
  std::shared_ptr<LinearLike> layer() const;
  /// Puts `l` where the slot's layer was (the Sequential's forward and its
  /// registered children both see it).
  void replace(std::shared_ptr<LinearLike> l) const;
};

/// Every slot under `root` (root included), in module-path order.
std::vector<SlotRef> find_slots(torch::nn::Module& root);

/// Makes a plain LibTorch model reachable by adapters, SINGD/KFAC taps and
/// GaLore's slot routing: every torch::nn::Linear that is an entry of a
/// torch::nn::Sequential under `root` is replaced by an nn::Linear wrapping
/// the same weight and bias tensors (no copy; parameter names unchanged).
/// Returns how many were adopted. A torch::nn::Linear anywhere else (a typed
/// member of a custom module, a ModuleList entry) cannot be swapped safely,
/// since its parent calls it through its own handle: throws, naming its path
/// and what to change (hold an nn::Linear in a SlotModule slot, or use a
/// Sequential). Checks everything before changing anything.
int64_t adopt_linears(torch::nn::Module& root);

}  // namespace lowmem::nn
