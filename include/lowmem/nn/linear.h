// The linear-layer slot that adapters, projections and curvature taps plug
// into. LibTorch's Module::replace_module re-registers a child but leaves typed
// member handles stale, so models keep their linear layers in named slots of a
// SlotModule (slot_module.h) and call them through `linear("name")`.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace lowmem::nn {

/// Receives a layer's input (forward) and the gradient of its output
/// (backward) on steps where it is armed (SINGD/KFAC curvature statistics).
/// Inputs have shape [..., in], output gradients [..., out].
class CurvatureTap {
 public:
  virtual ~CurvatureTap() = default;
  /// When false the layer records nothing and registers no hook.
  bool armed() const { return armed_; }
  void arm(bool on) { armed_ = on; }
  virtual void record_input(const at::Tensor& input) = 0;
  virtual void record_grad_output(const at::Tensor& grad_output) = 0;

 private:
  bool armed_ = false;
};

/// Anything that maps [..., in] -> [..., out] like torch::nn::Linear.
class LinearLike : public torch::nn::Module {
 public:
  LinearLike(int64_t in_features, int64_t out_features)
      : in_(in_features), out_(out_features) {}
  /// Records the input and hooks the output gradient when a tap is armed,
  /// then calls forward_impl.
  at::Tensor forward(const at::Tensor& x);
  /// The layer's computation (no tap handling).
  virtual at::Tensor forward_impl(const at::Tensor& x) = 0;
  /// Effective dense weight [out, in] (base + merged/unmerged update).
  virtual at::Tensor effective_weight() const = 0;
  /// Bias [out] or undefined.
  virtual at::Tensor bias() const = 0;
  /// The frozen or trainable base layer's weight parameter [out, in].
  virtual at::Tensor& base_weight() = 0;
  /// True for layers whose weight is stored quantized (no dense weight to
  /// merge an update into; base_weight() throws).
  virtual bool is_quantized() const { return false; }
  /// The dtype and device of the weight as the layer computes with it (a
  /// quantized layer: its compute dtype); adapters size their factors by it.
  virtual at::TensorOptions weight_options() { return base_weight().options(); }
  /// Adds `delta` [out, in] to the weight in place (no grad). A quantized
  /// layer dequantizes, adds and quantizes again (lossy).
  virtual void add_to_weight(const at::Tensor& delta);

  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }

  void set_tap(std::shared_ptr<CurvatureTap> tap) { tap_ = std::move(tap); }
  const std::shared_ptr<CurvatureTap>& tap() const { return tap_; }

 private:
  int64_t in_, out_;
  std::shared_ptr<CurvatureTap> tap_;
};

/// A slot layer around another one (the adapters, the projected adapter):
/// registers `base` as the child `child` and answers bias, base weight,
/// quantization and weight options from it.
class WrappedLinear : public LinearLike {
 public:
  at::Tensor bias() const override { return base_->bias(); }
  at::Tensor& base_weight() override { return base_->base_weight(); }
  bool is_quantized() const override { return base_->is_quantized(); }
  at::TensorOptions weight_options() override {
    return base_->weight_options();
  }
  const std::shared_ptr<LinearLike>& base() const { return base_; }

 protected:
  /// Throws "<owner> null base layer" if `base` is null.
  WrappedLinear(std::shared_ptr<LinearLike> base, const std::string& child,
                const std::string& owner);

  std::shared_ptr<LinearLike> base_;
};

struct LinearOptions {
  int64_t in_features;
  int64_t out_features;
  bool bias = true;
};

/// A dense linear layer y = x W^T + b with torch::nn::Linear's parameter names
/// ("weight" [out, in], "bias" [out]) and initialisation (Kaiming-uniform,
/// a = sqrt(5); bias U(-1/sqrt(in), 1/sqrt(in))).
class Linear final : public LinearLike {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true);
  /// Wraps given tensors as the parameters (no initialisation, no copy): a
  /// layer built directly in its dtype and device, e.g. a bf16 weight drawn
  /// N(0, 0.02) on the GPU. `weight` is [out, in]; `bias` undefined or [out].
  explicit Linear(at::Tensor weight, at::Tensor bias = {});
  at::Tensor forward_impl(const at::Tensor& x) override;
  at::Tensor effective_weight() const override { return weight_; }
  at::Tensor bias() const override { return bias_; }
  at::Tensor& base_weight() override { return weight_; }
  /// Re-draws weight and bias as at construction (uses the global RNG).
  void reset_parameters();

 private:
  at::Tensor weight_;
  at::Tensor bias_;
};

}  // namespace lowmem::nn
