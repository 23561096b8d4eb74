#include "lowmem/nn/curvature_tap.h"

#include <ATen/ATen.h>

#include <cmath>
#include <set>
#include <unordered_set>

#include "lowmem/core/check.h"
#include "lowmem/nn/conv2d.h"

namespace lowmem::nn {

LossAverage parse_loss_average(const std::string& s) {
  if (s == "none") return LossAverage::kNone;
  if (s == "batch") return LossAverage::kBatch;
  if (s == "batch+sequence") return LossAverage::kBatchSequence;
  LOWMEM_CHECK(
      false, "[curvature] loss_average must be none, batch or batch+sequence, "
             "got '", s, "'");
  return LossAverage::kBatch;
}

KfacApprox parse_kfac_approx(const std::string& s) {
  if (s == "expand") return KfacApprox::kExpand;
  if (s == "reduce") return KfacApprox::kReduce;
  LOWMEM_CHECK(
      false, "[curvature] kfac_approx must be expand or reduce, got '", s, "'");
  return KfacApprox::kExpand;
}

at::Tensor kfac_input_matrix(const at::Tensor& x0, const KroneckerTapOptions& o) {
  at::Tensor x = x0.to(o.dtype_k);
  if (o.conv) {
    const auto& c = *o.conv;
    LOWMEM_CHECK(x.dim() == 4, "[curvature] conv input must be 4-D, got ", x.sizes());
    int64_t b = x.size(0), ch = x.size(1);
    if (c.groups > 1)  // average the input channels over groups
      x = x.reshape({b, c.groups, ch / c.groups, x.size(2), x.size(3)}).mean(1);
    at::Tensor patches = at::im2col(x, c.kernel_size, c.dilation, c.padding, c.stride);
    // [B, C k1 k2, O1 O2]
    if (o.kfac_approx == KfacApprox::kExpand)
      x = patches.transpose(1, 2).reshape({-1, patches.size(1)});
    else
      x = patches.mean(2);
  } else {
    if (x.dim() == 1) x = x.unsqueeze(0);
    int64_t d = x.size(-1);
    if (o.kfac_approx == KfacApprox::kExpand) {
      x = x.reshape({-1, d});
    } else if (x.dim() > 2) {
      std::vector<int64_t> dims;
      for (int64_t i = 1; i < x.dim() - 1; ++i) dims.push_back(i);
      x = x.mean(dims);
    }
  }
  if (o.has_bias) x = at::cat({x, at::ones({x.size(0), 1}, x.options())}, 1);
  return x / std::sqrt(static_cast<double>(x.size(0)));
}

at::Tensor kfac_grad_output_matrix(
    const at::Tensor& g0, const KroneckerTapOptions& o) {
  at::Tensor g = g0.to(o.dtype_c);
  if (!o.conv && g.dim() == 1) g = g.unsqueeze(0);
  double scale = 1.0;
  if (o.loss_average != LossAverage::kNone) {
    double terms = static_cast<double>(g.size(0));
    if (o.loss_average == LossAverage::kBatchSequence) {
      // conv: spatial O1*O2; linear: the shared dims between batch and out
      int64_t lo = 1, hi = o.conv ? g.dim() : g.dim() - 1;
      for (int64_t i = lo; i < hi; ++i)
        if (!(o.conv && i == 1)) terms *= static_cast<double>(g.size(i));
    }
    scale = std::sqrt(terms);
  }
  if (o.conv) {
    LOWMEM_CHECK(g.dim() == 4, "[curvature] conv grad must be 4-D, got ", g.sizes());
    if (o.kfac_approx == KfacApprox::kExpand)
      g = g.permute({0, 2, 3, 1}).reshape({-1, g.size(1)});
    else
      g = g.sum({2, 3});
  } else {
    int64_t d = g.size(-1);
    if (o.kfac_approx == KfacApprox::kExpand) {
      g = g.reshape({-1, d});
    } else if (g.dim() > 2) {
      std::vector<int64_t> dims;
      for (int64_t i = 1; i < g.dim() - 1; ++i) dims.push_back(i);
      g = g.sum(dims);
    }
  }
  return g * scale;
}

KroneckerTap::KroneckerTap(KroneckerTapOptions options, Sink sink)
    : options_(std::move(options)), sink_(std::move(sink)) {
  LOWMEM_CHECK(sink_ != nullptr, "[curvature] tap needs a sink");
}

void KroneckerTap::record_input(const at::Tensor& input) {
  if (!at::GradMode::is_enabled()) return;
  pending_.push_back(input);
}

void KroneckerTap::record_grad_output(const at::Tensor& grad_output) {
  LOWMEM_CHECK(
      !pending_.empty(),
      "[curvature] output gradient arrived without a recorded input");
  at::Tensor x = std::move(pending_.back());
  pending_.pop_back();
  at::NoGradGuard no_grad;
  sink_(kfac_input_matrix(x, options_),
        kfac_grad_output_matrix(grad_output, options_));
}

void CurvatureLayer::set_tap(std::shared_ptr<CurvatureTap> tap) const {
  if (auto* l = dynamic_cast<LinearLike*>(module.get())) {
    l->set_tap(std::move(tap));
  } else if (auto* c = dynamic_cast<Conv2d*>(module.get())) {
    c->set_tap(std::move(tap));
  }
}

std::shared_ptr<CurvatureTap> CurvatureLayer::tap() const {
  if (auto* l = dynamic_cast<LinearLike*>(module.get())) return l->tap();
  if (auto* c = dynamic_cast<Conv2d*>(module.get())) return c->tap();
  return nullptr;
}

int64_t CurvatureLayer::dim_k() const {
  return weight[0].numel() + (bias.defined() ? 1 : 0);
}

int64_t CurvatureLayer::dim_c() const {
  return weight.size(0);
}

std::vector<CurvatureLayer> find_curvature_layers(torch::nn::Module& root) {
  std::vector<CurvatureLayer> out;
  std::set<const torch::nn::Module*> seen;
  // include_self=true throws for a root not held by a shared_ptr, so the
  // root is visited through a non-owning alias.
  std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> all;
  all.emplace_back("", std::shared_ptr<torch::nn::Module>(
                           std::shared_ptr<torch::nn::Module>(), &root));
  for (const auto& item : root.named_modules("", /*include_self=*/false))
    all.emplace_back(item.key(), item.value());
  for (const auto& item : all) {
    const auto& m = item.second;
    if (!seen.insert(m.get()).second) continue;
    CurvatureLayer layer{item.first, m, {}, {}, c10::nullopt};
    if (auto* l = dynamic_cast<Linear*>(m.get())) {
      layer.weight = l->base_weight();
      layer.bias = l->bias();
    } else if (auto* c = dynamic_cast<Conv2d*>(m.get())) {
      layer.weight = c->weight();
      layer.bias = c->bias();
      const auto& o = c->options();
      layer.conv = Conv2dGeometry{o.kernel_size, o.stride, o.padding,
                                  o.dilation, o.groups};
    } else {
      continue;
    }
    if (!layer.weight.requires_grad()) continue;
    // A frozen bias is a constant: no ones column, no update.
    if (layer.bias.defined() && !layer.bias.requires_grad()) layer.bias = at::Tensor();
    out.push_back(std::move(layer));
  }
  return out;
}

CurvatureParamSplit split_curvature_parameters(torch::nn::Module& root) {
  CurvatureParamSplit split;
  std::unordered_set<const void*> covered;
  for (const auto& l : find_curvature_layers(root)) {
    covered.insert(l.weight.unsafeGetTensorImpl());
    if (l.bias.defined() && l.bias.requires_grad())
      covered.insert(l.bias.unsafeGetTensorImpl());
  }
  for (const auto& p : root.named_parameters(/*recurse=*/true)) {
    if (!p.value().requires_grad()) continue;
    if (covered.count(p.value().unsafeGetTensorImpl()))
      split.covered.emplace_back(p.key(), p.value());
    else
      split.uncovered.emplace_back(p.key(), p.value());
  }
  return split;
}

}  // namespace lowmem::nn
