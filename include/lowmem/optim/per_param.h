// PerParamOptimizer: the shared skeleton of lowmem's element-wise optimizers
// (CAME, Adafactor, fused AdamW, ...). It writes the step loop, the no-grad
// guard, the closure, per-parameter state lookup, save/load (torch::serialize
// archives, same layout as torch::optim::AdamW) and state accounting once; a
// subclass only describes init_state() and update().
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <torch/optim/optimizer.h>

#include <string>
#include <type_traits>
#include <vector>

#include "lowmem/core/check.h"
#include "lowmem/optim/extras.h"
#include "lowmem/optim/quant8.h"
#include "lowmem/optim/state_roles.h"

namespace lowmem::optim {

namespace detail {

/// Visitors used by FieldOptions / FieldState to (de)serialize fields; the
/// archive code lives in per_param.cpp so headers stay light.
struct FieldWriter {
  torch::serialize::OutputArchive& archive;
  void operator()(const char* name, double& v) const;
  void operator()(const char* name, bool& v) const;
  void operator()(const char* name, int64_t& v) const;
  void operator()(const char* name, c10::optional<double>& v) const;
  void operator()(const char* name, at::Tensor& v) const;  // skips undefined
  void operator()(const char* name, at::Tensor& v, StateRole) const {
    (*this)(name, v);
  }
  /// Writes "<name>_codes" (uint8) and "<name>_absmax" (skips undefined).
  void operator()(const char* name, BlockwiseQ8& v, StateRole) const;
};
struct FieldReader {
  torch::serialize::InputArchive& archive;
  void operator()(const char* name, double& v) const;
  void operator()(const char* name, bool& v) const;
  void operator()(const char* name, int64_t& v) const;
  void operator()(const char* name, c10::optional<double>& v) const;
  void operator()(const char* name, at::Tensor& v) const;  // absent: undefined
  void operator()(const char* name, at::Tensor& v, StateRole) const {
    (*this)(name, v);
  }
  /// Reads "<name>_codes" and "<name>_absmax" (absent: undefined); the map
  /// follows the role: signed for kLinear, unsigned for the squares.
  void operator()(const char* name, BlockwiseQ8& v, StateRole role) const;
};
/// Hands a FieldState's tensor fields and their roles to a StateTensorFn; a
/// tensor field listed without a role is an error.
struct RoleVisitor {
  const StateTensorFn& fn;
  template <class T>
  void operator()(const char*, T&) const {}
  void operator()(const char* name, at::Tensor&) const {
    LOWMEM_CHECK(false, "[optim] state field '", name,
                 "' declares no StateRole (v(name, tensor, role))");
  }
  void operator()(const char* name, at::Tensor& t, StateRole role) const {
    fn(name, t, role);
  }
  /// 8-bit state: fn sees the dequantized fp32 tensor; a tensor it replaces
  /// (GaLore's re-projection) is quantized back.
  void operator()(const char* name, BlockwiseQ8& q, StateRole role) const;
};
/// The key type of torch::optim::Optimizer::state(): the TensorImpl address
/// printed as a string in LibTorch 1.x, the TensorImpl pointer itself in 2.x.
using StateKey = typename std::decay_t<
    decltype(std::declval<torch::optim::Optimizer&>().state())>::key_type;
/// The map key torch::optim uses for a parameter's state.
StateKey state_key(const at::Tensor& param);

/// Test/benchmark switch: when true, optimizers skip their fused CPU kernels
/// and run the device-generic ATen path (what non-CPU tensors always use).
void set_reference_path(bool on);
bool reference_path();

}  // namespace detail

/// Options base: `Derived` lists its scalar fields once in
/// `template <class V> void for_each_field(V&& v)` as v("name", field_), with
/// field_ a double&, bool&, int64_t& or c10::optional<double>&. Save/load and
/// equality are derived from that list (the CLI/YAML layer uses it too).
template <class Derived>
struct FieldOptions : torch::optim::OptimizerCloneableOptions<Derived>,
                      detail::DecayOptions {
  /// The "weight_decay" field (0 without one): optim::weight_decay_of.
  double weight_decay_field() const override {
    double wd = 0.0;
    self().for_each_field([&wd](const char* name, auto& f) {
      if constexpr (std::is_same_v<std::decay_t<decltype(f)>, double>) {
        if (std::string(name) == "weight_decay") wd = f;
      }
    });
    return wd;
  }
  void serialize(torch::serialize::OutputArchive& archive) const override {
    self().for_each_field(detail::FieldWriter{archive});
  }
  void serialize(torch::serialize::InputArchive& archive) override {
    self().for_each_field(detail::FieldReader{archive});
  }
  friend bool operator==(const Derived& a, const Derived& b) {
    bool equal = true;
    Derived copy = b;
    // Field lists are short: match every field of `a` with its namesake.
    const_cast<Derived&>(a).for_each_field(
        [&](const char* name, auto& fa) {
          copy.for_each_field([&](const char* other, auto& fb) {
            using A = std::decay_t<decltype(fa)>;
            using B = std::decay_t<decltype(fb)>;
            if constexpr (std::is_same_v<A, B>) {
              if (std::string(name) == other && !(fa == fb)) equal = false;
            }
          });
        });
    return equal;
  }

 private:
  Derived& self() const {
    return const_cast<Derived&>(static_cast<const Derived&>(*this));
  }
};

/// Param-state base: `Derived` has `int64_t step` and lists its fields once in
/// for_each_field: v("step", step), and each tensor with its role,
/// v("exp_avg", exp_avg, StateRole::kLinear) (optim/state_roles.h); 8-bit
/// state (optim/quant8.h) is a BlockwiseQ8 field listed the same way. Tensors
/// that are undefined (unused branches) are neither saved nor counted.
template <class Derived>
struct FieldState : torch::optim::OptimizerCloneableParamState<Derived>,
                    detail::RoledState {
  void visit_roles(const StateTensorFn& fn) override {
    self().for_each_field(detail::RoleVisitor{fn});
  }
  void serialize(torch::serialize::OutputArchive& archive) const override {
    self().for_each_field(detail::FieldWriter{archive});
  }
  void serialize(torch::serialize::InputArchive& archive) override {
    self().for_each_field(detail::FieldReader{archive});
  }
  /// Every defined state tensor (8-bit state: its codes and absmax).
  std::vector<at::Tensor> tensors() const {
    std::vector<at::Tensor> out;
    self().for_each_field([&](const char*, auto& f, auto...) {
      using F = std::decay_t<decltype(f)>;
      if constexpr (std::is_same_v<F, at::Tensor>) {
        if (f.defined()) out.push_back(f);
      } else if constexpr (std::is_same_v<F, BlockwiseQ8>) {
        if (f.defined()) {
          out.push_back(f.codes);
          out.push_back(f.absmax);
        }
      }
    });
    return out;
  }

 private:
  Derived& self() const {
    return const_cast<Derived&>(static_cast<const Derived&>(*this));
  }
};

/// The per-parameter optimizer skeleton. Options derive from
/// FieldOptions<Options> and must be constructible from a double (torch's
/// archive loader builds `Options(0)`); a free `validate(const Options&)`
/// (found by ADL) throws on bad values and is checked for every group at
/// construction and at every step (groups added later are covered).
template <class Options, class State>
class PerParamOptimizer : public torch::optim::Optimizer,
                          public OptimizerExtras {
 public:
  /// Runs the closure (with grad enabled) if given, then updates every
  /// parameter that has a gradient. `step` in the state is incremented before
  /// update() runs, so the first update sees step == 1.
  at::Tensor step(LossClosure closure = nullptr) final;
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;
  std::vector<at::Tensor> state_tensors() const override;

  /// The state of `param`, or nullptr before its first update.
  const State* state_of(const at::Tensor& param) const;
  /// Bytes of the state init_state() creates for `param` with the default
  /// options (undefined tensors count 0). `param` may live on the meta
  /// device: init_state only reads its shape, dtype and device, so nothing is
  /// allocated (lowmem plan sizes a 7B model's state this way).
  int64_t initial_state_bytes(const at::Tensor& param) const;

  /// Derived optimizers inherit these (`using PerParamOptimizer::
  /// PerParamOptimizer;`); both validate `defaults` and every group's options
  /// with the ADL-found `validate(const Options&)`.
  explicit PerParamOptimizer(
      std::vector<torch::optim::OptimizerParamGroup> groups,
      Options defaults = {});
  explicit PerParamOptimizer(std::vector<at::Tensor> params,
                             Options defaults = {});

 protected:
  /// Fresh (zero) state for `param` (fp32 whatever the param dtype).
  virtual void init_state(
      const at::Tensor& param, State& state, const Options& o) const = 0;
  /// One update of `param` (no grad mode). `grad` is dense.
  virtual void update(
      at::Tensor& param,
      const at::Tensor& grad,
      State& state,
      const Options& o) = 0;
  /// Name used in error messages, e.g. "came".
  virtual const char* tag() const = 0;
};

}  // namespace lowmem::optim
