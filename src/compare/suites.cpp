// The suites of `lowmem compare`: toy (an MLP on synthetic regression, for
// tests), pretrain (GPT from scratch on text) and finetune (ViT transfer on
// Fashion-MNIST from a cached base model).
#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <algorithm>
#include <filesystem>

#include "internal.h"
#include "lowmem/core/check.h"
#include "lowmem/nn/linear.h"
#include "lowmem/nn/slot_module.h"

namespace lowmem::compare::detail {
namespace {

// ---------------------------------------------------------------- toy suite
class ToyMLP : public nn::SlotModule {
 public:
  ToyMLP(int64_t in, int64_t hidden) {
    register_slot("fc1", std::make_shared<nn::Linear>(in, hidden));
    register_slot("fc2", std::make_shared<nn::Linear>(hidden, hidden));
    register_slot("head", std::make_shared<nn::Linear>(hidden, 1));
  }
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor h = at::tanh(linear("fc1").forward(x));
    h = at::tanh(linear("fc2").forward(h));
    return linear("head").forward(h);
  }
};

struct ToyData : SuiteData {
  at::Tensor x_train, y_train, x_val, y_val;  // [N, 8], [N, 1]
};

constexpr int64_t kToyIn = 8, kToyHidden = 32, kToyBatch = 32;

std::shared_ptr<SuiteData> toy_load(const CompareOptions& o) {
  auto d = std::make_shared<ToyData>();
  at::Generator g = at::detail::createCPUGenerator(o.seed + 12345);
  at::Tensor w = at::randn({kToyIn, 1}, g);
  auto make = [&](int64_t n, at::Tensor& x, at::Tensor& y) {
    x = at::randn({n, kToyIn}, g);
    y = at::sin(at::matmul(x, w)) + 0.05 * at::randn({n, 1}, g);
  };
  make(1024, d->x_train, d->y_train);
  make(256, d->x_val, d->y_val);
  return d;
}

Workload toy_build(SuiteData& sd, const CompareOptions& o,
                   const ModelVariant& variant) {
  const bool bf16 = variant.bf16;
  auto& d = static_cast<ToyData&>(sd);
  auto model = std::make_shared<ToyMLP>(kToyIn, kToyHidden);
  if (bf16) model->to(at::kBFloat16);
  const at::ScalarType dt = bf16 ? at::kBFloat16 : at::kFloat;
  Workload w;
  w.task = "MLP 8-32-32-1 on synthetic regression (1024 examples)";
  w.model = model;
  w.items_per_step = kToyBatch;
  w.item_unit = "samples/s";
  auto cursor = std::make_shared<int64_t>(0);
  w.next_batch = [&d, cursor]() {
    const int64_t n = d.x_train.size(0);
    const int64_t start = (*cursor * kToyBatch) % n;
    ++*cursor;
    return data::Batch{d.x_train.narrow(0, start, kToyBatch),
                       d.y_train.narrow(0, start, kToyBatch)};
  };
  w.loss = [model, dt](const data::Batch& b) {
    const c10::Device dev = device_of(*model);
    at::Tensor pred = model->forward(b.input.to(dev, dt)).to(at::kFloat);
    return at::mse_loss(pred, b.target.to(dev));
  };
  w.evaluate = [model, &d, dt]() {
    const c10::Device dev = device_of(*model);
    at::Tensor pred = model->forward(d.x_val.to(dev, dt)).to(at::kFloat);
    return Evaluation{at::mse_loss(pred, d.y_val.to(dev)).item<double>(), std::nullopt};
  };
  return w;
}

int64_t toy_steps(const CompareOptions& o) { return o.toy_steps; }

std::vector<Suite> make_suites() {
  std::vector<Suite> s;
  // No adapters in the toy suite: the default model key is never read.
  s.push_back(Suite{"toy",
                    "val_loss",
                    {},
                    nullptr,
                    toy_load,
                    toy_build,
                    toy_steps,
                    nullptr,
                    nullptr});
  add_model_suites(s);
  return s;
}

}  // namespace

const std::vector<Suite>& suites() {
  static const std::vector<Suite> s = make_suites();
  return s;
}

const Suite& suite(const std::string& name) {
  for (const auto& s : suites())
    if (s.name == name) return s;
  std::string known;
  for (const auto& s : suites()) known += (known.empty() ? "" : ", ") + s.name;
  LOWMEM_CHECK(false, "[compare] unknown suite '", name, "' (known: ", known, ")");
  return suites().front();  // unreachable
}

c10::Device device_of(const torch::nn::Module& module) {
  const auto params = module.parameters();
  return params.empty() ? c10::Device(c10::kCPU) : params.front().device();
}

}  // namespace lowmem::compare::detail
