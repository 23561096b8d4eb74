// torch::optim's get_lr/set_lr (what LR schedulers read and write) for
// options whose learning rate is a TORCH_ARG(double, lr).
#pragma once

#include <torch/optim/optimizer.h>

namespace lowmem::optim {

template <class Derived>
struct LrOptions : torch::optim::OptimizerCloneableOptions<Derived> {
  double get_lr() const override {
    return static_cast<const Derived&>(*this).lr();
  }
  void set_lr(const double lr) override { static_cast<Derived&>(*this).lr(lr); }
};

}  // namespace lowmem::optim
