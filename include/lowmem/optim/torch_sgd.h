// torch::optim::SGD's options as a field list, so SGD has an option section
// like lowmem's own optimizers (optim/registry.h). Fields and defaults mirror
// torch::optim::SGDOptions (LibTorch 1.13, torch/optim/sgd.h), except lr:
// SGD has no default rate there; 0.01 here.
#pragma once

#include <torch/optim/sgd.h>

namespace lowmem::optim {

struct TorchSgdOptions {
  double lr = 1e-2;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
  template <class V>
  void for_each_field(V&& v) {
    v("lr", lr);
    v("momentum", momentum);
    v("dampening", dampening);
    v("weight_decay", weight_decay);
    v("nesterov", nesterov);
  }
  /// The torch options; c10::Error ("[sgd] ...") on a bad value.
  torch::optim::SGDOptions options() const;
};

}  // namespace lowmem::optim
