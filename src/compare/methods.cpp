// The method table of `lowmem compare`: one row per method, each a list of
// lowmem train configuration keys (method, optimizer, aux_optimizer and their
// option sections). A row is built by train::setup_method -- the registries,
// routing and factories of `lowmem train` -- and run by train::Trainer.
//
// Common recipe (docs/compare.md): no weight decay anywhere (the claims
// compare optimizers, and decoupled decay means different things in each);
// parameters a method does not cover (embeddings, LayerNorms, biases, the new
// head) go to the aux optimizer with the same learning rate; warm-up (10% of
// the steps) + cosine decay to 10% (the trainer's schedule). The learning
// rates are the best of the sweeps recorded in docs/benchmarks/compare.md.
#include <cmath>
#include <sstream>

#include "internal.h"
#include "lowmem/core/check.h"

namespace lowmem::compare::detail {
namespace {

using Keys = std::vector<std::string>;

// Peak learning rates (docs/benchmarks/compare.md, "Learning-rate sweep").
constexpr double kAdamwLr = 1e-3;
constexpr double kAdafactorLr = 1e-2;
constexpr double kCameLr = 3e-4;
constexpr double kPretrainLr = 3e-3;  // GaLore, the sketch adapter, the rest
constexpr double kSingdLr = 3e-3;     // SINGD / KFAC step size
constexpr double kFinetuneFullLr = 3e-3;
constexpr double kFinetuneCameLr = 3e-4;
constexpr double kFinetuneAdapterLr = 1e-2;

std::string kv(const std::string& key, double v) {
  return key + "=" + format_float(v);
}
std::string kv(const std::string& key, int64_t v) {
  return key + "=" + std::to_string(v);
}

double f(const Built& b, const std::string& key) {
  train::Config c = b.config;
  return parse_float(c.get(key), key);
}
std::string s(const Built& b, const std::string& key) {
  train::Config c = b.config;
  return c.get(key);
}
size_t route_size(const Built& b, const std::string& target) {
  for (const auto& r : b.setup.routes)
    if (r.target == target) return r.params.size();
  return 0;
}

// GaLore / projected-adapter rank: o.projection_rank or width / 4.
int64_t projection_rank(const CompareOptions& o, int64_t width) {
  return o.projection_rank > 0 ? o.projection_rank
                               : std::max<int64_t>(1, width / 4);
}
// Basis refresh gap: 5 refreshes per run (GaLore's 200 is for 10k+ steps).
int64_t refresh_gap(int64_t steps) { return std::max<int64_t>(10, steps / 5); }

// The optimizer `name` on every trainable parameter, no weight decay.
Keys plain(const std::string& name, double lr) {
  return {"optimizer=" + name, "route=all", kv(name + ".lr", lr),
          name + ".weight_decay=0"};
}
// `main` for what the method covers, AdamW (no decay) at `rest_lr` for the
// rest.
Keys with_adamw_rest(Keys k, double rest_lr) {
  k.push_back("aux_optimizer=adamw");
  k.push_back(kv("adamw.lr", rest_lr));
  k.push_back("adamw.weight_decay=0");
  return k;
}

MethodDef row(std::string suite, std::string name, std::string label,
              std::string paper, std::string description,
              std::function<Keys(const CompareOptions&)> config,
              std::function<std::string(const Built&)> detail,
              bool bf16 = false) {
  MethodDef d;
  d.info = {std::move(suite), std::move(name),        std::move(label),
            std::move(paper), std::move(description), ""};
  d.config = std::move(config);
  d.detail = std::move(detail);
  d.bf16 = bf16;
  return d;
}

std::function<Keys(const CompareOptions&)> fixed(Keys k) {
  return [k](const CompareOptions&) { return k; };
}

std::string lr_detail(const Built& b) {
  return "lr " + num(f(b, b.config.optimizer + ".lr"));
}

std::string betas_detail(const Built& b, int n) {
  std::string d = lr_detail(b) + ", betas (";
  for (int i = 1; i <= n; ++i)
    d += (i > 1 ? ", " : "") +
         num(f(b, b.config.optimizer + ".beta" + std::to_string(i)));
  return d + ")";
}

std::string adafactor_detail(const Built& b) {
  const std::string beta1 = s(b, "adafactor.beta1");
  return (s(b, "adafactor.relative_step") == "true"
              ? std::string("relative step")
              : "lr " + num(f(b, "adafactor.lr")) + " fixed") +
         ", beta1 " + (beta1 == "none" ? beta1 : num(f(b, "adafactor.beta1"))) +
         (s(b, "adafactor.scale_parameter") == "true"
              ? ", parameter scaling"
              : ", no parameter scaling");
}

// GaLore with `inner` (galore_adamw or came) on the block matrices (the
// trainer's "matrices" route), the same optimizer unprojected on the rest.
MethodDef galore_row(const std::string& inner) {
  const bool came = inner == "came";
  return row(
      "pretrain", came ? "galore-came" : "galore-adamw",
      came ? "GaLore-CAME" : "GaLore-AdamW", "GaLore (arXiv 2403.03507)",
      std::string(came ? "CAME" : "AdamW") +
          " in an SVD-projected gradient space for the block matrices, "
          "unprojected on the rest",
      [inner](const CompareOptions& o) {
        const double lr = inner == "came" ? kPretrainLr : kPretrainLr;
        return Keys{"method=galore",
                    "optimizer=" + inner,
                    "aux_optimizer=" + inner,
                    kv(inner + ".lr", lr),
                    inner + ".weight_decay=0",
                    kv("galore.rank", projection_rank(o, o.gpt_width)),
                    kv("galore.update_proj_gap", refresh_gap(o.pretrain_steps)),
                    "galore.scale=1"};
      },
      [inner](const Built& b) {
        std::ostringstream d;
        d << "rank " << s(b, "galore.rank") << ", SVD refresh every "
          << s(b, "galore.update_proj_gap") << " steps, scale "
          << num(f(b, "galore.scale")) << ", " << route_size(b, "galore")
          << " projected matrices, lr " << num(f(b, inner + ".lr"));
        return d.str();
      });
}

// The one-sided projected adapter (arXiv 2502.13811's adapter form) trained by
// GaLore's AdamW at `lr`, its rest by the same.
Keys projected_adapter(Keys k, double lr) {
  k.insert(k.begin(),
           {"method=projected-adapter", "optimizer=galore_adamw",
            "aux_optimizer=galore_adamw", kv("galore_adamw.lr", lr)});
  return k;
}

std::string projected_detail(const Built& b) {
  const std::string basis = s(b, "projected_adapter.basis");
  return "rank " + s(b, "projected_adapter.rank") + ", " +
         (basis == "svd" ? std::string("SVD basis")
                         : "random " + basis + " sketch") +
         ", rebase every " + s(b, "projected_adapter.update_proj_gap") +
         " steps, " + std::to_string(b.setup.projected_adapters) +
         " adapters, lr " + num(f(b, "galore_adamw.lr"));
}

void add_toy(std::vector<MethodDef>& out) {
  out.push_back(row("toy", "adamw", "AdamW", "",
                    "lowmem AdamW on all parameters",
                    fixed(plain("adamw", 1e-2)), lr_detail));
  out.push_back(row(
      "toy", "sgd", "SGD", "", "torch::optim::SGD with momentum 0.9",
      fixed({"optimizer=sgd", "route=all", "sgd.lr=0.05", "sgd.momentum=0.9"}),
      [](const Built& b) {
        return lr_detail(b) + ", momentum " + num(f(b, "sgd.momentum"));
      }));
}

void add_pretrain(std::vector<MethodDef>& out) {
  const std::string P = "pretrain";
  out.push_back(row(P, "adamw", "AdamW", "",
                    "lowmem fused AdamW on every parameter (the baseline)",
                    fixed(plain("adamw", kAdamwLr)),
                    [](const Built& b) { return betas_detail(b, 2); }));
  // Fixed lr, no relative step or parameter scaling (Adam-like magnitudes,
  // as the CAME paper's baseline), momentum 0.9 as CAME (arXiv 2307.02047 §4).
  Keys adafactor = plain("adafactor", kAdafactorLr);
  adafactor.insert(
      adafactor.end(),
      {"adafactor.relative_step=false", "adafactor.scale_parameter=false",
       "adafactor.warmup_init=false", "adafactor.beta1=0.9"});
  out.push_back(row(P, "adafactor", "Adafactor", "Adafactor (arXiv 1804.04235)",
                    "factored second moments, momentum 0.9, on every parameter",
                    fixed(adafactor), adafactor_detail));
  out.push_back(row(P, "came", "CAME", "CAME (arXiv 2307.02047)",
                    "confidence-guided factored optimizer on every parameter",
                    fixed(plain("came", kCameLr)),
                    [](const Built& b) { return betas_detail(b, 3); }));
  out.push_back(galore_row("galore_adamw"));
  out.push_back(galore_row("came"));
  out.push_back(row(
      P, "rsketch-adapter", "Random-sketch adapter",
      "Gradient transformations = adapters (arXiv 2502.13811)",
      "one-sided adapters W0 + P A on the block matrices with a seeded random "
      "sketch P (regenerated, never stored), merged and re-sketched "
      "periodically; AdamW on A and the rest",
      [](const CompareOptions& o) {
        return projected_adapter(
            {kv("projected_adapter.rank", projection_rank(o, o.gpt_width)),
             kv("projected_adapter.update_proj_gap",
                refresh_gap(o.pretrain_steps)),
             "projected_adapter.basis=orthogonal",
             kv("projected_adapter.seed", static_cast<int64_t>(run_seed(o))),
             "projected_adapter.cache_sketch=false",
             "projected_adapter.freeze_rest=false"},
            kPretrainLr);
      },
      projected_detail));
  struct Singd {
    const char *name, *label, *structures, *dtype;
    bool bf16;
  };
  for (const Singd v :
       {Singd{"singd-dense", "SINGD (dense)", "dense", "", false},
        Singd{"singd-diag", "SINGD (diagonal)", "diagonal", "", false},
        Singd{"singd-bf16", "SINGD (dense, bf16)", "dense", "bfloat16",
              true}}) {
    out.push_back(row(
        P, v.name, v.label, "SINGD (arXiv 2312.05705)",
        std::string("inverse-free Kronecker-factored natural gradient on the "
                    "block linears (") +
            v.structures + " factors" +
            (v.bf16 ? ", model and preconditioner in bfloat16" : "") +
            "), AdamW for the rest",
        fixed(with_adamw_rest(
            {"optimizer=singd", kv("singd.lr", kSingdLr),
             std::string("singd.structures=") + v.structures,
             std::string("singd.preconditioner_dtype=") + v.dtype},
            kPretrainLr)),
        [](const Built& b) {
          const std::string dt = s(b, "singd.preconditioner_dtype");
          return "structures " + s(b, "singd.structures") + ", T " +
                 s(b, "singd.T") + ", lr " + num(f(b, "singd.lr")) +
                 (dt.empty() ? "" : ", preconditioner " + dt) + "; " +
                 std::to_string(route_size(b, "singd")) +
                 " layer tensors, others AdamW";
        },
        v.bf16));
  }
  for (const bool bf16 : {false, true}) {
    out.push_back(row(
        P, bf16 ? "kfac-bf16" : "kfac", bf16 ? "KFAC (bf16)" : "KFAC",
        "KFAC (arXiv 1503.05671)",
        std::string("Kronecker-factored natural gradient with damped inverses "
                    "on the block linears") +
            (bf16 ? " (model and factors in bfloat16, inverted in fp32)" : "") +
            ", AdamW for the rest",
        fixed(with_adamw_rest(
            {"optimizer=kfac", kv("kfac.lr", kSingdLr),
             bf16 ? "kfac.factor_dtype=bfloat16" : "kfac.factor_dtype="},
            kPretrainLr)),
        [](const Built& b) {
          const std::string dt = s(b, "kfac.factor_dtype");
          return "lr " + num(f(b, "kfac.lr")) +
                 (dt.empty() ? "" : ", factors " + dt) + "; others AdamW";
        },
        bf16));
  }
}

// Finetune: the blocks' qkv/proj/fc get adapters, the new head trains
// (PEFT modules_to_save), everything else is frozen (train's defaults for
// model vit).
void add_finetune(std::vector<MethodDef>& out) {
  const std::string F = "finetune";
  out.push_back(row(F, "full-adamw", "Full FT (AdamW)", "",
                    "every parameter trainable, AdamW",
                    fixed(plain("adamw", kFinetuneFullLr)), lr_detail));
  out.push_back(row(F, "full-came", "Full FT (CAME)", "CAME (arXiv 2307.02047)",
                    "every parameter trainable, CAME",
                    fixed(plain("came", kFinetuneCameLr)), lr_detail));
  auto adapter = [](Keys k) {
    k.insert(k.end(), {"optimizer=adamw", "route=all",
                       kv("adamw.lr", kFinetuneAdapterLr),
                       "adamw.weight_decay=0", "targets=qkv,proj,fc"});
    return k;
  };
  auto with_lr = [](std::string d) {
    return [d](const Built& b) {
      return d + (d.empty() ? "" : ", ") + "lr " + num(f(b, "adamw.lr"));
    };
  };
  out.push_back(row(
      F, "lora", "LoRA", "LoRA (arXiv 2106.09685)",
      "low-rank adapters B A on every block projection + the new head",
      [adapter](const CompareOptions& o) {
        return adapter(
            {"method=lora", kv("lora.r", o.rank),
             kv("lora.lora_alpha", static_cast<double>(2 * o.rank))});
      },
      [with_lr](const Built& b) {
        return with_lr("r " + s(b, "lora.r") + ", alpha " +
                       num(f(b, "lora.lora_alpha")))(b);
      }));
  out.push_back(row(
      F, "projected-adapter", "One-sided projected adapter",
      "Gradient transformations = adapters (arXiv 2502.13811)",
      "W0 + P A on every block projection with P from the SVD of a gradient "
      "(GaLore's dual), merged and rebased periodically; the new head trained "
      "directly",
      [](const CompareOptions& o) {
        return projected_adapter(
            {kv("projected_adapter.rank", o.rank),
             kv("projected_adapter.update_proj_gap",
                refresh_gap(o.finetune_steps)),
             "projected_adapter.basis=svd",
             "projected_adapter.freeze_rest=true", "targets=qkv,proj,fc"},
            kFinetuneAdapterLr);
      },
      projected_detail));
  out.push_back(row(
      F, "lotr", "LoTR", "LoTR (arXiv 2402.01376)",
      "Tucker-2 adapters U G_l V^T with U, V shared across layers per "
      "projection type + the new head",
      [adapter](const CompareOptions& o) {
        return adapter({"method=lotr", kv("lotr.rank", o.rank)});
      },
      [with_lr](const Built& b) {
        return with_lr("rank " + s(b, "lotr.rank") +
                       ", factors shared per type")(b);
      }));
  out.push_back(row(
      F, "snell", "SNELL", "SNELL (arXiv 2411.01800)",
      "kernelized low-rank (KLoRA) sparse updates on every block projection + "
      "the new head",
      [adapter](const CompareOptions& o) {
        return adapter(
            {"method=snell", kv("snell.r", o.rank), "snell.sparsity=0.5"});
      },
      [with_lr](const Built& b) {
        return with_lr("r " + s(b, "snell.r") + ", sparsity " +
                       num(f(b, "snell.sparsity")) +
                       ", recomputing backward")(b);
      }));
}

std::vector<MethodDef> make_defs() {
  std::vector<MethodDef> out;
  add_toy(out);
  add_pretrain(out);
  add_finetune(out);
  return out;
}

}  // namespace

namespace {

// What each method's official code or paper uses, for the keys where compare
// differs or where the choice matters (docs/compare.md, "Official
// settings"). Values are lowmem train keys' values.
struct Official {
  const char *suite, *method, *key, *value, *source;
};
constexpr const char* kGaloreReadme =
    "GaLore README, LLaMA-60m pre-training command "
    "(github.com/jiaweizzhao/GaLore)";
constexpr const char* kCameCode =
    "CAME official optimizer defaults (github.com/yangluo7/CAME, "
    "CAME.__init__)";
constexpr const char* kSnellCode =
    "SNELL official code defaults (github.com/ssfgunner/SNELL)";
constexpr const char* kAdafactorHf =
    "Adafactor (arXiv 1804.04235) as in transformers.Adafactor's defaults";
const Official kOfficial[] = {
    {"pretrain", "galore-adamw", "galore.rank", "128", kGaloreReadme},
    {"pretrain", "galore-adamw", "galore.update_proj_gap", "200",
     kGaloreReadme},
    {"pretrain", "galore-adamw", "galore.scale", "0.25", kGaloreReadme},
    {"pretrain", "galore-adamw", "galore_adamw.lr", "0.01", kGaloreReadme},
    {"pretrain", "galore-adamw", "galore_adamw.weight_decay", "0",
     kGaloreReadme},
    {"pretrain", "came", "came.beta1", "0.9", kCameCode},
    {"pretrain", "came", "came.beta2", "0.999", kCameCode},
    {"pretrain", "came", "came.beta3", "0.9999", kCameCode},
    {"pretrain", "came", "came.eps1", "1e-30", kCameCode},
    {"pretrain", "came", "came.eps2", "1e-16", kCameCode},
    {"pretrain", "adafactor", "adafactor.relative_step", "true", kAdafactorHf},
    {"pretrain", "adafactor", "adafactor.scale_parameter", "true",
     kAdafactorHf},
    {"pretrain", "adafactor", "adafactor.beta1", "none", kAdafactorHf},
    {"finetune", "snell", "snell.sparsity", "0", kSnellCode},
    {"finetune", "snell", "adamw.lr", "0.001", kSnellCode},
    {"finetune", "snell", "adamw.weight_decay", "0.01", kSnellCode},
};

// Same setting: equal text, or both numbers within a relative 1e-9.
bool same_value(const std::string& a, const std::string& b) {
  if (a == b) return true;
  try {
    const double x = parse_float(a, "official"), y = parse_float(b, "used");
    return std::fabs(x - y) <= 1e-9 * std::max(std::fabs(x), std::fabs(y));
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace

double pretrain_adamw_lr() { return kAdamwLr; }

const std::vector<MethodDef>& method_defs() {
  static const std::vector<MethodDef> defs = make_defs();
  return defs;
}

const MethodDef& method_def(const std::string& suite, const std::string& name) {
  for (const auto& d : method_defs())
    if (d.info.suite == suite && d.info.name == name) return d;
  LOWMEM_CHECK(false, "[compare] unknown method '", suite, "/", name, "'");
  return method_defs().front();
}

train::Config method_config(const MethodDef& method, const Suite& suite,
                            const CompareOptions& options) {
  train::Config c;
  auto apply = [&c](const std::string& item) {
    const auto eq = item.find('=');
    c.set(item.substr(0, eq), item.substr(eq + 1));
  };
  for (const auto& k : suite.config) apply(k);
  for (const auto& k : method.config(options)) apply(k);
  for (const auto& k : options.overrides) apply(k);
  return c;
}

}  // namespace lowmem::compare::detail

namespace lowmem::compare {

std::vector<OfficialSetting> official_settings(const CompareOptions& o) {
  std::vector<OfficialSetting> out;
  for (const auto& e : detail::kOfficial) {
    const detail::MethodDef& def = detail::method_def(e.suite, e.method);
    train::Config c = detail::method_config(def, detail::suite(e.suite), o);
    OfficialSetting r;
    r.suite = e.suite;
    r.method = e.method;
    r.key = e.key;
    r.official = e.value;
    r.used = c.get(e.key);
    r.source = e.source;
    r.deviates = !detail::same_value(r.official, r.used);
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace lowmem::compare
