#include "lowmem/adapters/lotr.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <sstream>

#include "config_json.h"
#include "lowmem/core/check.h"
#include "lowmem/core/input.h"

namespace lowmem::adapters {
namespace {

// The projection type of a slot path: its components without the integer
// (layer index) ones, joined by '_' with every '_' inside a component
// doubled, so the path structure survives ("h.3.attn.proj" -> "h_attn_proj",
// "layers.0.attn_in" -> "layers_attn__in", "layers.0.attn.in" ->
// "layers_attn_in": two groups) and the key is a valid module name.
std::string type_key(const std::string& path) {
  std::string out, part;
  std::stringstream ss(path);
  while (std::getline(ss, part, '.')) {
    if (!part.empty() && std::all_of(part.begin(), part.end(), [](char ch) {
          return ch >= '0' && ch <= '9';
        }))
      continue;
    std::string escaped;
    for (const char ch : part) escaped += ch == '_' ? "__" : std::string(1, ch);
    out += (out.empty() ? "" : "_") + escaped;
  }
  return out;
}

// Top-r left singular vectors of m (exact SVD; the repo uses svd_lowrank).
at::Tensor top_left_singular(const at::Tensor& m, int64_t r) {
  auto usv = at::linalg_svd(m.to(at::kDouble), /*full_matrices=*/false);
  at::Tensor u = std::get<0>(usv);
  LOWMEM_CHECK(u.size(1) >= r, "[lotr] svd init needs rank <= ", u.size(1),
               ", got ", r);
  return u.narrow(1, 0, r);
}

}  // namespace

void validate(const LotrOptions& o) {
  LOWMEM_CHECK(o.rank() > 0, "[lotr] rank must be > 0, got ", o.rank());
  LOWMEM_CHECK(std::isfinite(o.scale()), "[lotr] scale must be finite, got ", o.scale());
  for (const auto* f : {&o.init_left(), &o.init_right()}) {
    LOWMEM_CHECK(*f == "normal" || *f == "trivial" || *f == "svd",
                 "[lotr] factor init must be normal, trivial or svd, got ",
                 quote(*f));
  }
  LOWMEM_CHECK(o.init_middle() == "trivial" || o.init_middle() == "neutral" ||
                   o.init_middle() == "svd",
               "[lotr] init_middle must be trivial, neutral or svd, got ",
               quote(o.init_middle()));
  LOWMEM_CHECK(o.grouping() == "per_type" || o.grouping() == "shared",
               "[lotr] grouping must be per_type or shared, got ",
               quote(o.grouping()));
}

LotrGroup::LotrGroup(std::string name, int64_t d_in, int64_t d_out, int64_t rank,
                     const at::TensorOptions& opts)
    : name_(std::move(name)) {
  lhs = register_parameter("lhs", at::zeros({rank, d_out}, opts));
  rhs = register_parameter("rhs", at::zeros({d_in, rank}, opts));
}

LotrLinear::LotrLinear(std::shared_ptr<nn::LinearLike> base,
                       std::shared_ptr<LotrGroup> group,
                       const LotrOptions& options)
    : AdapterLinear(std::move(base)),
      group_(std::move(group)),
      alpha_(options.alpha()) {
  LOWMEM_CHECK(group_ != nullptr, "[lotr] null group");
  LOWMEM_CHECK(group_->rhs.size(0) == in_features() &&
                   group_->lhs.size(1) == out_features(),
               "[lotr] group '", group_->name(), "' factors are for ",
               group_->lhs.size(1), "x", group_->rhs.size(0), " weights, layer is ",
               out_features(), "x", in_features());
  int64_t r = options.rank();
  mid_ = register_parameter("lotr_core", at::zeros({r, r}, group_->lhs.options()));
}

at::Tensor LotrLinear::delta_output(const at::Tensor& x) {
  at::Tensor h1 = at::matmul(x.to(mid_.scalar_type()), group_->rhs);  // [..., r]
  at::Tensor h2 = at::matmul(h1, mid_);                               // [..., r]
  return at::matmul(h2, group_->lhs) * alpha_;                        // [..., out]
}

at::Tensor LotrLinear::delta_weight() const {
  at::NoGradGuard g;
  return at::mm(at::mm(group_->rhs, mid_), group_->lhs).t() * alpha_;
}

// ---------------------------------------------------------------------------

std::shared_ptr<LotrModel> inject_lotr(std::shared_ptr<torch::nn::Module> model,
                                       const TargetOptions& targets,
                                       const LotrOptions& options) {
  validate(options);
  std::shared_ptr<LotrModel> m(new LotrModel(std::move(model), targets, options));
  try {
    build_lotr(*m, options);
  } catch (...) {
    m->unload();  // leave the model as it was
    throw;
  }
  return m;
}

void build_lotr(LotrModel& model, const LotrOptions& options) {
  LotrModel* m = &model;
  std::vector<nn::SlotRef> slots = m->prepare();
  // Group by slot name (per_type) or all together (shared); order of first
  // appearance.
  std::vector<std::pair<std::string, std::vector<nn::SlotRef>>> groups;
  for (const auto& s : slots) {
    std::string key = options.grouping() == "shared" ? "all" : type_key(s.path);
    auto it = std::find_if(groups.begin(), groups.end(),
                           [&](const auto& g) { return g.first == key; });
    if (it == groups.end()) {
      groups.push_back({key, {}});
      it = groups.end() - 1;
    }
    it->second.push_back(s);
  }
  const int64_t r = options.rank();
  for (auto& [key, members] : groups) {
    auto first = members.front().layer();
    const int64_t d_in = first->in_features(), d_out = first->out_features();
    for (const auto& s : members) {
      auto l = s.layer();
      LOWMEM_CHECK(l->in_features() == d_in && l->out_features() == d_out,
                   "[lotr] group '", key, "' mixes shapes ", d_out, "x", d_in, " (",
                   members.front().path, ") and ", l->out_features(), "x",
                   l->in_features(), " (", s.path,
                   "); members of a group must have equal shapes (use grouping "
                   "per_type)");
    }
    const at::TensorOptions w0 = first->weight_options();
    auto opts = adapter_options(w0);
    auto group = std::make_shared<LotrGroup>(key, d_in, d_out, r, opts);
    // Tucker-2 of the stacked weights T[o, l, i] = W_l[o, i] when asked.
    at::Tensor u0, u2;
    const bool svd = options.init_left() == "svd" || options.init_right() == "svd" ||
                     options.init_middle() == "svd";
    if (svd) {
      std::vector<at::Tensor> ws;
      for (const auto& s : members) ws.push_back(s.layer()->effective_weight().detach());
      at::Tensor t = at::stack(ws, 1);                             // [out, L, in]
      u0 = top_left_singular(t.reshape({d_out, -1}), r);           // [out, r]
      u2 = top_left_singular(t.permute({2, 0, 1}).reshape({d_in, -1}), r);  // [in, r]
    }
    {
      at::NoGradGuard g;
      auto init_factor = [&](at::Tensor& p, const std::string& mode,
                             const at::Tensor& svd_value) {
        if (mode == "normal") p.normal_();
        else if (mode == "trivial") p.zero_();
        else p.copy_(svd_value);
      };
      init_factor(group->lhs, options.init_left(), svd ? u0.t() : at::Tensor());
      init_factor(group->rhs, options.init_right(), svd ? u2 : at::Tensor());
    }
    m->attach("lotr_" + key, group);
    for (const auto& s : members) {
      auto layer = std::make_shared<LotrLinear>(s.layer(), group, options);
      {
        at::NoGradGuard g;
        if (options.init_middle() == "neutral") {
          layer->core().copy_(at::eye(r, layer->core().options()));
        } else if (options.init_middle() == "svd") {
          // core_l = U0^T W_l U2, copied into mid_l as is (repo behaviour).
          at::Tensor w = s.layer()->effective_weight().detach().to(at::kDouble);
          layer->core().copy_(at::mm(at::mm(u0.t(), w), u2));
        }
      }
      group->members.push_back(s.path);
      m->wrap(s, layer);
    }
    m->groups_.push_back(group);
  }
}

std::map<std::string, at::Tensor> LotrModel::state_tensors() const {
  std::map<std::string, at::Tensor> out = saved_module_tensors();
  for (const auto& g : groups_) {
    out[std::string(kPeftKeyPrefix) + "lotr_" + g->name() + ".lhs"] = g->lhs;
    out[std::string(kPeftKeyPrefix) + "lotr_" + g->name() + ".rhs"] = g->rhs;
  }
  for (const auto& l : layers()) {
    out[kPeftKeyPrefix + l.path + ".lotr_core"] =
        static_cast<LotrLinear*>(l.layer.get())->core();
  }
  return out;
}

std::string LotrModel::config_json() const {
  using detail::json;
  json j;
  j["peft_type"] = "LOTR";
  j["task_type"] = nullptr;
  j["base_model_name_or_path"] =
      base_model_name_or_path.empty() ? json(nullptr) : json(base_model_name_or_path);
  j["inference_mode"] = true;
  j["rank"] = options_.rank();
  j["scale"] = options_.scale();
  j["init_left"] = options_.init_left();
  j["init_middle"] = options_.init_middle();
  j["init_right"] = options_.init_right();
  j["grouping"] = options_.grouping();
  json groups = json::object();
  for (const auto& g : groups_) groups[g->name()] = g->members;
  j["groups"] = groups;
  detail::put_targets(j, targets());
  return j.dump(2);
}

std::pair<TargetOptions, LotrOptions> lotr_config_from_json(const std::string& text) {
  using detail::get_or;
  const char* c = "lotr";
  detail::json j = detail::parse_config(text, c);
  std::string type = get_or<std::string>(j, "peft_type", "", c);
  LOWMEM_CHECK(type == "LOTR", "[lotr] adapter_config.json peft_type is ",
               quote(type), ", expected 'LOTR'");
  LotrOptions o;
  o.rank(get_or<int64_t>(j, "rank", o.rank(), c));
  o.scale(get_or<double>(j, "scale", o.scale(), c));
  o.init_left(get_or<std::string>(j, "init_left", o.init_left(), c));
  o.init_middle(get_or<std::string>(j, "init_middle", o.init_middle(), c));
  o.init_right(get_or<std::string>(j, "init_right", o.init_right(), c));
  o.grouping(get_or<std::string>(j, "grouping", o.grouping(), c));
  validate(o);
  return {detail::get_targets(j, c), o};
}

void LotrModel::check_config(const std::string& text) const {
  auto [t, o] = lotr_config_from_json(text);
  LOWMEM_CHECK(o.rank() == options_.rank(), "[lotr] saved rank ", o.rank(),
               " != the model's rank ", options_.rank());
  LOWMEM_CHECK(o.scale() == options_.scale(), "[lotr] saved scale ", o.scale(),
               " != the model's scale ", options_.scale());
  LOWMEM_CHECK(o.grouping() == options_.grouping(), "[lotr] saved grouping ",
               quote(o.grouping()), " != the model's '", options_.grouping(),
               "'");
  detail::json j = detail::parse_config(text, "lotr");
  auto saved = j.find("groups");
  if (saved != j.end() && saved->is_object()) {
    for (const auto& g : groups_) {
      auto it = saved->find(g->name());
      LOWMEM_CHECK(it != saved->end(), "[lotr] saved config has no group '",
                   g->name(), "'");
      LOWMEM_CHECK(it->is_array() && *it == detail::json(g->members),
                   "[lotr] group '", g->name(), "' members differ: saved ",
                   clip_json(*it), ", model ",
                   clip_json(detail::json(g->members)));
    }
  }
}

}  // namespace lowmem::adapters
