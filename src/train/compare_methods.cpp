// The method registry of `lowmem compare`. A method whose library piece is
// not in this build is listed with the reason (never silently dropped).
#include <torch/optim/sgd.h>

#include "compare_internal.h"
#include "components.h"
#include "lowmem/core/check.h"
#include "lowmem/optim/adamw.h"

namespace lowmem::train::compare::detail {
namespace {

std::vector<at::Tensor> trainable(torch::nn::Module& m) {
  std::vector<at::Tensor> out;
  for (const auto& p : m.parameters())
    if (p.requires_grad()) out.push_back(p);
  return out;
}

MethodDef def(std::string suite, std::string name, std::string label,
              std::string paper, std::string description) {
  MethodDef d;
  d.info.suite = std::move(suite);
  d.info.name = std::move(name);
  d.info.label = std::move(label);
  d.info.paper = std::move(paper);
  d.info.description = std::move(description);
  return d;
}

void add_toy(std::vector<MethodDef>& out) {
  {
    MethodDef d = def("toy", "adamw", "AdamW", "", "lowmem AdamW on all parameters");
    d.setup = [](Workload& w, const CompareOptions& o) {
      Training t;
      const auto ao =
          configured(o, "adamw", optim::AdamWOptions(1e-2).weight_decay(0.0), t);
      t.optimizers.push_back(std::make_shared<optim::AdamW>(trainable(*w.model), ao));
      t.detail = "lr " + num(ao.lr());
      return t;
    };
    out.push_back(d);
  }
  {
    MethodDef d = def("toy", "sgd", "SGD", "", "torch::optim::SGD with momentum 0.9");
    d.setup = [](Workload& w, const CompareOptions& o) {
      Training t;
      ::lowmem::train::detail::SgdSection defaults;
      defaults.lr = 5e-2;
      defaults.momentum = 0.9;
      const auto so = configured(o, "sgd", defaults, t);
      t.optimizers.push_back(
          std::make_shared<torch::optim::SGD>(trainable(*w.model), so.options()));
      t.detail = "lr " + num(so.lr) + ", momentum " + num(so.momentum);
      return t;
    };
    out.push_back(d);
  }
}

}  // namespace

std::vector<MethodDef> method_defs() {
  std::vector<MethodDef> out;
  add_toy(out);
  add_model_methods(out);
  return out;
}

const MethodDef& method_def(const std::string& suite, const std::string& name) {
  static const std::vector<MethodDef> defs = method_defs();
  for (const auto& d : defs)
    if (d.info.suite == suite && d.info.name == name) return d;
  LOWMEM_CHECK(false, "[compare] unknown method '", suite, "/", name, "'");
  return defs.front();
}

}  // namespace lowmem::train::compare::detail
