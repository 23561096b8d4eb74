// Methods of the pretrain and finetune suites.
#include <torch/optim/adamw.h>

#include "compare_internal.h"

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
  d.info = {std::move(suite), std::move(name), std::move(label),
            std::move(paper), std::move(description), ""};
  return d;
}

std::function<std::string()> missing(const std::string& what) {
  return [what]() { return what + " is not in this build yet"; };
}

}  // namespace

void add_model_methods(std::vector<MethodDef>& out) {
  const std::string P = "pretrain", F = "finetune";
  {
    MethodDef d = def(P, "adamw", "AdamW", "", "torch::optim::AdamW on every parameter");
    d.setup = [](Workload& w, const CompareOptions&) {
      Training t;
      t.optimizers.push_back(std::make_shared<torch::optim::AdamW>(
          trainable(*w.model), torch::optim::AdamWOptions(3e-3).weight_decay(0.0)));
      t.detail = "lr 3e-3";
      return t;
    };
    out.push_back(d);
  }
  struct Pending {
    std::string suite, name, label, paper, description, piece;
  };
  const std::vector<Pending> pending = {
      {P, "adafactor", "Adafactor", "Adafactor (arXiv 1804.04235)",
       "factored second moments on every parameter", "lowmem/optim/adafactor.h"},
      {P, "came", "CAME", "CAME (arXiv 2307.02047)",
       "confidence-guided factored optimizer on every parameter", "lowmem/optim/came.h"},
      {P, "galore-adamw", "GaLore-AdamW", "GaLore (arXiv 2403.03507)",
       "AdamW in an SVD-projected gradient space for the block matrices",
       "lowmem/optim/galore.h"},
      {P, "galore-came", "GaLore-CAME", "GaLore (arXiv 2403.03507)",
       "CAME in an SVD-projected gradient space for the block matrices",
       "lowmem/optim/galore.h"},
      {P, "rsketch-adapter", "Random-sketch adapter",
       "Gradient transformations = adapters (arXiv 2502.13811)",
       "one-sided adapter W0 + P A with a frozen random sketch P, merged and "
       "re-sketched periodically",
       "lowmem/adapters/projected_adapter.h"},
      {P, "singd-dense", "SINGD (dense)", "SINGD (arXiv 2312.05705)",
       "inverse-free Kronecker-factored natural gradient, dense factors",
       "lowmem/optim/singd.h"},
      {P, "singd-diag", "SINGD (diagonal)", "SINGD (arXiv 2312.05705)",
       "inverse-free natural gradient, diagonal factors", "lowmem/optim/singd.h"},
      {P, "singd-bf16", "SINGD (dense, bf16)", "SINGD (arXiv 2312.05705)",
       "SINGD dense with the model in bfloat16", "lowmem/optim/singd.h"},
      {P, "kfac", "KFAC", "KFAC (arXiv 1503.05671)",
       "Kronecker-factored natural gradient with damped inverses",
       "lowmem/optim/kfac.h"},
      {F, "full-adamw", "Full FT (AdamW)", "", "every parameter, AdamW", ""},
      {F, "full-came", "Full FT (CAME)", "CAME (arXiv 2307.02047)",
       "every parameter, CAME", "lowmem/optim/came.h"},
      {F, "lora", "LoRA", "LoRA (arXiv 2106.09685)",
       "low-rank adapters on every block projection + the head",
       "lowmem/adapters/lora.h"},
      {F, "projected-adapter", "One-sided projected adapter",
       "Gradient transformations = adapters (arXiv 2502.13811)",
       "W0 + P A with P frozen (GaLore's dual) + the head",
       "lowmem/adapters/projected_adapter.h"},
      {F, "lotr", "LoTR", "LoTR (arXiv 2402.01376)",
       "Tucker-2 adapters sharing factors across layers + the head",
       "lowmem/adapters/lotr.h"},
      {F, "snell", "SNELL", "SNELL (arXiv 2411.01800)",
       "kernelized sparse adapters + the head", "lowmem/adapters/snell.h"},
  };
  for (const auto& p : pending) {
    MethodDef d = def(p.suite, p.name, p.label, p.paper, p.description);
    if (p.name == "full-adamw") {
      d.setup = out.front().setup;
    } else {
      d.unavailable = missing(p.piece);
    }
    if (p.name == "singd-bf16") d.bf16 = true;
    out.push_back(d);
  }
}

}  // namespace lowmem::train::compare::detail
