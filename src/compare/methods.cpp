// The method table of `lowmem compare`: one row per method, each a list of
// lowmem train configuration keys (method, optimizer, aux_optimizer and their
// option sections). A row is built by train::setup_method -- the registries,
// routing and factories of `lowmem train` -- and run by train::Trainer.
//
// Official settings first (docs/compare.md, "Official settings"): a method
// with official code or a paper recipe for the task type runs with those
// settings (cited in its row and in kOfficial below); where compare's recorded
// learning-rate sweep (docs/benchmarks/compare.md) found other settings, a
// second row "<name>-tuned", labelled "(tuned)", runs them: declared as the
// official row's keys plus the swept overrides (tuned()). Baselines and
// methods without an official recipe follow compare's common recipe: no
// weight decay; parameters a method does not cover go to the aux optimizer;
// warm-up (10% of the steps) + cosine decay to 10% (the trainer's schedule);
// the learning rates of the sweep.
#include <cmath>
#include <sstream>

#include "internal.h"
#include "lowmem/core/check.h"

namespace lowmem::compare::detail {
namespace {

using Keys = std::vector<std::string>;

// Peak learning rates of compare's sweep (docs/benchmarks/compare.md,
// "Learning-rate sweep").
constexpr double kAdamwLr = 1e-3;
constexpr double kAdafactorLr = 1e-2;
constexpr double kCameTunedLr = 3e-4;
// GaLore-CAME, GaLore-AdamW's tuned row, the sketch adapter (unswept).
constexpr double kPretrainLr = 3e-3;
constexpr double kFinetuneFullLr = 3e-3;
constexpr double kFinetuneCameTunedLr = 3e-4;
constexpr double kFinetuneAdapterTunedLr = 1e-2;
// Official values (the sources are in kOfficial below).
constexpr double kCameLr = 2e-4;           // CAME README usage example
constexpr double kCameWeightDecay = 1e-2;  // idem
constexpr double kSingdLr = 1e-3;     // SINGD.__init__ / kfac.py default lr
constexpr double kLoraLr = 5e-3;      // PEFT's ViT image-classification guide
constexpr double kLoraDropout = 0.1;  // idem
constexpr double kSnellLr = 1e-3;     // SNELL scripts (--lr 0.001)
constexpr double kSnellWeightDecay = 1e-2;  // SNELL scripts (--weight-decay)
constexpr double kGaloreLr = 1e-2;          // GaLore README, LLaMA-60m command
constexpr double kGaloreScale = 0.25;       // idem (--galore_scale)
// The lm suite (causal-LM fine-tuning), sources in kOfficial below.
constexpr double kLmLoraLr = 2e-4;           // LoRA paper Table 11 (GPT-2)
constexpr double kLmLoraAlpha = 32;          // idem
constexpr double kLmLoraWeightDecay = 1e-2;  // idem
constexpr double kLmGaloreLr = 3e-5;         // GaLore README, GLUE fine-tuning
constexpr int64_t kLmGaloreRank = 4;         // idem (--lora_r 4)
constexpr double kLmGaloreScale = 4;         // idem (--galore_scale 4)
// Every projection of a LLaMA decoder layer.
constexpr const char* kLlamaAll =
    "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";

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
// Basis refresh gap: 5 refreshes per run (GaLore's 200 is for 10k+ steps;
// 40 at compare's default 200 steps; 50, torchrun_main.py's own default, at
// the earlier 250).
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

// A tuned row: the official row `def` with compare's swept (GaLore: earlier,
// unswept) settings laid over its keys (`overrides`, set after them: one place
// holds each official key list), labelled as such.
MethodDef tuned(MethodDef def, std::string description,
                std::function<Keys(const CompareOptions&)> overrides) {
  def.info.name += "-tuned";
  def.info.label += " (tuned)";
  def.info.description = std::move(description);
  def.config = [official = def.config, overrides](const CompareOptions& o) {
    Keys k = official(o);
    const Keys over = overrides(o);
    k.insert(k.end(), over.begin(), over.end());
    return k;
  };
  return def;
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

// "rank 16, SVD refresh every 50 steps, scale 0.25, 8 projected matrices,
// lr 0.01" for GaLore with inner optimizer `inner`.
std::function<std::string(const Built&)> galore_detail(
    const std::string& inner) {
  return [inner](const Built& b) {
    std::ostringstream d;
    d << "rank " << s(b, "galore.rank") << ", SVD refresh every "
      << s(b, "galore.update_proj_gap") << " steps, scale "
      << num(f(b, "galore.scale")) << ", " << route_size(b, "galore")
      << " projected matrices, lr " << num(f(b, inner + ".lr"));
    return d.str();
  };
}

// GaLore with `inner` (galore_adamw or came) on the block matrices (the
// trainer's "matrices" route: the attention's and MLP's linears, as
// torchrun_main.py's "attn"/"mlp" modules), the same optimizer unprojected on
// the rest, at peak rate `lr` with projection scale `scale`.
MethodDef galore_row(const std::string& inner, std::string description,
                     double lr, double scale) {
  const bool came = inner == "came";
  return row(
      "pretrain", came ? "galore-came" : "galore-adamw",
      came ? "GaLore-CAME" : "GaLore-AdamW", "GaLore (arXiv 2403.03507)",
      std::move(description),
      [inner, lr, scale](const CompareOptions& o) {
        return Keys{"method=galore",
                    "optimizer=" + inner,
                    "aux_optimizer=" + inner,
                    kv(inner + ".lr", lr),
                    inner + ".weight_decay=0",
                    kv("galore.rank", projection_rank(o, o.gpt_width)),
                    kv("galore.update_proj_gap", refresh_gap(o.pretrain_steps)),
                    kv("galore.scale", scale)};
      },
      galore_detail(inner));
}

// GaLore-AdamW as the README's pre-training command for LLaMA 60m
// (scripts/benchmark_c4/llama_60m.sh: lr 0.01, scale 0.25, rank 128 of width
// 512, gap 200, no weight decay; GaLoreAdamW on both groups), the rank scaled
// to compare's width and the gap to its budget; the tuned row is compare's
// earlier setting (scale 1, lr 3e-3: never swept). GaLore-CAME has no
// official recipe (the code ships AdamW, 8-bit AdamW and Adafactor inners):
// compare's setting.
void add_galore_rows(std::vector<MethodDef>& out) {
  const MethodDef d = galore_row(
      "galore_adamw",
      "AdamW in an SVD-projected gradient space for the block matrices, "
      "unprojected on the rest; official settings (GaLore README, LLaMA-60m "
      "pre-training: lr 0.01, scale 0.25, no weight decay; rank 128 of width "
      "512 scaled to width / 4; gap 200 of 10k steps scaled to 5 refreshes "
      "per run)",
      kGaloreLr, kGaloreScale);
  out.push_back(d);
  out.push_back(
      tuned(d,
            "AdamW in an SVD-projected gradient space for the block "
            "matrices, unprojected on the rest; compare's earlier "
            "setting: scale 1, lr 3e-3 (not swept)",
            fixed({kv("galore_adamw.lr", kPretrainLr), "galore.scale=1"})));
  out.push_back(galore_row(
      "came",
      "CAME in an SVD-projected gradient space for the block matrices, "
      "unprojected on the rest; no official recipe: compare's setting (scale "
      "1, lr 3e-3, not swept)",
      kPretrainLr, 1.0));
}

// The one-sided projected adapter (arXiv 2502.13811's adapter form) trained by
// GaLore's AdamW at `lr`, its rest by the same.
Keys projected_adapter(Keys k, double lr) {
  k.insert(k.begin(),
           {"method=projected-adapter", "optimizer=galore_adamw",
            "aux_optimizer=galore_adamw", kv("galore_adamw.lr", lr)});
  return k;
}

// The fine-tuning suites' projected adapter: W0 + P A of rank `rank` on
// `targets` (everything else frozen), P from the SVD of a gradient, rebased
// 5 times per run of `steps`, GaLore's AdamW at compare's adapter rate.
Keys svd_adapter(int64_t rank, int64_t steps, const std::string& targets) {
  return projected_adapter(
      {kv("projected_adapter.rank", rank),
       kv("projected_adapter.update_proj_gap", refresh_gap(steps)),
       "projected_adapter.basis=svd", "projected_adapter.freeze_rest=true",
       "targets=" + targets},
      kFinetuneAdapterTunedLr);
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

std::string came_detail(const Built& b) {
  return betas_detail(b, 3) + ", weight decay " +
         num(f(b, "came.weight_decay"));
}

// CAME on every parameter as its README's usage example (lr 2e-4, decoupled
// weight decay 1e-2, betas (0.9, 0.999, 0.9999), eps (1e-30, 1e-16): the
// optimizer's defaults), then the "(tuned)" row at compare's swept rate.
void add_came_rows(std::vector<MethodDef>& out, const std::string& suite,
                   const std::string& name, const std::string& what) {
  Keys official = plain("came", kCameLr);
  official.back() = kv("came.weight_decay", kCameWeightDecay);
  const bool pre = suite == "pretrain";
  MethodDef d = row(suite, name, pre ? "CAME" : "Full FT (CAME)",
                    "CAME (arXiv 2307.02047)",
                    what +
                        "; official settings (CAME README: lr 2e-4, "
                        "weight decay 0.01, its default betas and eps)",
                    fixed(official), came_detail);
  out.push_back(d);
  out.push_back(
      tuned(d,
            what + "; compare's swept rate 3e-4, no weight decay "
                   "(docs/benchmarks/compare.md)",
            fixed({kv("came.lr", pre ? kCameTunedLr : kFinetuneCameTunedLr),
                   "came.weight_decay=0"})));
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
  add_came_rows(out, P, "came",
                "confidence-guided factored optimizer on "
                "every parameter");
  add_galore_rows(out);
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
            "), official defaults (f-dangel/singd: lr 1e-3, momentum 0.9, "
            "damping 1e-3, alpha1 0.5, T 10, lr_cov 1e-2); AdamW at the "
            "baseline's rate for the rest",
        fixed(with_adamw_rest(
            {"optimizer=singd", kv("singd.lr", kSingdLr),
             std::string("singd.structures=") + v.structures,
             std::string("singd.preconditioner_dtype=") + v.dtype},
            kAdamwLr)),
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
            ", kfac.py's defaults (lr 1e-3, damping 1e-3, stat decay 0.95, "
            "T 10); AdamW at the baseline's rate for the rest",
        fixed(with_adamw_rest(
            {"optimizer=kfac", kv("kfac.lr", kSingdLr),
             bf16 ? "kfac.factor_dtype=bfloat16" : "kfac.factor_dtype="},
            kAdamwLr)),
        [](const Built& b) {
          const std::string dt = s(b, "kfac.factor_dtype");
          return "lr " + num(f(b, "kfac.lr")) +
                 (dt.empty() ? "" : ", factors " + dt) + "; others AdamW";
        },
        bf16));
  }
}

// The adapter rows' optimizer: AdamW on every trainable parameter (the
// adapters and what modules_to_save keeps: the new head) at `lr` with
// decoupled weight decay `wd`, adapters on `targets` (PEFT suffix match).
Keys adapter(Keys k, double lr, double wd, const std::string& targets) {
  k.insert(k.end(), {"optimizer=adamw", "route=all", kv("adamw.lr", lr),
                     kv("adamw.weight_decay", wd), "targets=" + targets});
  return k;
}

// "r 8, alpha 8 on q,v (separate q/k/v), lr 0.005, weight decay 0".
std::function<std::string(const Built&)> adapter_detail(
    std::function<std::string(const Built&)> what) {
  return [what](const Built& b) {
    const std::string extra = s(b, "modules_to_save");
    return what(b) + " on " + s(b, "targets") +
           (s(b, "vit.fused_qkv") == "false" ? " (separate q/k/v)" : "") +
           (extra.empty() ? "" : ", also training " + extra) + ", lr " +
           num(f(b, "adamw.lr")) + ", weight decay " +
           num(f(b, "adamw.weight_decay"));
  };
}

// The adapters' detail lines ("r 8, alpha 8, dropout 0.1 on q,v ...").
std::function<std::string(const Built&)> lora_detail() {
  return adapter_detail([](const Built& b) {
    return "r " + s(b, "lora.r") + ", alpha " + num(f(b, "lora.lora_alpha")) +
           ", dropout " + num(f(b, "lora.lora_dropout"));
  });
}
std::function<std::string(const Built&)> lotr_detail() {
  return adapter_detail([](const Built& b) {
    return "rank " + s(b, "lotr.rank") + ", scale " + num(f(b, "lotr.scale")) +
           ", factors shared per type";
  });
}
std::function<std::string(const Built&)> snell_detail() {
  return adapter_detail([](const Built& b) {
    return "r " + s(b, "snell.r") + ", sparsity " +
           num(f(b, "snell.sparsity")) + ", recomputing backward";
  });
}

// LoRA as PEFT's ViT image-classification guide (q and v, alpha = r,
// dropout 0.1, lr 5e-3, no weight decay) at compare's common adapter rank;
// the tuned row is compare's earlier one (every projection, alpha 2r, 1e-2).
void add_lora_rows(std::vector<MethodDef>& out) {
  const auto detail = lora_detail();
  MethodDef d = row(
      "finetune", "lora", "LoRA", "LoRA (arXiv 2106.09685)",
      "low-rank adapters B A on the attention's q and v + the new head; "
      "official settings (PEFT's ViT image-classification guide: q, v, "
      "alpha = r, dropout 0.1, lr 5e-3)",
      [](const CompareOptions& o) {
        return adapter(
            {"method=lora", kv("lora.r", o.rank),
             kv("lora.lora_alpha", static_cast<double>(o.rank)),
             kv("lora.lora_dropout", kLoraDropout), "vit.fused_qkv=false"},
            kLoraLr, 0.0, "q,v");
      },
      detail);
  out.push_back(d);
  out.push_back(tuned(
      d,
      "low-rank adapters on every block projection (fused qkv, proj, "
      "fc) + the new head, alpha 2r, compare's swept lr 1e-2",
      [](const CompareOptions& o) {
        return Keys{kv("lora.lora_alpha", static_cast<double>(2 * o.rank)),
                    "lora.lora_dropout=0", "vit.fused_qkv=true",
                    kv("adamw.lr", kFinetuneAdapterTunedLr),
                    "targets=qkv,proj,fc"};
      }));
}

// LoTR as daskol/lotr's example (q and v; scale 1, i.e. alpha 1/rank; lhs,
// rhs N(0, 1), cores zero), factors shared across layers per projection type
// (the paper). The code gives no learning rate for this task: LoRA's
// official one. No tuned row (compare's sweep never swept LoTR).
void add_lotr_row(std::vector<MethodDef>& out) {
  out.push_back(row(
      "finetune", "lotr", "LoTR", "LoTR (arXiv 2402.01376)",
      "Tucker-2 adapters U G_l V^T on the attention's q and v, U, V shared "
      "across layers per projection type, + the new head; official settings "
      "(daskol/lotr: q, v, scale 1, init normal/zero/normal), LoRA's lr",
      [](const CompareOptions& o) {
        return adapter(
            {"method=lotr", kv("lotr.rank", o.rank), "vit.fused_qkv=false"},
            kLoraLr, 0.0, "q,v");
      },
      lotr_detail()));
}

// SNELL as its official scripts (ssfgunner/SNELL, snell8 FGVC scripts: lr
// 1e-3, weight decay 0.01, rank 8; sparsity 0, the code's default: dense
// kernelized LoRA) on separate q, k, v kernels, proj, fc1, fc2, with the
// cls token trained (freeze_stages keeps head and cls_token); the tuned
// row is compare's earlier one (fused qkv, sparsity 0.5, lr 1e-2, no decay).
void add_snell_rows(std::vector<MethodDef>& out) {
  const auto detail = snell_detail();
  MethodDef d = row(
      "finetune", "snell", "SNELL", "SNELL (arXiv 2411.01800)",
      "kernelized low-rank (KLoRA) updates on q, k, v, proj, fc1, fc2 + the "
      "new head and the cls token; official settings (ssfgunner/SNELL: lr "
      "1e-3, weight decay 0.01, sparsity 0 = dense, the code's default)",
      [](const CompareOptions& o) {
        return adapter(
            {"method=snell", kv("snell.r", o.rank), "snell.sparsity=0",
             "vit.fused_qkv=false", "modules_to_save=head,cls_token"},
            kSnellLr, kSnellWeightDecay, "q,k,v,proj,fc");
      },
      detail);
  out.push_back(d);
  out.push_back(
      tuned(d,
            "SNELL on the fused qkv, proj, fc + the new head, sparsity 0.5, "
            "compare's swept lr 1e-2, no weight decay",
            fixed({"snell.sparsity=0.5", "vit.fused_qkv=true",
                   "modules_to_save=", kv("adamw.lr", kFinetuneAdapterTunedLr),
                   "adamw.weight_decay=0", "targets=qkv,proj,fc"})));
}

// Finetune: adapters on the ViT's block projections, the new head trains
// (PEFT modules_to_save), everything else is frozen.
void add_finetune(std::vector<MethodDef>& out) {
  const std::string F = "finetune";
  out.push_back(row(F, "full-adamw", "Full FT (AdamW)", "",
                    "every parameter trainable, AdamW",
                    fixed(plain("adamw", kFinetuneFullLr)), lr_detail));
  add_came_rows(out, F, "full-came", "every parameter trainable, CAME");
  add_lora_rows(out);
  out.push_back(row(
      F, "projected-adapter", "One-sided projected adapter",
      "Gradient transformations = adapters (arXiv 2502.13811)",
      "W0 + P A on every block projection with P from the SVD of a gradient "
      "(GaLore's dual), merged and rebased periodically; the new head trained "
      "directly",
      [](const CompareOptions& o) {
        return svd_adapter(o.rank, o.finetune_steps, "qkv,proj,fc");
      },
      projected_detail));
  add_lotr_row(out);
  add_snell_rows(out);
}

// What the lm suite's tuned adapter rows lay over their official keys:
// compare's finetune-sweep adapter rate (swept on the ViT, not on this
// suite), no weight decay, every projection.
Keys lm_tuned_adapter() {
  return {kv("adamw.lr", kFinetuneAdapterTunedLr), "adamw.weight_decay=0",
          std::string("targets=") + kLlamaAll};
}

constexpr const char* kLmTunedNote =
    "compare's finetune-sweep adapter rate 1e-2 (swept on the ViT, not on "
    "this suite), no weight decay, every projection";

// The lm suite's adapter rows (LoRA, LoTR, SNELL: official + tuned).
void add_lm_adapters(std::vector<MethodDef>& out) {
  const std::string L = "lm";
  const MethodDef lora = row(
      L, "lora", "LoRA", "LoRA (arXiv 2106.09685)",
      "low-rank adapters B A on q_proj and v_proj; official settings (LoRA "
      "paper, GPT-2 fine-tuning: alpha 32, dropout 0.1, lr 2e-4, weight "
      "decay 0.01) at compare's rank",
      [](const CompareOptions& o) {
        return adapter(
            {"method=lora", kv("lora.r", o.rank),
             kv("lora.lora_alpha", kLmLoraAlpha), "lora.lora_dropout=0.1"},
            kLmLoraLr, kLmLoraWeightDecay, "q_proj,v_proj");
      },
      lora_detail());
  out.push_back(lora);
  out.push_back(tuned(lora,
                      std::string("low-rank adapters on every projection, "
                                  "alpha 2r, no dropout; ") +
                          kLmTunedNote,
                      [](const CompareOptions& o) {
                        Keys k = lm_tuned_adapter();
                        k.push_back(kv("lora.lora_alpha",
                                       static_cast<double>(2 * o.rank)));
                        k.push_back("lora.lora_dropout=0");
                        return k;
                      }));
  const MethodDef lotr = row(
      L, "lotr", "LoTR", "LoTR (arXiv 2402.01376)",
      "Tucker-2 adapters on q_proj and v_proj, factors shared across layers "
      "per projection type; official settings (daskol/lotr: scale 1), "
      "LoRA's official lr",
      [](const CompareOptions& o) {
        return adapter({"method=lotr", kv("lotr.rank", o.rank)}, kLmLoraLr, 0.0,
                       "q_proj,v_proj");
      },
      lotr_detail());
  out.push_back(lotr);
  out.push_back(tuned(lotr, std::string("LoTR; ") + kLmTunedNote,
                      fixed(lm_tuned_adapter())));
  const MethodDef snell = row(
      L, "snell", "SNELL", "SNELL (arXiv 2411.01800)",
      "kernelized low-rank (KLoRA) updates on every projection; the "
      "official scripts' settings (ssfgunner/SNELL FGVC scripts: lr 1e-3, "
      "weight decay 0.01, sparsity 0 = dense; the repository has no "
      "language-model recipe)",
      [](const CompareOptions& o) {
        return adapter(
            {"method=snell", kv("snell.r", o.rank), "snell.sparsity=0"},
            kSnellLr, kSnellWeightDecay, kLlamaAll);
      },
      snell_detail());
  out.push_back(snell);
  out.push_back(tuned(snell,
                      std::string("SNELL, sparsity 0.5; ") + kLmTunedNote,
                      [](const CompareOptions&) {
                        Keys k = lm_tuned_adapter();
                        k.push_back("snell.sparsity=0.5");
                        return k;
                      }));
}

// The lm suite: the cached byte-level LLaMA adapted to held-out fortune
// categories. Adapters train alone (PEFT's causal-LM default: no
// modules_to_save); full fine-tuning and GaLore train every weight.
void add_lm(std::vector<MethodDef>& out) {
  const std::string L = "lm";
  out.push_back(row(L, "full-adamw", "Full FT (AdamW)", "",
                    "every parameter trainable, AdamW at the pretrain "
                    "suite's swept rate",
                    fixed(plain("adamw", kAdamwLr)), lr_detail));
  add_came_rows(out, L, "full-came", "every parameter trainable, CAME");
  add_lm_adapters(out);
  out.push_back(row(
      L, "projected-adapter", "One-sided projected adapter",
      "Gradient transformations = adapters (arXiv 2502.13811)",
      "W0 + P A on every projection with P from the SVD of a gradient "
      "(GaLore's dual), merged and rebased periodically; compare's finetune "
      "setting (no official recipe)",
      [](const CompareOptions& o) {
        return svd_adapter(o.rank, o.lm_steps, kLlamaAll);
      },
      projected_detail));
  const MethodDef galore = row(
      L, "galore-adamw", "GaLore-AdamW", "GaLore (arXiv 2403.03507)",
      "AdamW in an SVD-projected gradient space for the attention and MLP "
      "matrices, unprojected on the rest; official settings (GaLore README, "
      "RoBERTa GLUE fine-tuning: rank 4, scale 4, lr 3e-5; gap 500 scaled "
      "to 5 refreshes per run)",
      [](const CompareOptions& o) {
        return Keys{"method=galore",
                    "optimizer=galore_adamw",
                    "aux_optimizer=galore_adamw",
                    kv("galore_adamw.lr", kLmGaloreLr),
                    "galore_adamw.weight_decay=0",
                    "galore.targets=(attn|mlp)",
                    kv("galore.rank", kLmGaloreRank),
                    kv("galore.update_proj_gap", refresh_gap(o.lm_steps)),
                    kv("galore.scale", kLmGaloreScale)};
      },
      galore_detail("galore_adamw"));
  out.push_back(galore);
  out.push_back(tuned(galore,
                      "GaLore-AdamW at the pretrain suite's official rate "
                      "(lr 0.01, scale 0.25; swept there, not here)",
                      fixed({kv("galore_adamw.lr", kGaloreLr),
                             kv("galore.scale", kGaloreScale)})));
}

std::vector<MethodDef> make_defs() {
  std::vector<MethodDef> out;
  add_toy(out);
  add_pretrain(out);
  add_finetune(out);
  add_lm(out);
  return out;
}

}  // namespace

namespace {

// What each method's official code or paper uses for the task type, per
// lowmem train key (docs/compare.md, "Official settings"). `note` says why
// this run's row may still differ (shown where it does). A "<method>-tuned"
// row is listed against the same values.
struct Official {
  const char *suite, *method, *key, *value, *source, *note;
};
constexpr const char* kGaloreReadme =
    "GaLore README, LLaMA-60m pre-training command = "
    "scripts/benchmark_c4/llama_60m.sh (github.com/jiaweizzhao/GaLore @ "
    "2cc66f8)";
constexpr const char* kGaloreMain =
    "GaLore torchrun_main.py: --proj_type default, one param group for the "
    "attn/mlp linears";
constexpr const char* kGaloreAdamw =
    "GaLore galore_torch/adamw.py: AdamW.__init__ defaults";
constexpr const char* kCameReadme =
    "CAME README usage example and CAME.__init__ defaults "
    "(github.com/yangluo7/CAME @ e77c5c0)";
constexpr const char* kSnellScripts =
    "SNELL scripts/fgvc/snell8/*.sh and train.py "
    "(github.com/ssfgunner/SNELL @ e9d5185)";
constexpr const char* kSnellModel =
    "SNELL model/vision_transformer_timm.py: AttentionSNELLParallel (q, k, v "
    "apart), freeze_stages (head, cls_token trained)";
constexpr const char* kSingdCode =
    "SINGD.__init__ defaults (github.com/f-dangel/singd @ 1ac69a3)";
constexpr const char* kKfacCode =
    "StructuredNGD-DL optimizers/kfac.py defaults (SINGD's KFAC baseline)";
constexpr const char* kPeftGuide =
    "PEFT ViT image-classification guide (docs/source/task_guides/"
    "image_classification_lora.md): LoraConfig and TrainingArguments";
constexpr const char* kLoraPaper =
    "LoRA (arXiv 2106.09685) r_q = r_v = 8; PEFT LoraConfig default r 8";
constexpr const char* kLotrCode =
    "LoTR README example and LoTRLinear defaults (github.com/daskol/lotr "
    "@ b8776bd)";
constexpr const char* kLoraGpt2 =
    "LoRA (arXiv 2106.09685) Table 11, GPT-2 E2E fine-tuning: r_q = r_v = 4, "
    "alpha 32, dropout 0.1, lr 2e-4, weight decay 0.01";
constexpr const char* kGaloreGlue =
    "GaLore README, fine-tuning RoBERTa on GLUE (run_glue.py: --lora_r 4 "
    "--galore_scale 4 --update_proj_gap 500 --learning_rate 3e-5; "
    "github.com/jiaweizzhao/GaLore @ 0c63f63)";
constexpr const char* kLmTuned =
    "the (tuned) row: compare's finetune sweep (ViT), not swept here";
constexpr const char* kAdafactorHf =
    "Adafactor (arXiv 1804.04235) as in transformers.Adafactor's defaults";
constexpr const char* kGaloreTunedRow =
    "the (tuned) row: compare's earlier setting (not swept)";
constexpr const char* kScaled =
    "scaled to this model: the README's rank / width (128 / 512) = width / 4";
constexpr const char* kTunedRow = "the (tuned) row: compare's sweep";
const Official kOfficial[] = {
    {"pretrain", "galore-adamw", "galore.rank", "128", kGaloreReadme, kScaled},
    {"pretrain", "galore-adamw", "galore.update_proj_gap", "200", kGaloreReadme,
     "5 refreshes per run (the README's 200 of 10k steps)"},
    {"pretrain", "galore-adamw", "galore.scale", "0.25", kGaloreReadme,
     kGaloreTunedRow},
    {"pretrain", "galore-adamw", "galore_adamw.lr", "0.01", kGaloreReadme,
     kGaloreTunedRow},
    {"pretrain", "galore-adamw", "galore_adamw.weight_decay", "0",
     kGaloreReadme, ""},
    {"pretrain", "galore-adamw", "galore.proj_type", "std", kGaloreMain, ""},
    {"pretrain", "galore-adamw", "galore_adamw.eps", "1e-6", kGaloreAdamw, ""},
    {"pretrain", "came", "came.lr", "0.0002", kCameReadme, kTunedRow},
    {"pretrain", "came", "came.weight_decay", "0.01", kCameReadme, kTunedRow},
    {"pretrain", "came", "came.beta1", "0.9", kCameReadme, ""},
    {"pretrain", "came", "came.beta2", "0.999", kCameReadme, ""},
    {"pretrain", "came", "came.beta3", "0.9999", kCameReadme, ""},
    {"pretrain", "came", "came.eps1", "1e-30", kCameReadme, ""},
    {"pretrain", "came", "came.eps2", "1e-16", kCameReadme, ""},
    {"pretrain", "adafactor", "adafactor.relative_step", "true", kAdafactorHf,
     "compare's baseline: fixed lr 1e-2 (its sweep), as CAME's comparison"},
    {"pretrain", "adafactor", "adafactor.scale_parameter", "true", kAdafactorHf,
     "idem"},
    {"pretrain", "adafactor", "adafactor.beta1", "none", kAdafactorHf,
     "compare's baseline: momentum 0.9, as CAME's comparison"},
    {"pretrain", "singd-dense", "singd.lr", "0.001", kSingdCode, ""},
    {"pretrain", "singd-dense", "singd.damping", "0.001", kSingdCode, ""},
    {"pretrain", "singd-dense", "singd.momentum", "0.9", kSingdCode, ""},
    {"pretrain", "singd-dense", "singd.alpha1", "0.5", kSingdCode, ""},
    {"pretrain", "singd-dense", "singd.T", "10", kSingdCode, ""},
    {"pretrain", "singd-dense", "singd.lr_cov", "0.01", kSingdCode, ""},
    {"pretrain", "singd-diag", "singd.lr", "0.001", kSingdCode, ""},
    {"pretrain", "kfac", "kfac.lr", "0.001", kKfacCode, ""},
    {"pretrain", "kfac", "kfac.damping", "0.001", kKfacCode, ""},
    {"finetune", "full-came", "came.lr", "0.0002", kCameReadme, kTunedRow},
    {"finetune", "full-came", "came.weight_decay", "0.01", kCameReadme,
     kTunedRow},
    {"finetune", "lora", "lora.r", "8", kLoraPaper,
     "compare's --rank (default 8)"},
    {"finetune", "lora", "lora.lora_alpha", "8", kPeftGuide,
     "alpha = r as the guide (16 / 16); the (tuned) row: 2r"},
    {"finetune", "lora", "lora.lora_dropout", "0.1", kPeftGuide, kTunedRow},
    {"finetune", "lora", "targets", "q,v", kPeftGuide, kTunedRow},
    {"finetune", "lora", "vit.fused_qkv", "false", kPeftGuide,
     "the (tuned) row: one adapter on the fused qkv"},
    {"finetune", "lora", "adamw.lr", "0.005", kPeftGuide, kTunedRow},
    {"finetune", "lora", "adamw.weight_decay", "0", kPeftGuide, ""},
    {"finetune", "lotr", "lotr.scale", "1", kLotrCode, ""},
    {"finetune", "lotr", "targets", "q,v", kLotrCode, ""},
    {"finetune", "lotr", "vit.fused_qkv", "false", kLotrCode, ""},
    {"finetune", "snell", "snell.r", "8", kSnellScripts,
     "compare's --rank (default 8)"},
    {"finetune", "snell", "snell.sparsity", "0", kSnellScripts,
     "train.py --init_thres default; the per-dataset scripts use 0 to 0.995 "
     "(VTAB-1k median 0.4); the (tuned) row: 0.5"},
    {"finetune", "snell", "adamw.lr", "0.001", kSnellScripts, kTunedRow},
    {"finetune", "snell", "adamw.weight_decay", "0.01", kSnellScripts,
     "the (tuned) row: 0; lowmem decays every trainable tensor, timm "
     "exempts biases and the cls token"},
    {"finetune", "snell", "targets", "q,k,v,proj,fc", kSnellModel,
     "the (tuned) row: the fused qkv, proj, fc"},
    {"finetune", "snell", "vit.fused_qkv", "false", kSnellModel,
     "the (tuned) row: one kernel on the fused qkv"},
    {"finetune", "snell", "modules_to_save", "head,cls_token", kSnellModel,
     "the (tuned) row: the head only"},
    {"lm", "full-came", "came.lr", "0.0002", kCameReadme, kTunedRow},
    {"lm", "full-came", "came.weight_decay", "0.01", kCameReadme, kTunedRow},
    {"lm", "lora", "lora.r", "4", kLoraGpt2, "compare's --rank (default 8)"},
    {"lm", "lora", "lora.lora_alpha", "32", kLoraGpt2, "the (tuned) row: 2r"},
    {"lm", "lora", "lora.lora_dropout", "0.1", kLoraGpt2, kLmTuned},
    {"lm", "lora", "targets", "q_proj,v_proj", kLoraGpt2, kLmTuned},
    {"lm", "lora", "adamw.lr", "0.0002", kLoraGpt2, kLmTuned},
    {"lm", "lora", "adamw.weight_decay", "0.01", kLoraGpt2, kLmTuned},
    {"lm", "lotr", "lotr.scale", "1", kLotrCode, ""},
    {"lm", "lotr", "targets", "q_proj,v_proj", kLotrCode, kLmTuned},
    {"lm", "lotr", "adamw.lr", "0.0002", kLoraGpt2,
     "LoTR gives no rate: LoRA's; the (tuned) row: compare's"},
    {"lm", "snell", "snell.sparsity", "0", kSnellScripts,
     "the (tuned) row: 0.5"},
    {"lm", "snell", "adamw.lr", "0.001", kSnellScripts, kLmTuned},
    {"lm", "snell", "adamw.weight_decay", "0.01", kSnellScripts, kLmTuned},
    {"lm", "galore-adamw", "galore.rank", "4", kGaloreGlue, ""},
    {"lm", "galore-adamw", "galore.scale", "4", kGaloreGlue,
     "the (tuned) row: the pre-training scale 0.25"},
    {"lm", "galore-adamw", "galore.update_proj_gap", "500", kGaloreGlue,
     "5 refreshes per run"},
    {"lm", "galore-adamw", "galore_adamw.lr", "3e-5", kGaloreGlue,
     "the (tuned) row: the pre-training rate 0.01"},
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
  if (options.base_dtype != "auto" && c.method != "full" &&
      c.method != "galore") {
    c.set("base_dtype", options.base_dtype);
  }
  if (options.optim_bits != 0 && c.optimizer_has_optim_bits()) {
    c.set("optim_bits", std::to_string(options.optim_bits));
  }
  return c;
}

ModelVariant model_variant(const MethodDef& method, const Suite& suite,
                           const CompareOptions& options) {
  train::Config c = method_config(method, suite, options);
  ModelVariant v;
  v.bf16 = method.bf16;
  v.fused_qkv = c.get("vit.fused_qkv") != "false";
  return v;
}

}  // namespace lowmem::compare::detail

namespace lowmem::compare {

std::vector<OfficialSetting> official_settings(const CompareOptions& o) {
  std::vector<OfficialSetting> out;
  for (const auto& e : detail::kOfficial) {
    // The method's row, then its "(tuned)" row if it has one.
    for (const std::string& name :
         {std::string(e.method), std::string(e.method) + "-tuned"}) {
      const detail::MethodDef* def = nullptr;
      for (const auto& d : detail::method_defs())
        if (d.info.suite == e.suite && d.info.name == name) def = &d;
      if (def == nullptr) continue;
      train::Config c = detail::method_config(*def, detail::suite(e.suite), o);
      OfficialSetting r;
      r.suite = e.suite;
      r.method = name;
      r.key = e.key;
      r.official = e.value;
      r.used = c.get(e.key);
      r.source = e.source;
      r.deviates = !detail::same_value(r.official, r.used);
      r.note = r.deviates ? e.note : "";
      out.push_back(std::move(r));
    }
  }
  return out;
}

}  // namespace lowmem::compare
