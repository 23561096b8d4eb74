#include "lowmem/adapters/snell.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/nn/init.h>

#include <cmath>
#include <limits>

#include "config_json.h"
#include "lowmem/core/check.h"
#include "lowmem/core/input.h"

namespace lowmem::adapters {
namespace {

// K_s for a given threshold τ (variant semantics; τ and the code's mask are
// gradient-stopped).
at::Tensor apply_threshold(const at::Tensor& k, const at::Tensor& tau,
                           const std::string& variant) {
  if (variant == "paper") return k * at::relu(k.abs() - tau);
  at::Tensor a = k.abs().detach();
  return k * (a * (a > tau).to(a.scalar_type()));
}

// In-place, gradient-free K -> K_s for a given τ (used by the custom
// Function; fewer d_in x d_out temporaries than apply_threshold).
void sparsify_(at::Tensor& k, const at::Tensor& tau, const std::string& variant) {
  at::Tensor a = k.abs();
  if (variant == "paper") {
    k.mul_(a.sub_(tau).clamp_min_(0));
  } else {
    at::Tensor keep = a > tau;
    k.mul_(a.mul_(keep));
  }
}

// u · K_s, saving only u, the parameters and τ (a scalar); K is rebuilt in
// backward.
struct SnellMatmul : public torch::autograd::Function<SnellMatmul> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& u,
                            const at::Tensor& a, const at::Tensor& b,
                            const at::Tensor& c, double q, std::string variant) {
    at::Tensor k = snell_kernel(a, b, c);
    at::Tensor tau = q > 0.0 ? snell_threshold(k.abs(), q, variant) : at::zeros({}, k.options());
    ctx->save_for_backward({u, a, b, c, tau});
    ctx->saved_data["q"] = q;
    ctx->saved_data["variant"] = variant;
    if (q > 0.0) sparsify_(k, tau, variant);
    return at::mm(u, k);
  }

  static torch::autograd::variable_list backward(
      torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &u = saved[0], &a = saved[1], &b = saved[2], &c = saved[3],
                     &tau = saved[4];
    const double q = ctx->saved_data["q"].toDouble();
    const std::string variant = ctx->saved_data["variant"].toStringRef();
    const at::Tensor& g = grads[0];  // [N, d_out]
    const int64_t h_count = a.size(0);
    // Recompute the distance matrices and K (bitwise as in forward, so the
    // saved τ selects the same entries).
    std::vector<at::Tensor> d(h_count);
    at::Tensor k;
    for (int64_t h = 0; h < h_count; ++h) {
      d[h] = at::cdist(a[h], b[h]);  // [d_in, d_out]
      k = h == 0 ? d[h] * c[h] : k.add_(d[h] * c[h]);
    }
    at::Tensor du, da, db, dc;
    at::Tensor gk = at::mm(u.t(), g);  // dL/dK_s [d_in, d_out]
    if (q > 0.0) {
      // dK_s/dK: code = the stopped mask S = |K|·1[|K|>τ];
      // paper = relu(|K|−τ) + |K|·1[|K|>τ] (τ stopped).
      at::Tensor abs_k = k.abs();
      at::Tensor keep = abs_k > tau;
      if (variant == "paper") {
        at::Tensor soft = (abs_k - tau).clamp_min_(0);
        if (ctx->needs_input_grad(0)) du = at::mm(g, (k * soft).t());
        gk.mul_(soft.add_(abs_k.mul_(keep)));
      } else {
        abs_k.mul_(keep);  // S
        if (ctx->needs_input_grad(0)) du = at::mm(g, (k * abs_k).t());
        gk.mul_(abs_k);
      }
    } else if (ctx->needs_input_grad(0)) {
      du = at::mm(g, k.t());
    }
    k = at::Tensor();
    if (ctx->needs_input_grad(1) || ctx->needs_input_grad(2)) {
      da = at::empty_like(a);
      db = at::empty_like(b);
      for (int64_t h = 0; h < h_count; ++h) {
        // M = c_h·G ⊘ D_h, 0 where D_h = 0 (as torch.cdist's backward).
        at::Tensor m = gk / d[h];
        m.masked_fill_(d[h] == 0, 0).mul_(c[h]);
        da[h] = m.sum(1, /*keepdim=*/true) * a[h] - at::mm(m, b[h]);
        db[h] = m.sum(0).unsqueeze(1) * b[h] - at::mm(m.t(), a[h]);
      }
    }
    if (ctx->needs_input_grad(3)) {
      dc = at::empty_like(c);
      for (int64_t h = 0; h < h_count; ++h) dc[h] = (gk * d[h]).sum();
    }
    return {du, da, db, dc, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

void validate(const SnellOptions& o) {
  LOWMEM_CHECK(o.r() > 0, "[snell] r must be > 0, got ", o.r());
  LOWMEM_CHECK(o.pieces() > 0, "[snell] pieces must be > 0, got ", o.pieces());
  LOWMEM_CHECK(o.r() % o.pieces() == 0, "[snell] r ", o.r(),
               " must be divisible by pieces ", o.pieces());
  LOWMEM_CHECK(std::isfinite(o.coeff()), "[snell] coeff must be finite, got ", o.coeff());
  LOWMEM_CHECK(o.sparsity() >= 0.0 && o.sparsity() < 1.0,
               "[snell] sparsity must be in [0, 1), got ", o.sparsity());
  LOWMEM_CHECK(o.sparsify() == "code" || o.sparsify() == "paper",
               "[snell] sparsify must be code or paper, got ",
               quote(o.sparsify()));
  LOWMEM_CHECK(o.dropout() >= 0.0 && o.dropout() < 1.0,
               "[snell] dropout must be in [0, 1), got ", o.dropout());
  LOWMEM_CHECK(o.drop_path() >= 0.0 && o.drop_path() < 1.0,
               "[snell] drop_path must be in [0, 1), got ", o.drop_path());
}

at::Tensor snell_kernel(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c) {
  LOWMEM_CHECK(a.dim() == 3 && b.dim() == 3 && a.size(0) == b.size(0) &&
                   a.size(2) == b.size(2) && c.numel() == a.size(0),
               "[snell] bad factor shapes A ", a.sizes(), " B ", b.sizes(), " c ",
               c.sizes());
  at::Tensor k;
  for (int64_t h = 0; h < a.size(0); ++h) {
    at::Tensor t = at::cdist(a[h], b[h]) * c[h];
    k = h == 0 ? t : k + t;
  }
  return k;
}

at::Tensor snell_threshold(const at::Tensor& abs_k, double q, const std::string& variant) {
  at::NoGradGuard g;
  at::Tensor flat = abs_k.detach().reshape({-1});
  const int64_t n = flat.numel();
  if (variant == "paper") {
    // τ = the ⌈q·n⌉-th smallest |K| (Eq. 5).
    int64_t kth = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(q * n)));
    return std::get<0>(at::kthvalue(flat, std::min(kth, n)));
  }
  // torch.quantile(..., interpolation='linear'), via kthvalue so that inputs
  // above torch.quantile's 2^24 limit work.
  const double p = q * static_cast<double>(n - 1);
  const int64_t lo = static_cast<int64_t>(std::floor(p));
  const double frac = p - static_cast<double>(lo);
  at::Tensor v_lo = std::get<0>(at::kthvalue(flat, lo + 1));
  if (frac == 0.0 || lo + 1 >= n) return v_lo;
  // The (lo+2)-th smallest: v_lo again if it is repeated, else the smallest
  // value above it (one pass instead of a second selection).
  at::Tensor above = flat.masked_fill(flat <= v_lo, std::numeric_limits<double>::infinity());
  at::Tensor v_hi = at::where((flat <= v_lo).sum() >= lo + 2, v_lo, above.min());
  return v_lo + (v_hi - v_lo) * frac;
}

at::Tensor snell_sparsify(const at::Tensor& k, double q, const std::string& variant) {
  if (q <= 0.0) return k;
  return apply_threshold(k, snell_threshold(k.abs().detach(), q, variant), variant);
}

at::Tensor snell_matmul(const at::Tensor& u, const at::Tensor& a, const at::Tensor& b,
                        const at::Tensor& c, double q, const std::string& variant) {
  return SnellMatmul::apply(u, a, b, c, q, variant);
}

// ---------------------------------------------------------------------------

SnellLinear::SnellLinear(std::shared_ptr<nn::LinearLike> base,
                         const SnellOptions& options)
    : AdapterLinear(std::move(base)), options_(options) {
  validate(options_);
  // The base's compute dtype and device (an NF4 base has no dense weight).
  const at::TensorOptions w = this->base()->weight_options();
  auto opts = adapter_options(w);
  const int64_t h = options_.pieces(), rh = options_.r() / options_.pieces();
  a_ = register_parameter("snell_A", at::empty({h, in_features(), rh}, opts));
  b_ = register_parameter("snell_B", at::empty({h, out_features(), rh}, opts));
  c_ = register_parameter("snell_coeff", at::empty({h}, opts),
                          /*requires_grad=*/options_.learnable_coeff());
  at::NoGradGuard g;
  // kaiming_uniform(a=√5) on the 3-D tensors: fan_in = size(1)·size(2).
  torch::nn::init::kaiming_uniform_(a_, std::sqrt(5.0));
  torch::nn::init::kaiming_uniform_(b_, std::sqrt(5.0));
  for (int64_t i = 0; i < h; ++i) c_[i].fill_(i % 2 == 0 ? options_.coeff() : -options_.coeff());
}

std::vector<at::Tensor> SnellLinear::adapter_parameters() const {
  if (options_.learnable_coeff()) return {a_, b_, c_};
  return {a_, b_};
}

at::Tensor SnellLinear::delta_output(const at::Tensor& x) {
  at::Tensor u = x.to(a_.scalar_type());
  if (options_.dropout() > 0.0) u = at::dropout(u, options_.dropout(), is_training());
  at::Tensor flat = u.reshape({-1, in_features()});
  at::Tensor c = options_.learnable_coeff() ? c_ : c_.detach();
  at::Tensor out;
  if (options_.recompute()) {
    out = snell_matmul(flat, a_, b_, c, options_.sparsity(), options_.sparsify());
  } else {
    out = at::mm(flat, snell_sparsify(snell_kernel(a_, b_, c), options_.sparsity(),
                                      options_.sparsify()));
  }
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = out_features();
  out = out.view(shape);
  if (options_.drop_path() > 0.0 && is_training() && x.dim() >= 2) {
    // Per-sample stochastic depth on the branch (timm DropPath), rescaled.
    const double keep = 1.0 - options_.drop_path();
    std::vector<int64_t> mshape(x.dim(), 1);
    mshape[0] = x.size(0);
    at::Tensor mask = at::empty(mshape, out.options()).bernoulli_(keep).div_(keep);
    out = out * mask;
  }
  return out;
}

at::Tensor SnellLinear::delta_weight() const {
  at::NoGradGuard g;
  return snell_sparsify(snell_kernel(a_, b_, c_), options_.sparsity(), options_.sparsify())
      .t()
      .contiguous();
}

// ---------------------------------------------------------------------------

std::shared_ptr<SnellModel> inject_snell(std::shared_ptr<torch::nn::Module> model,
                                         const TargetOptions& targets,
                                         const SnellOptions& options) {
  validate(options);
  std::shared_ptr<SnellModel> m(new SnellModel(std::move(model), targets, options));
  try {
    for (const auto& slot : m->prepare()) {
      m->wrap(slot, std::make_shared<SnellLinear>(slot.layer(), options));
    }
  } catch (...) {
    m->unload();  // leave the model as it was
    throw;
  }
  return m;
}

std::map<std::string, at::Tensor> SnellModel::state_tensors() const {
  std::map<std::string, at::Tensor> out = saved_module_tensors();
  for (const auto& l : layers()) {
    auto* s = static_cast<SnellLinear*>(l.layer.get());
    out[kPeftKeyPrefix + l.path + ".snell_A"] = s->snell_A();
    out[kPeftKeyPrefix + l.path + ".snell_B"] = s->snell_B();
    out[kPeftKeyPrefix + l.path + ".snell_coeff"] = s->snell_coeff();
  }
  return out;
}

std::string SnellModel::config_json() const {
  using detail::json;
  json j;
  j["peft_type"] = "SNELL";
  j["task_type"] = nullptr;
  j["base_model_name_or_path"] =
      base_model_name_or_path.empty() ? json(nullptr) : json(base_model_name_or_path);
  j["inference_mode"] = true;
  j["r"] = options_.r();
  j["pieces"] = options_.pieces();
  j["coeff"] = options_.coeff();
  j["learnable_coeff"] = options_.learnable_coeff();
  j["sparsity"] = options_.sparsity();
  j["sparsify"] = options_.sparsify();
  j["dropout"] = options_.dropout();
  j["drop_path"] = options_.drop_path();
  j["kernel"] = "piecewise_linear";
  detail::put_targets(j, targets());
  return j.dump(2);
}

std::pair<TargetOptions, SnellOptions> snell_config_from_json(const std::string& text) {
  using detail::get_or;
  const char* c = "snell";
  detail::json j = detail::parse_config(text, c);
  std::string type = get_or<std::string>(j, "peft_type", "", c);
  LOWMEM_CHECK(type == "SNELL", "[snell] adapter_config.json peft_type is ",
               quote(type), ", expected 'SNELL'");
  std::string kernel = get_or<std::string>(j, "kernel", "piecewise_linear", c);
  LOWMEM_CHECK(kernel == "piecewise_linear", "[snell] kernel ", quote(kernel),
               " is not supported (piecewise_linear)");
  SnellOptions o;
  o.r(get_or<int64_t>(j, "r", o.r(), c));
  o.pieces(get_or<int64_t>(j, "pieces", o.pieces(), c));
  o.coeff(get_or<double>(j, "coeff", o.coeff(), c));
  o.learnable_coeff(get_or<bool>(j, "learnable_coeff", o.learnable_coeff(), c));
  o.sparsity(get_or<double>(j, "sparsity", o.sparsity(), c));
  o.sparsify(get_or<std::string>(j, "sparsify", o.sparsify(), c));
  o.dropout(get_or<double>(j, "dropout", o.dropout(), c));
  o.drop_path(get_or<double>(j, "drop_path", o.drop_path(), c));
  validate(o);
  return {detail::get_targets(j, c), o};
}

void SnellModel::check_config(const std::string& text) const {
  auto [t, o] = snell_config_from_json(text);
  LOWMEM_CHECK(o.r() == options_.r() && o.pieces() == options_.pieces(),
               "[snell] saved r/pieces ", o.r(), "/", o.pieces(), " != the model's ",
               options_.r(), "/", options_.pieces());
  LOWMEM_CHECK(o.sparsity() == options_.sparsity() && o.sparsify() == options_.sparsify(),
               "[snell] saved sparsity ", o.sparsity(), " (", o.sparsify(),
               ") != the model's ", options_.sparsity(), " (", options_.sparsify(), ")");
}

}  // namespace lowmem::adapters
