#include "lowmem/optim/singd.h"

#include <ATen/ATen.h>
#include <torch/serialize/archive.h>

#include <algorithm>
#include <cmath>

#include "kronecker_detail.h"
#include "lowmem/core/check.h"
#include "lowmem/core/dtype.h"

namespace lowmem::optim {

namespace st = structures;

std::pair<std::string, std::string> split_pair(const std::string& s) {
  auto comma = s.find(',');
  if (comma == std::string::npos) return {s, s};
  return {s.substr(0, comma), s.substr(comma + 1)};
}

c10::optional<at::ScalarType> parse_dtype(const std::string& s) {
  if (s.empty() || s == "none") return c10::nullopt;
  const auto t = dtype_from_name(s);
  LOWMEM_CHECK(t.has_value(),
               "[singd] preconditioner_dtype must be empty, float32, "
               "bfloat16, float16 or float64, got '",
               s, "'");
  return t;
}

void validate(const SingdOptions& o) {
  // Official: lr, lr_cov, alpha1, momentum, weight_decay must be >= 0.
  LOWMEM_CHECK(o.lr() >= 0.0, "[singd] lr must be >= 0, got ", o.lr());
  LOWMEM_CHECK(o.lr_cov() >= 0.0, "[singd] lr_cov must be >= 0, got ", o.lr_cov());
  LOWMEM_CHECK(o.alpha1() >= 0.0, "[singd] alpha1 must be >= 0, got ", o.alpha1());
  LOWMEM_CHECK(
      o.momentum() >= 0.0, "[singd] momentum must be >= 0, got ", o.momentum());
  LOWMEM_CHECK(
      o.weight_decay() >= 0.0, "[singd] weight_decay must be >= 0, got ",
      o.weight_decay());
  LOWMEM_CHECK(o.damping() >= 0.0, "[singd] damping must be >= 0, got ", o.damping());
  LOWMEM_CHECK(o.T() >= 1, "[singd] T must be >= 1, got ", o.T());
  LOWMEM_CHECK(
      o.init_grad_scale() > 0.0, "[singd] init_grad_scale must be > 0, got ",
      o.init_grad_scale());
  auto s = split_pair(o.structures());
  st::check_structure_key(s.first);
  st::check_structure_key(s.second);
  LOWMEM_CHECK(
      o.kfac_approx() == "expand" || o.kfac_approx() == "reduce",
      "[singd] kfac_approx must be expand or reduce, got '", o.kfac_approx(),
      "'");
  LOWMEM_CHECK(
      o.loss_average() == "none" || o.loss_average() == "batch" ||
          o.loss_average() == "batch+sequence",
      "[singd] loss_average must be none, batch or batch+sequence, got '",
      o.loss_average(), "'");
  auto d = split_pair(o.preconditioner_dtype());
  parse_dtype(d.first);
  parse_dtype(d.second);
}

namespace {

SingdOptions checked(SingdOptions o) {
  validate(o);
  // Official: kfac_like forces alpha1 = 0 (with a warning).
  if (o.kfac_like()) o.alpha1(0.0);
  return o;
}

at::ScalarType resolve_dtype(
    const c10::optional<at::ScalarType>& d, const at::Tensor& w) {
  if (d) return *d;
  auto t = w.scalar_type();
  // House rule: no half-precision state unless asked for explicitly.
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

}  // namespace

SINGD::SINGD(torch::nn::Module& model, SingdOptions defaults)
    : SINGD(nn::find_curvature_layers(model), std::move(defaults)) {}

SINGD::SINGD(std::vector<nn::CurvatureLayer> layers, SingdOptions defaults)
    : KroneckerOptimizer(
          std::move(layers),
          std::make_unique<SingdOptions>(checked(std::move(defaults))),
          "[singd]") {
  prev_grad_scale_ = opts().init_grad_scale();
  init_layers();
  arm_taps();
}

const SingdOptions& SINGD::opts() const {
  return static_cast<const SingdOptions&>(param_groups_.at(0).options());
}

void SINGD::init_layers() {
  const auto& o = opts();
  auto keys = split_pair(o.structures());
  auto dts = split_pair(o.preconditioner_dtype());
  st::StructureOptions so;
  so.correct_block_transpose = o.correct_block_transpose();
  state_.clear();
  taps_.clear();
  for (size_t i = 0; i < layers_.size(); ++i) {
    const auto& l = layers_[i];
    LayerState s;
    s.dtype_k = resolve_dtype(parse_dtype(dts.first), l.weight);
    s.dtype_c = resolve_dtype(parse_dtype(dts.second), l.weight);
    auto dev = l.weight.device();
    auto ok = at::TensorOptions().device(dev).dtype(s.dtype_k);
    auto oc = at::TensorOptions().device(dev).dtype(s.dtype_c);
    s.K = st::make_structured(keys.first, l.dim_k(), ok, true, so);
    s.C = st::make_structured(keys.second, l.dim_c(), oc, true, so);
    if (o.alpha1() != 0.0) {
      s.m_K = s.K->zeros_like();
      s.m_C = s.C->zeros_like();
    }
    state_.push_back(std::move(s));
    detail::attach_tap(
        l, taps_, o.loss_average(), o.kfac_approx(), state_.back().dtype_k,
        state_.back().dtype_c,
        [this, i](const at::Tensor& a, const at::Tensor& g) { accumulate(i, a, g); });
  }
}

void SINGD::accumulate(size_t i, const at::Tensor& a, const at::Tensor& g0) {
  auto& s = state_[i];
  // H_K = Pi(K^T a^T a K), H_C = Pi(C^T g^T g C) with the current K, C.
  auto h_k = s.K->from_inner(a.t());
  at::Tensor g = g0;
  if (prev_grad_scale_ != 1.0) g = g / std::sqrt(prev_grad_scale_);
  auto h_c = s.C->from_inner(g.t());
  if (s.H_K) {
    s.H_K->add_(*h_k);
    s.H_C->add_(*h_c);
  } else {
    s.H_K = std::move(h_k);
    s.H_C = std::move(h_c);
  }
}

void SINGD::update_preconditioner(size_t i, double grad_scale) {
  const auto& o = opts();
  auto& s = state_[i];
  LOWMEM_CHECK(
      s.H_K && s.H_C, "[singd] layer '", layers_[i].path,
      "' has a gradient but recorded no curvature on refresh step ", steps_,
      " (did its forward run with grad enabled after the previous step?)");
  auto h_k = std::move(s.H_K);
  auto h_c = std::move(s.H_C);
  const double u = prev_grad_scale_ / (grad_scale * grad_scale);
  auto ktk = s.K->from_inner({});
  auto ctc = s.C->from_inner({});
  const bool kfac_like = o.kfac_like();
  const double damping = o.damping(), alpha1 = o.alpha1();
  const double scale = 0.5 * (o.normalize_lr_cov() ? 1.0 - alpha1 : 1.0);

  auto m_k = s.K->zeros_like();
  m_k->add_(*h_k, kfac_like ? 1.0 : u * h_c->average_trace());
  m_k->add_(*ktk, damping * (kfac_like ? 1.0 : ctc->average_trace()));
  m_k->diag_add_(-1.0);
  m_k->mul_(scale);

  auto m_c = s.C->zeros_like();
  m_c->add_(*h_c, kfac_like ? u : u * h_k->average_trace());
  m_c->add_(*ctc, damping * (kfac_like ? 1.0 : ktk->average_trace()));
  m_c->diag_add_(-1.0);
  m_c->mul_(scale);

  if (alpha1 != 0.0) {
    m_c->add_(*s.m_C, alpha1);
    m_k->add_(*s.m_K, alpha1);
  }
  double beta1 = o.lr_cov_schedule() ? o.lr_cov_schedule()(steps_) : o.lr_cov();
  double beta1_k = beta1, beta1_c = beta1;
  if (o.normalize_lr_cov()) {
    beta1_k /= std::max(1.0, m_k->infinity_vector_norm());
    beta1_c /= std::max(1.0, m_c->infinity_vector_norm());
  }
  // K <- K - beta1 K m_K (first-order Lie-group step), same for C.
  s.K->add_(*s.K->matmul(*m_k), -beta1_k);
  s.C->add_(*s.C->matmul(*m_c), -beta1_c);
  if (alpha1 != 0.0) {
    s.m_K = std::move(m_k);
    s.m_C = std::move(m_c);
  }
}

at::Tensor SINGD::step(LossClosure closure) {
  LOWMEM_CHECK(!closure, "[singd] a closure is not supported (as official)");
  at::NoGradGuard no_grad;
  const auto& o = opts();
  const double grad_scale = grad_scale_.value_or(1.0);
  const bool refresh = steps_ % o.T() == 0;
  if (refresh) sync_curvature();
  for (size_t i = 0; i < layers_.size(); ++i) {
    auto& l = layers_[i];
    auto& s = state_[i];
    at::Tensor v = detail::grad_matrix(l);
    // A layer without a gradient is unused this step (deviation: skipped),
    // or another ZeRO worker updates it: its factors still take the
    // recorded curvature, so they stay the same on every worker.
    if (refresh && (v.defined() || s.H_K)) update_preconditioner(i, grad_scale);
    if (!v.defined()) {
      s.H_K.reset();
      s.H_C.reset();
      continue;
    }
    if (grad_scale != 1.0) v = v / grad_scale;
    // N = C C^T V K K^T, in the dtypes of K and C.
    at::Tensor nat = s.K->matmul(s.K->rmatmat(v.t().to(s.dtype_k))).t();
    nat = s.C->matmul(s.C->rmatmat(nat.to(s.dtype_c))).to(v.scalar_type());
    detail::apply_natural_gradient(l, nat, s.momentum_weight, s.momentum_bias, o.lr(),
                                   o.momentum(), o.weight_decay());
  }
  ++steps_;
  prev_grad_scale_ = grad_scale;
  grad_scale_.reset();
  detail::finish_step_taps(taps_, steps_, o.T());
  return {};
}

void SINGD::sync_curvature() {
  std::vector<at::Tensor> pending;
  for (const auto& s : state_) {
    if (!s.H_K) continue;
    for (const auto* m : {s.H_K.get(), s.H_C.get()})
      for (const auto& t : m->tensors()) pending.push_back(t);
  }
  average_statistics(std::move(pending));
}

bool SINGD::forget_state(const at::Tensor& param) {
  detail::forget_momentum(layers_, state_, param);
  return true;
}

int64_t SINGD::refresh_period() const { return opts().T(); }

void SINGD::set_grad_scale(double scale) {
  LOWMEM_CHECK(scale > 0.0, "[singd] grad scale must be > 0, got ", scale);
  grad_scale_ = scale;
}

std::vector<at::Tensor> SINGD::state_tensors() const {
  std::vector<at::Tensor> out;
  for (const auto& s : state_) {
    for (const auto* m : {s.K.get(), s.C.get(), s.m_K.get(), s.m_C.get()})
      if (m)
        for (const auto& t : m->tensors()) out.push_back(t);
    if (s.momentum_weight.defined()) out.push_back(s.momentum_weight);
    if (s.momentum_bias.defined()) out.push_back(s.momentum_bias);
  }
  return out;
}

int64_t SINGD::preconditioner_bytes() const {
  int64_t n = 0;
  for (const auto& s : state_)
    for (const auto* m : {s.K.get(), s.C.get(), s.m_K.get(), s.m_C.get()})
      if (m) n += m->nbytes();
  return n;
}

const structures::StructuredMatrix& SINGD::K(size_t i) const {
  return *state_.at(i).K;
}
const structures::StructuredMatrix& SINGD::C(size_t i) const {
  return *state_.at(i).C;
}

namespace {

void write_matrix(
    torch::serialize::OutputArchive& ar,
    const std::string& prefix,
    const st::StructuredMatrix* m) {
  ar.write(prefix + "/present", c10::IValue(m != nullptr));
  if (!m) return;
  ar.write(prefix + "/key", c10::IValue(m->key()));
  auto ts = m->tensors();
  for (size_t j = 0; j < ts.size(); ++j)
    ar.write(prefix + "/" + std::to_string(j), ts[j], /*is_buffer=*/true);
}

// Reads into `m` (which must exist with the same class) or clears it.
void read_matrix(
    torch::serialize::InputArchive& ar,
    const std::string& prefix,
    st::StructuredPtr& m,
    const st::StructuredMatrix& like) {
  c10::IValue present;
  ar.read(prefix + "/present", present);
  if (!present.toBool()) {
    m.reset();
    return;
  }
  c10::IValue key;
  ar.read(prefix + "/key", key);
  LOWMEM_CHECK(
      key.toStringRef() == like.key(), "[singd] checkpoint has structure '",
      key.toStringRef(), "' for ", prefix, ", optimizer uses '", like.key(), "'");
  auto ts = like.tensors();
  std::vector<at::Tensor> loaded;
  for (size_t j = 0; j < ts.size(); ++j) {
    at::Tensor t;
    ar.read(prefix + "/" + std::to_string(j), t, /*is_buffer=*/true);
    LOWMEM_CHECK(
        t.sizes() == ts[j].sizes(), "[singd] checkpoint tensor ", prefix, "/",
        j, " has shape ", t.sizes(), ", expected ", ts[j].sizes());
    loaded.push_back(t.to(ts[j].options()));
  }
  m = like.with_tensors(std::move(loaded));
}

void write_tensor(
    torch::serialize::OutputArchive& ar, const std::string& k, const at::Tensor& t) {
  ar.write(k + "/present", c10::IValue(t.defined()));
  if (t.defined()) ar.write(k, t, /*is_buffer=*/true);
}

void read_tensor(
    torch::serialize::InputArchive& ar,
    const std::string& k,
    at::Tensor& t,
    const at::Tensor& param) {
  c10::IValue present;
  ar.read(k + "/present", present);
  if (!present.toBool()) return;  // keeps `t` (see SINGD::load)
  at::Tensor x;
  ar.read(k, x, /*is_buffer=*/true);
  LOWMEM_CHECK(
      x.sizes() == param.sizes(), "[singd] checkpoint ", k, " has shape ",
      x.sizes(), ", expected ", param.sizes());
  t = x.to(param.device());
}

}  // namespace

void SINGD::save(torch::serialize::OutputArchive& ar) const {
  ar.write("singd/format_version", c10::IValue(int64_t{1}));
  ar.write("singd/steps", c10::IValue(steps_));
  ar.write("singd/prev_grad_scale", c10::IValue(prev_grad_scale_));
  ar.write("singd/num_layers", c10::IValue(static_cast<int64_t>(layers_.size())));
  auto o = opts();
  o.for_each_field([&](const char* name, const auto& v) {
    ar.write(std::string("singd/options/") + name, c10::IValue(v));
  });
  for (size_t i = 0; i < state_.size(); ++i) {
    const auto& s = state_[i];
    std::string p = "singd/layer/" + std::to_string(i);
    write_matrix(ar, p + "/K", s.K.get());
    write_matrix(ar, p + "/C", s.C.get());
    write_matrix(ar, p + "/m_K", s.m_K.get());
    write_matrix(ar, p + "/m_C", s.m_C.get());
    write_matrix(ar, p + "/H_K", s.H_K.get());
    write_matrix(ar, p + "/H_C", s.H_C.get());
    write_tensor(ar, p + "/momentum_weight", s.momentum_weight);
    write_tensor(ar, p + "/momentum_bias", s.momentum_bias);
  }
}

void SINGD::load(torch::serialize::InputArchive& ar) {
  c10::IValue v;
  ar.read("singd/format_version", v);
  LOWMEM_CHECK(v.toInt() == 1, "[singd] unsupported checkpoint format ", v.toInt());
  ar.read("singd/num_layers", v);
  LOWMEM_CHECK(
      v.toInt() == static_cast<int64_t>(layers_.size()), "[singd] checkpoint has ",
      v.toInt(), " layers, optimizer has ", layers_.size());
  ar.read("singd/options/structures", v);
  LOWMEM_CHECK(
      v.toStringRef() == opts().structures(), "[singd] checkpoint structures '",
      v.toStringRef(), "' != optimizer structures '", opts().structures(), "'");
  ar.read("singd/steps", v);
  steps_ = v.toInt();
  ar.read("singd/prev_grad_scale", v);
  prev_grad_scale_ = v.toDouble();
  for (size_t i = 0; i < state_.size(); ++i) {
    auto& s = state_[i];
    std::string p = "singd/layer/" + std::to_string(i);
    auto k_like = s.K->zeros_like();
    auto c_like = s.C->zeros_like();
    read_matrix(ar, p + "/K", s.K, *k_like);
    read_matrix(ar, p + "/C", s.C, *c_like);
    read_matrix(ar, p + "/m_K", s.m_K, *k_like);
    read_matrix(ar, p + "/m_C", s.m_C, *c_like);
    read_matrix(ar, p + "/H_K", s.H_K, *k_like);
    read_matrix(ar, p + "/H_C", s.H_C, *c_like);
    LOWMEM_CHECK(s.K && s.C, "[singd] checkpoint lacks K or C of layer ", i);
    // A momentum absent from the archive keeps the current one: a sharded
    // checkpoint is loaded shard after shard, each with its owner's.
    read_tensor(ar, p + "/momentum_weight", s.momentum_weight, layers_[i].weight);
    read_tensor(ar, p + "/momentum_bias", s.momentum_bias, layers_[i].bias);
  }
  arm_taps();
}

}  // namespace lowmem::optim
