// A tiny regression model and a seekable batch source for trainer tests.
#pragma once

#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include "lowmem/data/batch.h"

namespace lowmem::testing {

/// y = tanh(x W1^T + b1) W2^T + b2, optional dropout on the hidden layer.
struct TinyNet : torch::nn::Module {
  explicit TinyNet(double dropout = 0.0, int64_t in = 4, int64_t hidden = 8)
      : fc1(register_module("fc1", torch::nn::Linear(in, hidden))),
        fc2(register_module("fc2", torch::nn::Linear(hidden, 1))),
        p(dropout) {}
  at::Tensor forward(const at::Tensor& x) {
    auto h = torch::tanh(fc1->forward(x));
    if (p > 0.0) {
      h = torch::dropout(h, p, is_training());
    }
    return fc2->forward(h);
  }
  at::Tensor loss(const data::Batch& b) {
    return torch::mse_loss(forward(b.input), b.target);
  }
  torch::nn::Linear fc1, fc2;
  double p;
};

/// Batch i is drawn from a generator seeded by (seed, i): seeking is exact.
class RegressionSource : public data::BatchSource {
 public:
  RegressionSource(int64_t batch, int64_t seed = 1, int64_t in = 4)
      : batch_(batch), seed_(seed), in_(in) {}
  data::Batch at_position(int64_t i) const {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(
        static_cast<uint64_t>(seed_ * 1000003 + i));
    auto x = at::randn({batch_, in_}, gen);
    auto w = at::linspace(-1.0, 1.0, in_).unsqueeze(1);
    auto y = at::sin(x.matmul(w)) + 0.1 * at::randn({batch_, 1}, gen);
    return {x, y};
  }
  data::Batch next() override { return at_position(pos_++); }
  int64_t position() const override { return pos_; }
  void seek(int64_t p) override { pos_ = p; }
  std::string describe() const override { return "regression"; }

 private:
  int64_t batch_, seed_, in_;
  int64_t pos_ = 0;
};

}  // namespace lowmem::testing
