// Methods of the pretrain and finetune suites. Each is built only when the
// library pieces it needs are in this build (__has_include); otherwise it is
// registered with the reason it is skipped.
//
// Common recipe (docs/compare.md): no weight decay anywhere (the claims
// compare optimizers, and decoupled decay means different things in each);
// parameters a method does not cover (embeddings, LayerNorms, biases, the new
// head) go to AdamW with the same learning rate; warm-up + cosine schedule.
// Every options object goes through configured(): the run's `--set` keys of
// its section (came.beta3, adamw.beta2, ...) change the named fields only.
#include <ATen/ATen.h>

#include <set>
#include <sstream>

#include "compare_internal.h"
#include "components.h"
#include "lowmem/core/check.h"
#include "method_wiring.h"
#include "lowmem/optim/adamw.h"

#if __has_include("lowmem/optim/came.h") && __has_include("lowmem/optim/adafactor.h")
#define LOWMEM_COMPARE_HAVE_CAME 1
#include "lowmem/optim/adafactor.h"
#include "lowmem/optim/came.h"
#endif
#if __has_include("lowmem/optim/galore.h") && __has_include("lowmem/optim/galore_adamw.h")
#define LOWMEM_COMPARE_HAVE_GALORE 1
#include "lowmem/optim/galore.h"
#include "lowmem/optim/galore_adamw.h"
#endif
#if __has_include("lowmem/projection/projected_linear.h") && \
                  __has_include("lowmem/optim/galore_adapter.h")
#define LOWMEM_COMPARE_HAVE_PROJECTED 1
#include "lowmem/optim/galore_adapter.h"
#include "lowmem/projection/projected_linear.h"
#endif
#if __has_include("lowmem/optim/singd.h") && \
                  __has_include("lowmem/nn/curvature_tap.h")
#define LOWMEM_COMPARE_HAVE_SINGD 1
#include "lowmem/nn/curvature_tap.h"
#include "lowmem/optim/singd.h"
#endif
#if __has_include("lowmem/optim/kfac.h")
#define LOWMEM_COMPARE_HAVE_KFAC 1
#include "lowmem/optim/kfac.h"
#endif
#if __has_include("lowmem/adapters/lora.h") && __has_include("lowmem/adapters/lotr.h") && \
    __has_include("lowmem/adapters/snell.h")
#define LOWMEM_COMPARE_HAVE_ADAPTERS 1
#include "lowmem/adapters/lora.h"
#include "lowmem/adapters/lotr.h"
#include "lowmem/adapters/snell.h"
#endif

namespace lowmem::train::compare::detail {
namespace {

// Learning rates (peak of the schedule). AdamW, Adafactor and CAME are each
// the best of a grid swept at the default budget with the same seed, data and
// steps (table and command: docs/benchmarks/compare.md, "Learning-rate sweep"):
// (seed 0; the two best of each re-run with seed 1, the best mean kept)
//   AdamW     {5e-4, 7e-4, 1e-3, 1.5e-3, 2e-3, 3e-3}        -> 1e-3
//   Adafactor {1e-3, 2e-3, 3e-3, 5e-3, 1e-2, 2e-2, 4e-2}   -> 1e-2 (external lr,
//             relative step and parameter scaling off, as HF/GaLore baselines)
//   CAME      {5e-5, 1e-4, 2e-4, 3e-4, 5e-4, 1e-3, 2e-3, 3e-3, 5e-3} -> 3e-4
//             (the official README's example is 2e-4; without bias correction
//             and with beta3 = 0.9999 its confidence factor enlarges the early
//             steps, so it wants a smaller lr than AdamW)
// The others (GaLore, the sketch adapter, SINGD, KFAC) were not swept: 3e-3.
constexpr double kAdamwLr = 1e-3;
constexpr double kAdafactorLr = 1e-2;
constexpr double kCameLr = 3e-4;
constexpr double kPretrainLr = 3e-3;   // GaLore (both inners), sketch adapter, the rest of SINGD/KFAC
constexpr double kSingdLr = 3e-3;      // SINGD / KFAC step size
// Finetune (one seed, 150 steps, accuracy on 2000 test images, ~0.9 points of
// sampling noise): full AdamW {3e-4, 1e-3, 3e-3} -> 3e-3 (grid edge); full CAME
// {1e-4, 3e-4, 1e-3} -> 3e-4; LoRA and SNELL {2e-3, 5e-3, 1e-2} -> 1e-2 (grid
// edge) for every adapter (LoTR and the projected adapter not swept).
constexpr double kFinetuneFullLr = 3e-3;
constexpr double kFinetuneCameLr = 3e-4;
constexpr double kFinetuneAdapterLr = 1e-2;

std::vector<at::Tensor> trainable(torch::nn::Module& m) {
  std::vector<at::Tensor> out;
  for (const auto& p : m.parameters())
    if (p.requires_grad()) out.push_back(p);
  return out;
}

// Trainable params of `m` not in `exclude` (by storage identity).
std::vector<at::Tensor> trainable_except(torch::nn::Module& m,
                                         const std::vector<at::Tensor>& exclude) {
  std::set<const void*> ex;
  for (const auto& t : exclude) ex.insert(t.unsafeGetTensorImpl());
  std::vector<at::Tensor> out;
  for (const auto& p : m.parameters())
    if (p.requires_grad() && !ex.count(p.unsafeGetTensorImpl())) out.push_back(p);
  return out;
}

std::shared_ptr<torch::optim::Optimizer> adamw(std::vector<at::Tensor> params,
                                               double lr, const CompareOptions& o,
                                               Training& t) {
  return std::make_shared<optim::AdamW>(
      std::move(params),
      configured(o, "adamw", optim::AdamWOptions(lr).weight_decay(0.0), t));
}

// GaLore's own AdamW (inner optimizer of GaLore-AdamW and the projected
// adapters) takes the adamw keys it has (all but amsgrad).
optim::GaLoreAdamWOptions galore_adamw(double lr, const CompareOptions& o, Training& t) {
  return configured(o, "adamw", optim::GaLoreAdamWOptions(lr), t);
}

MethodDef def(std::string suite, std::string name, std::string label,
              std::string paper, std::string description) {
  MethodDef d;
  d.info = {std::move(suite), std::move(name), std::move(label),
            std::move(paper), std::move(description), ""};
  return d;
}

[[maybe_unused]] std::function<std::string()> missing(const std::string& what) {
  return [what]() { return what + " is not in this build"; };
}

// GaLore / projected-adapter rank: o.projection_rank or width / 4.
int64_t projection_rank(const CompareOptions& o, int64_t width) {
  return o.projection_rank > 0 ? o.projection_rank : std::max<int64_t>(1, width / 4);
}
// Basis refresh gap: 5 refreshes per run (GaLore's 200 is for 10k+ steps).
int64_t refresh_gap(int64_t steps) { return std::max<int64_t>(10, steps / 5); }

// Block projections of the finetune ViT (PEFT-style suffix targets).
const std::vector<std::string> kBlockTargets = {"qkv", "proj", "fc"};

#if defined(LOWMEM_COMPARE_HAVE_CAME)
optim::AdafactorOptions adafactor_options(double lr, const CompareOptions& o,
                                          Training& t) {
  // Fixed lr, no relative step or parameter scaling (Adam-like magnitudes, as
  // the CAME paper's baseline), momentum 0.9 as CAME (arXiv 2307.02047 §4).
  return configured(o, "adafactor",
                    optim::AdafactorOptions(lr)
                        .relative_step(false)
                        .scale_parameter(false)
                        .warmup_init(false)
                        .beta1(0.9)
                        .weight_decay(0.0),
                    t);
}

optim::CameOptions came_options(double lr, const CompareOptions& o, Training& t) {
  return configured(o, "came", optim::CameOptions(lr), t);
}
#endif

#if defined(LOWMEM_COMPARE_HAVE_GALORE)
Training galore(Workload& w, const CompareOptions& o, bool came, int64_t width,
                int64_t steps) {
  Training t;
  auto [projected, plain] = optim::GaLore::route(*w.model);
  ::lowmem::train::detail::GaloreSection defaults;
  defaults.g.projector(projection::ProjectorOptions()
                           .rank(projection_rank(o, width))
                           .update_proj_gap(refresh_gap(steps))
                           .scale(1.0));
  const optim::GaLoreOptions go = configured(o, "galore", defaults, t).g;
  optim::InnerFactory inner;
  double lr = kPretrainLr;
  if (came) {
#if defined(LOWMEM_COMPARE_HAVE_CAME)
    const auto co = came_options(kPretrainLr, o, t);
    lr = co.lr();
    inner = wiring::inner_factory<optim::CAME>(co);
#endif
  } else {
    const auto ao = galore_adamw(kPretrainLr, o, t);
    lr = ao.lr();
    inner = wiring::inner_factory<optim::GaLoreAdamW>(ao);
  }
  const size_t n_projected = projected.size();
  t.optimizers.push_back(wiring::make_galore(projected, plain, inner, go));
  std::ostringstream d;
  d << "rank " << go.projector().rank() << ", SVD refresh every "
    << go.projector().update_proj_gap() << " steps, scale " << num(go.projector().scale())
    << ", " << n_projected << " projected matrices, lr " << num(lr);
  t.detail = d.str();
  return t;
}
#endif

#if defined(LOWMEM_COMPARE_HAVE_SINGD)
Training singd(Workload& w, const CompareOptions& o, const std::string& structures,
               const std::string& dtype) {
  Training t;
  auto split = nn::split_curvature_parameters(*w.model);
  std::vector<at::Tensor> rest;
  for (auto& kv : split.uncovered) rest.push_back(kv.second);
  const auto opts = configured(
      o, "singd",
      optim::SingdOptions(kSingdLr).structures(structures).preconditioner_dtype(dtype), t);
  t.optimizers.push_back(std::make_shared<optim::SINGD>(*w.model, opts));
  if (!rest.empty()) t.optimizers.push_back(adamw(rest, kPretrainLr, o, t));
  t.detail = "structures " + opts.structures() + ", T " + std::to_string(opts.T()) +
             ", lr " + detail::num(opts.lr()) +
             (opts.preconditioner_dtype().empty()
                  ? ""
                  : ", preconditioner " + opts.preconditioner_dtype()) +
             "; " +
             std::to_string(split.covered.size()) + " layer tensors, others AdamW";
  return t;
}
#endif

#if defined(LOWMEM_COMPARE_HAVE_PROJECTED) && defined(LOWMEM_COMPARE_HAVE_GALORE)
// The one-sided projected adapter (arXiv 2502.13811's adapter form) on the
// slots `targets` selects; GaLore's AdamW at `lr` trains the A factors and
// whatever else still trains. Pretrain: every slot, seeded random sketch, the
// rest trains; finetune: the block projections, SVD basis, the rest frozen.
Training projected_adapter(Workload& w, const CompareOptions& o,
                           const projection::ProjectorOptions& po,
                           const adapters::TargetOptions& targets, bool freeze_rest,
                           double lr) {
  Training t;
  ::lowmem::train::detail::ProjectedAdapterSection defaults;
  defaults.p = po;
  defaults.freeze_rest = freeze_rest;
  const auto s = configured(o, "projected_adapter", defaults, t);
  auto pa = wiring::inject_projected_adapters(*w.model, targets, s.p, s.freeze_rest);
  std::vector<at::Tensor> plain = trainable_except(*w.model, pa.a());
  const auto ao = galore_adamw(lr, o, t);
  t.optimizers.push_back(wiring::make_projected_adapter_optimizer(
      pa, plain, wiring::inner_factory<optim::GaLoreAdamW>(ao),
      optim::GaLoreOptions().projector(s.p).state_on_refresh(s.state_on_refresh)));
  t.detail = "rank " + std::to_string(s.p.rank()) + ", " +
             (s.p.basis() == "svd" ? std::string("SVD basis")
                                   : "random " + s.p.basis() + " sketch") +
             ", rebase every " + std::to_string(s.p.update_proj_gap()) + " steps, " +
             std::to_string(pa.layers.size()) + " adapters, lr " + num(ao.lr());
  return t;
}
#endif

}  // namespace

double pretrain_adamw_lr() { return kAdamwLr; }

void add_model_methods(std::vector<MethodDef>& out) {
  const std::string P = "pretrain", F = "finetune";
  // ------------------------------------------------------------ pretrain
  {
    MethodDef d = def(P, "adamw", "AdamW", "",
                      "lowmem fused AdamW on every parameter (the baseline)");
    d.setup = [](Workload& w, const CompareOptions& o) {
      Training t;
      const auto ao = configured(o, "adamw", optim::AdamWOptions(kAdamwLr).weight_decay(0.0), t);
      t.optimizers.push_back(std::make_shared<optim::AdamW>(trainable(*w.model), ao));
      t.detail = "lr " + num(ao.lr()) + ", betas (" + num(std::get<0>(ao.betas())) + ", " +
                 num(std::get<1>(ao.betas())) + ")";
      return t;
    };
    out.push_back(d);
  }
  {
    MethodDef d = def(P, "adafactor", "Adafactor", "Adafactor (arXiv 1804.04235)",
                      "factored second moments, momentum 0.9, on every parameter");
#if defined(LOWMEM_COMPARE_HAVE_CAME)
    d.setup = [](Workload& w, const CompareOptions& o) {
      Training t;
      const auto ao = adafactor_options(kAdafactorLr, o, t);
      t.optimizers.push_back(std::make_shared<optim::Adafactor>(trainable(*w.model), ao));
      t.detail = (ao.relative_step() ? std::string("relative step")
                                     : "lr " + num(ao.get_lr()) + " fixed") +
                 ", beta1 " + (ao.beta1() ? num(*ao.beta1()) : std::string("none")) +
                 (ao.scale_parameter() ? ", parameter scaling" : ", no parameter scaling");
      return t;
    };
#else
    d.unavailable = missing("lowmem/optim/adafactor.h");
#endif
    out.push_back(d);
  }
  {
    MethodDef d = def(P, "came", "CAME", "CAME (arXiv 2307.02047)",
                      "confidence-guided factored optimizer on every parameter");
#if defined(LOWMEM_COMPARE_HAVE_CAME)
    d.setup = [](Workload& w, const CompareOptions& o) {
      Training t;
      const auto co = came_options(kCameLr, o, t);
      t.optimizers.push_back(std::make_shared<optim::CAME>(trainable(*w.model), co));
      const auto& b = co.betas();
      t.detail = "lr " + num(co.lr()) + ", betas (" + num(std::get<0>(b)) + ", " +
                 num(std::get<1>(b)) + ", " + num(std::get<2>(b)) + ")";
      return t;
    };
#else
    d.unavailable = missing("lowmem/optim/came.h");
#endif
    out.push_back(d);
  }
  for (const bool came : {false, true}) {
    MethodDef d = def(P, came ? "galore-came" : "galore-adamw",
                      came ? "GaLore-CAME" : "GaLore-AdamW", "GaLore (arXiv 2403.03507)",
                      std::string(came ? "CAME" : "AdamW") +
                          " in an SVD-projected gradient space for the block "
                          "matrices, unprojected on the rest");
#if defined(LOWMEM_COMPARE_HAVE_GALORE) && defined(LOWMEM_COMPARE_HAVE_CAME)
    d.setup = [came](Workload& w, const CompareOptions& o) {
      return galore(w, o, came, o.gpt_width, o.pretrain_steps);
    };
#else
    d.unavailable = missing("lowmem/optim/galore.h");
#endif
    out.push_back(d);
  }
  {
    MethodDef d = def(P, "rsketch-adapter", "Random-sketch adapter",
                      "Gradient transformations = adapters (arXiv 2502.13811)",
                      "one-sided adapters W0 + P A on the block matrices with a "
                      "seeded random sketch P (regenerated, never stored), merged "
                      "and re-sketched periodically; AdamW on A and the rest");
#if defined(LOWMEM_COMPARE_HAVE_PROJECTED) && defined(LOWMEM_COMPARE_HAVE_GALORE)
    d.setup = [](Workload& w, const CompareOptions& o) {
      // Every slot; the rest of the model trains with the same inner AdamW.
      return projected_adapter(w, o,
                               projection::ProjectorOptions()
                                   .rank(projection_rank(o, o.gpt_width))
                                   .update_proj_gap(refresh_gap(o.pretrain_steps))
                                   .basis("orthogonal")
                                   .seed(static_cast<int64_t>(o.seed))
                                   .cache_sketch(false),
                               adapters::TargetOptions(), /*freeze_rest=*/false,
                               kPretrainLr);
    };
#else
    d.unavailable = missing("lowmem/projection/projected_linear.h");
#endif
    out.push_back(d);
  }
  struct SingdVariant {
    const char* name;
    const char* label;
    const char* structures;
    const char* dtype;
    bool bf16;
  };
  for (const SingdVariant v :
       {SingdVariant{"singd-dense", "SINGD (dense)", "dense", "", false},
        SingdVariant{"singd-diag", "SINGD (diagonal)", "diagonal", "", false},
        SingdVariant{"singd-bf16", "SINGD (dense, bf16)", "dense", "bfloat16", true}}) {
    MethodDef d = def(P, v.name, v.label, "SINGD (arXiv 2312.05705)",
                      std::string("inverse-free Kronecker-factored natural gradient on "
                                  "the block linears (") +
                          v.structures + " factors" +
                          (v.bf16 ? ", model and preconditioner in bfloat16" : "") +
                          "), AdamW for the rest");
    d.bf16 = v.bf16;
#if defined(LOWMEM_COMPARE_HAVE_SINGD)
    const std::string s = v.structures, dt = v.dtype;
    d.setup = [s, dt](Workload& w, const CompareOptions& o) { return singd(w, o, s, dt); };
#else
    d.unavailable = missing("lowmem/optim/singd.h");
#endif
    out.push_back(d);
  }
  for (const bool bf16 : {false, true}) {
    MethodDef d = def(P, bf16 ? "kfac-bf16" : "kfac", bf16 ? "KFAC (bf16)" : "KFAC",
                      "KFAC (arXiv 1503.05671)",
                      std::string("Kronecker-factored natural gradient with damped inverses on "
                                  "the block linears") +
                          (bf16 ? " (model and factors in bfloat16, inverted in fp32)" : "") +
                          ", AdamW for the rest");
    d.bf16 = bf16;
#if defined(LOWMEM_COMPARE_HAVE_KFAC) && defined(LOWMEM_COMPARE_HAVE_SINGD)
    d.setup = [bf16](Workload& w, const CompareOptions& o) {
      Training t;
      auto split = nn::split_curvature_parameters(*w.model);
      std::vector<at::Tensor> rest;
      for (auto& kv : split.uncovered) rest.push_back(kv.second);
      const auto opts = configured(
          o, "kfac", optim::KfacOptions(kSingdLr).factor_dtype(bf16 ? "bfloat16" : ""), t);
      t.optimizers.push_back(std::make_shared<optim::KFAC>(*w.model, opts));
      if (!rest.empty()) t.optimizers.push_back(adamw(rest, kPretrainLr, o, t));
      t.detail = "lr " + num(opts.lr()) +
                 (opts.factor_dtype().empty() ? "" : ", factors " + opts.factor_dtype()) +
                 "; others AdamW";
      return t;
    };
#else
    d.unavailable = missing("lowmem/optim/kfac.h");
#endif
    out.push_back(d);
  }

  // ------------------------------------------------------------ finetune
  {
    MethodDef d = def(F, "full-adamw", "Full FT (AdamW)", "",
                      "every parameter trainable, AdamW");
    d.setup = [](Workload& w, const CompareOptions& o) {
      Training t;
      t.optimizers.push_back(adamw(trainable(*w.model), kFinetuneFullLr, o, t));
      t.detail = "lr " + num(kFinetuneFullLr);
      return t;
    };
    out.push_back(d);
  }
  {
    MethodDef d = def(F, "full-came", "Full FT (CAME)", "CAME (arXiv 2307.02047)",
                      "every parameter trainable, CAME");
#if defined(LOWMEM_COMPARE_HAVE_CAME)
    d.setup = [](Workload& w, const CompareOptions& o) {
      Training t;
      t.optimizers.push_back(std::make_shared<optim::CAME>(
          trainable(*w.model), came_options(kFinetuneCameLr, o, t)));
      t.detail = "lr " + num(kFinetuneCameLr);
      return t;
    };
#else
    d.unavailable = missing("lowmem/optim/came.h");
#endif
    out.push_back(d);
  }
#if defined(LOWMEM_COMPARE_HAVE_ADAPTERS)
  // Adapter methods: the blocks' qkv/proj/fc get adapters, the new head
  // stays trainable (PEFT modules_to_save), everything else is frozen.
  auto adapter_method = [&](const char* name, const char* label, const char* paper,
                            const char* desc,
                            std::function<std::shared_ptr<adapters::AdapterModel>(
                                std::shared_ptr<torch::nn::Module>, const CompareOptions&,
                                Training&)>
                                inject) {
    MethodDef d = def(F, name, label, paper, desc);
    d.setup = [inject](Workload& w, const CompareOptions& o) {
      Training t;
      auto am = inject(w.model, o, t);  // sets t.detail
      t.optimizers.push_back(adamw(am->trainable_parameters(), kFinetuneAdapterLr, o, t));
      t.keep_alive.push_back(am);
      t.detail += ", lr " + num(kFinetuneAdapterLr);
      return t;
    };
    out.push_back(d);
  };
  const auto targets = adapters::TargetOptions(kBlockTargets).modules_to_save({"head"});
  adapter_method(
      "lora", "LoRA", "LoRA (arXiv 2106.09685)",
      "low-rank adapters B A on every block projection + the new head",
      [targets](std::shared_ptr<torch::nn::Module> m, const CompareOptions& o,
                Training& t) {
        const auto lo = configured(
            o, "lora",
            adapters::LoraOptions().r(o.rank).lora_alpha(static_cast<double>(2 * o.rank)), t);
        t.detail = "r " + std::to_string(lo.r()) + ", alpha " + num(lo.lora_alpha());
        return adapters::inject_lora(m, targets, lo);
      });
#else
  for (const char* n : {"lora"}) {
    MethodDef d = def(F, n, "LoRA", "LoRA (arXiv 2106.09685)",
                      "low-rank adapters on every block projection + the new head");
    d.unavailable = missing("lowmem/adapters/lora.h");
    out.push_back(d);
  }
#endif
  {
    MethodDef d = def(F, "projected-adapter", "One-sided projected adapter",
                      "Gradient transformations = adapters (arXiv 2502.13811)",
                      "W0 + P A on every block projection with P from the SVD of a "
                      "gradient (GaLore's dual), merged and rebased periodically; "
                      "the new head trained directly");
#if defined(LOWMEM_COMPARE_HAVE_PROJECTED) && defined(LOWMEM_COMPARE_HAVE_GALORE)
    d.setup = [](Workload& w, const CompareOptions& o) {
      // Only the blocks' projections (the patch embedding and the head are
      // slots too); the new head is trained directly, the rest is frozen.
      return projected_adapter(
          w, o,
          projection::ProjectorOptions()
              .rank(o.rank)
              .update_proj_gap(refresh_gap(o.finetune_steps))
              .basis("svd"),
          adapters::TargetOptions(kBlockTargets).modules_to_save({"head"}),
          /*freeze_rest=*/true, kFinetuneAdapterLr);
    };
#else
    d.unavailable = missing("lowmem/projection/projected_linear.h");
#endif
    out.push_back(d);
  }
#if defined(LOWMEM_COMPARE_HAVE_ADAPTERS)
  adapter_method(
      "lotr", "LoTR", "LoTR (arXiv 2402.01376)",
      "Tucker-2 adapters U G_l V^T with U, V shared across layers per projection "
      "type + the new head",
      [targets](std::shared_ptr<torch::nn::Module> m, const CompareOptions& o,
                Training& t) {
        const auto lo = configured(o, "lotr", adapters::LotrOptions().rank(o.rank), t);
        t.detail = "rank " + std::to_string(lo.rank()) + ", factors shared per type";
        return adapters::inject_lotr(m, targets, lo);
      });
  adapter_method(
      "snell", "SNELL", "SNELL (arXiv 2411.01800)",
      "kernelized low-rank (KLoRA) sparse updates on every block projection + the "
      "new head",
      [targets](std::shared_ptr<torch::nn::Module> m, const CompareOptions& o,
                Training& t) {
        const auto so =
            configured(o, "snell", adapters::SnellOptions(o.rank).sparsity(0.5), t);
        t.detail = "r " + std::to_string(so.r()) + ", sparsity " + num(so.sparsity()) +
                   ", recomputing backward";
        return adapters::inject_snell(m, targets, so);
      });
#else
  for (const char* n : {"lotr", "snell"}) {
    MethodDef d = def(F, n, n, "", "");
    d.unavailable = missing("lowmem/adapters/" + std::string(n) + ".h");
    out.push_back(d);
  }
#endif
}

}  // namespace lowmem::train::compare::detail
