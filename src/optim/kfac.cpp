#include "lowmem/optim/kfac.h"

#include <ATen/ATen.h>
#include <torch/serialize/archive.h>

#include "kronecker_detail.h"
#include "lowmem/core/check.h"
#include "lowmem/optim/singd.h"

namespace lowmem::optim {

void validate(const KfacOptions& o) {
  LOWMEM_CHECK(o.lr() >= 0.0, "[kfac] lr must be >= 0, got ", o.lr());
  LOWMEM_CHECK(o.momentum() >= 0.0, "[kfac] momentum must be >= 0, got ", o.momentum());
  LOWMEM_CHECK(
      o.stat_decay() >= 0.0 && o.stat_decay() < 1.0,
      "[kfac] stat_decay must be in [0, 1), got ", o.stat_decay());
  LOWMEM_CHECK(o.damping() > 0.0, "[kfac] damping must be > 0, got ", o.damping());
  LOWMEM_CHECK(
      o.weight_decay() >= 0.0, "[kfac] weight_decay must be >= 0, got ",
      o.weight_decay());
  LOWMEM_CHECK(o.T() >= 1, "[kfac] T must be >= 1, got ", o.T());
  LOWMEM_CHECK(
      o.kfac_approx() == "expand" || o.kfac_approx() == "reduce",
      "[kfac] kfac_approx must be expand or reduce, got '", o.kfac_approx(), "'");
  LOWMEM_CHECK(
      o.loss_average() == "none" || o.loss_average() == "batch" ||
          o.loss_average() == "batch+sequence",
      "[kfac] loss_average must be none, batch or batch+sequence, got '",
      o.loss_average(), "'");
  parse_dtype(o.factor_dtype());
}

namespace {
KfacOptions kfac_checked(KfacOptions o) {
  validate(o);
  return o;
}

// (M + damping I)^-1 computed in fp32 (fp64 for fp64), returned in M's dtype.
at::Tensor damped_inverse(const at::Tensor& m, double damping, int64_t step) {
  auto cdt = m.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor x = m.to(cdt);
  x.diagonal().add_(damping);
  auto res = at::linalg_inv_ex(x);
  at::Tensor info = std::get<1>(res);
  LOWMEM_CHECK(
      info.max().item<int64_t>() == 0,
      "[kfac] damped factor is singular at step ", step);
  return std::get<0>(res).to(m.scalar_type());
}
}  // namespace

KFAC::KFAC(torch::nn::Module& model, KfacOptions defaults)
    : KFAC(nn::find_curvature_layers(model), std::move(defaults)) {}

KFAC::KFAC(std::vector<nn::CurvatureLayer> layers, KfacOptions defaults)
    : KroneckerOptimizer(
          std::move(layers),
          std::make_unique<KfacOptions>(kfac_checked(std::move(defaults))),
          "[kfac]") {
  const auto& o = opts();
  auto dt = parse_dtype(o.factor_dtype());
  for (size_t i = 0; i < layers_.size(); ++i) {
    const auto& l = layers_[i];
    auto wdt = l.weight.scalar_type();
    auto fdt = dt ? *dt
                  : ((wdt == at::kHalf || wdt == at::kBFloat16) ? at::kFloat : wdt);
    auto opt = at::TensorOptions().device(l.weight.device()).dtype(fdt);
    LayerState s;
    s.A = at::eye(l.dim_k(), opt.dtype(at::kFloat)).to(fdt);
    s.G = at::eye(l.dim_c(), opt.dtype(at::kFloat)).to(fdt);
    s.A_inv = s.A.clone();
    s.G_inv = s.G.clone();
    state_.push_back(std::move(s));
    detail::attach_tap(
        l, taps_, o.loss_average(), o.kfac_approx(), fdt, fdt,
        [this, i](const at::Tensor& a, const at::Tensor& g) {
          auto& st = state_[i];
          at::Tensor u = at::matmul(a.t(), a), gg = at::matmul(g.t(), g);
          st.U = st.U.defined() ? st.U + u : u;
          st.Gn = st.Gn.defined() ? st.Gn + gg : gg;
        });
  }
  arm_taps();
}

const KfacOptions& KFAC::opts() const {
  return static_cast<const KfacOptions&>(param_groups_.at(0).options());
}

at::Tensor KFAC::step(LossClosure closure) {
  LOWMEM_CHECK(!closure, "[kfac] a closure is not supported");
  at::NoGradGuard no_grad;
  const auto& o = opts();
  const bool refresh = steps_ % o.T() == 0;
  if (refresh) {  // data-parallel: the workers' a^T a, g^T g averaged
    std::vector<at::Tensor> pending;
    for (const auto& s : state_) {
      if (s.U.defined()) pending.insert(pending.end(), {s.U, s.Gn});
    }
    average_statistics(std::move(pending));
  }
  for (size_t i = 0; i < layers_.size(); ++i) {
    auto& l = layers_[i];
    auto& s = state_[i];
    at::Tensor v = detail::grad_matrix(l);
    // Without a gradient (unused, or another ZeRO worker updates the
    // layer) the factors still take the recorded curvature, as with SINGD.
    if (refresh && (v.defined() || s.U.defined())) {
      LOWMEM_CHECK(
          s.U.defined(), "[kfac] layer '", l.path,
          "' recorded no curvature on refresh step ", steps_);
      const double rho = o.stat_decay();
      s.A.mul_(rho).add_(s.U, 1.0 - rho);
      s.G.mul_(rho).add_(s.Gn, 1.0 - rho);
      s.U = at::Tensor();
      s.Gn = at::Tensor();
      s.A_inv = damped_inverse(s.A, o.damping(), steps_);
      s.G_inv = damped_inverse(s.G, o.damping(), steps_);
    }
    if (!v.defined()) {
      s.U = at::Tensor();
      s.Gn = at::Tensor();
      continue;
    }
    // N = G^-1 V A^-1 in the factor dtype.
    at::Tensor nat = at::matmul(at::matmul(s.G_inv, v.to(s.A.scalar_type())), s.A_inv)
                         .to(v.scalar_type());
    detail::apply_natural_gradient(l, nat, s.momentum_weight, s.momentum_bias, o.lr(),
                                   o.momentum(), o.weight_decay());
  }
  ++steps_;
  detail::finish_step_taps(taps_, steps_, o.T());
  return {};
}

int64_t KFAC::refresh_period() const { return opts().T(); }

bool KFAC::forget_state(const at::Tensor& param) {
  detail::forget_momentum(layers_, state_, param);
  return true;
}

std::vector<at::Tensor> KFAC::state_tensors() const {
  std::vector<at::Tensor> out;
  for (const auto& s : state_)
    for (const auto* t : {&s.A, &s.G, &s.A_inv, &s.G_inv, &s.momentum_weight,
                          &s.momentum_bias})
      if (t->defined()) out.push_back(*t);
  return out;
}

int64_t KFAC::preconditioner_bytes() const {
  int64_t n = 0;
  for (const auto& s : state_)
    for (const auto* t : {&s.A, &s.G, &s.A_inv, &s.G_inv})
      n += t->numel() * static_cast<int64_t>(t->element_size());
  return n;
}

void KFAC::save(torch::serialize::OutputArchive& ar) const {
  ar.write("kfac/format_version", c10::IValue(int64_t{1}));
  ar.write("kfac/steps", c10::IValue(steps_));
  ar.write("kfac/num_layers", c10::IValue(static_cast<int64_t>(layers_.size())));
  for (size_t i = 0; i < state_.size(); ++i) {
    LayerState s = state_[i];  // shares the tensors; fields() needs non-const
    std::string p = "kfac/layer/" + std::to_string(i) + "/";
    for (auto kv : s.fields()) {
      ar.write(p + kv.first + "/present", c10::IValue(kv.second->defined()));
      if (kv.second->defined()) ar.write(p + kv.first, *kv.second, true);
    }
  }
}

void KFAC::load(torch::serialize::InputArchive& ar) {
  c10::IValue v;
  ar.read("kfac/format_version", v);
  LOWMEM_CHECK(v.toInt() == 1, "[kfac] unsupported checkpoint format ", v.toInt());
  ar.read("kfac/num_layers", v);
  LOWMEM_CHECK(
      v.toInt() == static_cast<int64_t>(layers_.size()), "[kfac] checkpoint has ",
      v.toInt(), " layers, optimizer has ", layers_.size());
  ar.read("kfac/steps", v);
  steps_ = v.toInt();
  for (size_t i = 0; i < state_.size(); ++i) {
    auto& s = state_[i];
    std::string p = "kfac/layer/" + std::to_string(i) + "/";
    for (auto kv : s.fields()) {
      ar.read(p + kv.first + "/present", v);
      if (!v.toBool()) {
        // An absent momentum keeps the current one: a sharded checkpoint
        // is loaded shard after shard, each with its owner's momenta.
        const std::string name = kv.first;
        if (name.rfind("momentum_", 0) != 0) *kv.second = at::Tensor();
        continue;
      }
      at::Tensor t;
      ar.read(p + kv.first, t, true);
      *kv.second = t.to(layers_[i].weight.device());
    }
    LOWMEM_CHECK(
        s.A.defined() && s.A.size(0) == layers_[i].dim_k() && s.G.defined() &&
            s.G.size(0) == layers_[i].dim_c(),
        "[kfac] checkpoint factor shapes do not match layer ", layers_[i].path);
  }
  arm_taps();
}

}  // namespace lowmem::optim
