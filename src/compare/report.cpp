// Paper-claim checks (computed from the measured results) and report.md.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <sstream>

#include "internal.h"
#include "lowmem/core/memory.h"

namespace lowmem::compare {
namespace {

using detail::num;

// Tolerances of the claim checks (docs/compare.md explains each).
constexpr double kLossTolerance = 0.05;  // relative validation-loss margin
constexpr double kAccTolerance = 0.01;   // absolute accuracy margin (1 point)
constexpr double kMemTolerance = 0.10;   // "comparable memory": within 10%

// A method's result when at least one of its seeds finished.
const MethodResult* find(const std::vector<MethodResult>& ms,
                         const std::string& suite, const std::string& name) {
  for (const auto& m : ms)
    if (m.info.suite == suite && m.info.name == name &&
        (m.status == "ok" || m.seeds_ok > 0))
      return &m;
  return nullptr;
}

// "not tested" when any needed method did not run (names listed).
bool missing(ClaimCheck& c, const std::vector<MethodResult>& ms,
             const std::string& suite, const std::vector<std::string>& names) {
  std::vector<std::string> absent;
  for (const auto& n : names) {
    const MethodResult* r = find(ms, suite, n);
    if (!r || (suite == "pretrain" && !r->val_loss) ||
        (suite == "finetune" && !r->val_accuracy)) {
      std::string why = "did not run";
      for (const auto& m : ms)
        if (m.info.suite == suite && m.info.name == n)
          why = m.status + (m.reason.empty() ? "" : ": " + m.reason);
      absent.push_back(suite + "/" + n + " (" + why + ")");
    }
  }
  if (absent.empty()) return false;
  c.status = "not tested";
  std::string e = "needs ";
  for (size_t i = 0; i < absent.size(); ++i) e += (i ? ", " : "") + absent[i];
  c.evidence = e;
  return true;
}

std::string pct(double v) { return num(100.0 * v) + "%"; }

// The metric of each finished seed of `m`, by seed (the result itself as one
// seed when it was never merged).
std::map<uint64_t, double> per_seed(const MethodResult& m, bool accuracy) {
  std::map<uint64_t, double> out;
  auto take = [&](uint64_t seed, const std::optional<double>& loss,
                  const std::optional<double>& acc) {
    const auto& v = accuracy ? acc : loss;
    if (v && std::isfinite(*v)) out[seed] = *v;
  };
  if (m.seed_runs.empty()) {
    take(0, m.val_loss, m.val_accuracy);
  } else {
    for (const auto& r : m.seed_runs)
      if (r.status == "ok") take(r.seed, r.val_loss, r.val_accuracy);
  }
  return out;
}

// "2.345 ± 0.012" (accuracy in percent); the std only with 2+ seeds.
std::string mean_std(const std::optional<double>& mean,
                     const std::optional<double>& sd, bool accuracy) {
  if (!mean) return "";
  const double k = accuracy ? 100.0 : 1.0;
  std::string o = num(k * *mean);
  if (sd) o += " ± " + num(k * *sd);
  return o + (accuracy ? "%" : "");
}
std::string quality(const MethodResult& m, bool accuracy) {
  return accuracy ? mean_std(m.val_accuracy, m.val_accuracy_std, true)
                  : mean_std(m.val_loss, m.val_loss_std, false);
}

// The claim's quality test over the seeds `a` and `b` share: `margin(a_i,
// b_i)` >= 0 when seed i supports the claim. `gate` is the claim's
// deterministic part (memory, parameter counts): when false the claim is
// "not held" whatever the seeds say. Sets status, seeds and the evidence's
// quality part (`what`: "validation loss CAME ... vs Adafactor ...").
void judge(ClaimCheck& c, const MethodResult& a, const MethodResult& b,
           bool accuracy, const std::function<double(double, double)>& margin,
           bool gate, const std::string& what) {
  const auto va = per_seed(a, accuracy), vb = per_seed(b, accuracy);
  std::vector<double> margins;
  for (const auto& [seed, x] : va) {
    const auto it = vb.find(seed);
    if (it != vb.end()) margins.push_back(margin(x, it->second));
  }
  const SeedVerdict v = judge_margins(margins);
  c.seeds = v.n;
  c.status = gate ? v.status : "not held";
  const double k = accuracy ? 100.0 : 1.0;
  c.evidence = what + " " + a.info.label + " " + quality(a, accuracy) + " vs " +
               b.info.label + " " + quality(b, accuracy) + " over " +
               std::to_string(v.n) + " paired seed" + (v.n == 1 ? "" : "s") +
               "; margin " + num(k * v.mean) +
               (v.n >= 2 ? " ± " + num(k * v.std) : "") +
               (accuracy ? " points" : "");
}

// Appends the same comparison on the "(tuned)" rows where a or b has one
// (each side: its -tuned row, else itself); the verdict stays the official
// rows'. Nothing when neither has a tuned row or one did not finish.
void add_tuned(ClaimCheck& c, const std::vector<MethodResult>& ms,
               const MethodResult& a, const MethodResult& b, bool accuracy) {
  const MethodResult* ta = find(ms, a.info.suite, a.info.name + "-tuned");
  const MethodResult* tb = find(ms, b.info.suite, b.info.name + "-tuned");
  if (ta == nullptr && tb == nullptr) return;
  if (ta == nullptr) ta = &a;
  if (tb == nullptr) tb = &b;
  if (quality(*ta, accuracy).empty() || quality(*tb, accuracy).empty()) return;
  c.evidence += "; tuned rows (not judged): " + ta->info.label + " " +
                quality(*ta, accuracy) + " vs " + tb->info.label + " " +
                quality(*tb, accuracy);
}

// Loss margin: b's loss times (1 + tol) minus a's (>= 0: a within tol).
std::function<double(double, double)> loss_within(double tol) {
  return [tol](double a, double b) { return b * (1.0 + tol) - a; };
}

}  // namespace

SeedVerdict judge_margins(const std::vector<double>& margins) {
  SeedVerdict v;
  v.n = static_cast<int64_t>(margins.size());
  if (v.n == 0) {
    v.status = "inconclusive";
    return v;
  }
  for (double m : margins) v.mean += m;
  v.mean /= static_cast<double>(v.n);
  if (v.n < 2) {
    v.status = "inconclusive";  // one seed: no spread to judge by
    return v;
  }
  double ss = 0;
  for (double m : margins) ss += (m - v.mean) * (m - v.mean);
  v.std = std::sqrt(ss / static_cast<double>(v.n - 1));
  v.status =
      v.mean > v.std ? "held" : (v.mean < -v.std ? "not held" : "inconclusive");
  return v;
}

namespace {

const std::string P = "pretrain", F = "finetune";

ClaimCheck claim_came_vs_adafactor(const std::vector<MethodResult>& ms) {
  ClaimCheck c{"came-vs-adafactor",
               "CAME (arXiv 2307.02047)",
               "CAME reaches a validation loss at or below Adafactor's with "
               "factored (sublinear) optimizer state.",
               "",
               "",
               0};
  if (!missing(c, ms, P, {"came", "adafactor"})) {
    const auto *a = find(ms, P, "came"), *b = find(ms, P, "adafactor");
    judge(c, *a, *b, false, loss_within(0), true, "validation loss");
    c.evidence += "; optimizer state " +
                  format_bytes(a->optimizer_state_bytes) + " vs " +
                  format_bytes(b->optimizer_state_bytes);
    add_tuned(c, ms, *a, *b, false);
  }
  return c;
}

ClaimCheck claim_galore_vs_adamw(const std::vector<MethodResult>& ms) {
  ClaimCheck c{"galore-vs-adamw",
               "GaLore (arXiv 2403.03507)",
               "GaLore-AdamW trains within " + pct(kLossTolerance) +
                   " of AdamW's validation loss with a fraction of its "
                   "optimizer state.",
               "",
               "",
               0};
  if (!missing(c, ms, P, {"galore-adamw", "adamw"})) {
    const auto *g = find(ms, P, "galore-adamw"), *a = find(ms, P, "adamw");
    const double mem = a->optimizer_state_bytes > 0
                           ? static_cast<double>(g->optimizer_state_bytes) /
                                 static_cast<double>(a->optimizer_state_bytes)
                           : NAN;
    judge(c, *g, *a, false, loss_within(kLossTolerance), mem < 1.0,
          "validation loss");
    c.evidence += "; " + pct(mem) + " of AdamW's optimizer state (" +
                  format_bytes(g->optimizer_state_bytes) + " vs " +
                  format_bytes(a->optimizer_state_bytes) + ")";
    add_tuned(c, ms, *g, *a, false);
  }
  return c;
}

ClaimCheck claim_duality_random_sketch(const std::vector<MethodResult>& ms) {
  ClaimCheck c{"duality-random-sketch",
               "Gradient transformations = adapters (arXiv 2502.13811)",
               "A one-sided adapter with a frozen random sketch (the dual of a "
               "random gradient projection) trains within " +
                   pct(kLossTolerance) +
                   " of GaLore-AdamW's validation loss at a lower peak memory "
                   "(it never forms full weight gradients).",
               "",
               "",
               0};
  if (!missing(c, ms, P, {"rsketch-adapter", "galore-adamw"})) {
    const auto *r = find(ms, P, "rsketch-adapter"),
               *g = find(ms, P, "galore-adamw");
    judge(c, *r, *g, false, loss_within(kLossTolerance),
          r->peak_tensor_bytes < g->peak_tensor_bytes, "validation loss");
    c.evidence += "; peak tensor memory " + format_bytes(r->peak_tensor_bytes) +
                  " vs " + format_bytes(g->peak_tensor_bytes) + "; gradients " +
                  format_bytes(r->gradient_bytes) + " vs " +
                  format_bytes(g->gradient_bytes);
    add_tuned(c, ms, *r, *g, false);
  }
  return c;
}

ClaimCheck claim_snell_vs_lora(const std::vector<MethodResult>& ms) {
  ClaimCheck c{"snell-vs-lora",
               "SNELL (arXiv 2411.01800)",
               "SNELL reaches at least LoRA's accuracy at comparable memory "
               "(peak within " +
                   pct(kMemTolerance) + " of LoRA's).",
               "",
               "",
               0};
  if (!missing(c, ms, F, {"snell", "lora"})) {
    const auto *s = find(ms, F, "snell"), *l = find(ms, F, "lora");
    const double mem =
        static_cast<double>(s->peak_tensor_bytes) /
        static_cast<double>(std::max<int64_t>(1, l->peak_tensor_bytes));
    judge(
        c, *s, *l, true, [](double a, double b) { return a - b; },
        mem <= 1.0 + kMemTolerance, "accuracy");
    c.evidence += "; peak tensor memory " + format_bytes(s->peak_tensor_bytes) +
                  " vs " + format_bytes(l->peak_tensor_bytes) + " (" +
                  pct(mem) + ")";
    add_tuned(c, ms, *s, *l, true);
  }
  return c;
}

ClaimCheck claim_lotr_vs_lora(const std::vector<MethodResult>& ms) {
  ClaimCheck c{"lotr-vs-lora",
               "LoTR (arXiv 2402.01376)",
               "LoTR matches LoRA's accuracy (within " +
                   num(100 * kAccTolerance) +
                   " point) with fewer trainable parameters.",
               "",
               "",
               0};
  if (!missing(c, ms, F, {"lotr", "lora"})) {
    const auto *t = find(ms, F, "lotr"), *l = find(ms, F, "lora");
    judge(
        c, *t, *l, true,
        [](double a, double b) { return a - b + kAccTolerance; },
        t->trainable_params < l->trainable_params, "accuracy");
    c.evidence += "; " + std::to_string(t->trainable_params) + " vs " +
                  std::to_string(l->trainable_params) + " trainable parameters";
    add_tuned(c, ms, *t, *l, true);
  }
  return c;
}

ClaimCheck claim_singd_vs_adamw(const std::vector<MethodResult>& ms) {
  ClaimCheck c{"singd-vs-adamw",
               "SINGD (arXiv 2312.05705)",
               "SINGD (dense structure) reaches AdamW's validation loss "
               "(within " +
                   pct(kLossTolerance) + ").",
               "",
               "",
               0};
  if (!missing(c, ms, P, {"singd-dense", "adamw"})) {
    const auto *s = find(ms, P, "singd-dense"), *a = find(ms, P, "adamw");
    judge(c, *s, *a, false, loss_within(kLossTolerance), true,
          "validation loss");
  }
  return c;
}

ClaimCheck claim_singd_structure_memory(const std::vector<MethodResult>& ms) {
  ClaimCheck c{"singd-structure-memory",
               "SINGD (arXiv 2312.05705)",
               "Structured (diagonal) SINGD keeps far less preconditioner "
               "state than KFAC and still trains (within " +
                   pct(kLossTolerance) + " of KFAC's validation loss).",
               "",
               "",
               0};
  if (!missing(c, ms, P, {"singd-diag", "kfac"})) {
    const auto *s = find(ms, P, "singd-diag"), *k = find(ms, P, "kfac");
    judge(c, *s, *k, false, loss_within(kLossTolerance),
          s->optimizer_state_bytes < k->optimizer_state_bytes,
          "validation loss");
    c.evidence += "; optimizer state " +
                  format_bytes(s->optimizer_state_bytes) + " vs " +
                  format_bytes(k->optimizer_state_bytes);
  }
  return c;
}

// Whether any seed of suite/name diverged ("" if none, else its reason).
std::string diverged(const std::vector<MethodResult>& ms,
                     const std::string& suite, const std::string& name) {
  for (const auto& m : ms) {
    if (m.info.suite != suite || m.info.name != name) continue;
    if (m.seed_runs.empty() && m.status == "diverged") return m.reason;
    for (const auto& r : m.seed_runs)
      if (r.status == "diverged")
        return "seed " + std::to_string(r.seed) + ": " + r.reason;
  }
  return "";
}

ClaimCheck claim_singd_bf16(const std::vector<MethodResult>& ms) {
  ClaimCheck c{"singd-bf16",
               "SINGD (arXiv 2312.05705)",
               "SINGD is stable in bfloat16: the bf16 run stays finite and "
               "within " +
                   pct(kLossTolerance) + " of the fp32 run's loss.",
               "",
               "",
               0};
  const std::string why = diverged(ms, P, "singd-bf16");
  if (!why.empty()) {
    c.status = "not held";
    c.evidence = "bf16 run diverged: " + why;
  } else if (!missing(c, ms, P, {"singd-bf16", "singd-dense"})) {
    const auto *b = find(ms, P, "singd-bf16"), *f = find(ms, P, "singd-dense");
    judge(c, *b, *f, false, loss_within(kLossTolerance), true,
          "validation loss");
  }
  return c;
}

}  // namespace

std::vector<ClaimCheck> check_claims(const std::vector<MethodResult>& ms) {
  // One function per seed-paper claim; docs/compare.md, "Paper claims".
  return {claim_came_vs_adafactor(ms),      claim_galore_vs_adamw(ms),
          claim_duality_random_sketch(ms),  claim_snell_vs_lora(ms),
          claim_lotr_vs_lora(ms),           claim_singd_vs_adamw(ms),
          claim_singd_structure_memory(ms), claim_singd_bf16(ms)};
}

std::string format_table(const std::vector<MethodResult>& ms,
                         const std::string& suite, bool markdown) {
  std::vector<std::vector<std::string>> rows;
  const bool acc =
      std::any_of(ms.begin(), ms.end(), [&](const MethodResult& m) {
        return m.info.suite == suite && m.val_accuracy;
      });
  rows.push_back({"method", "status", "trainable", "optim state",
                  "peak tensors", "peak RSS", "step ms", "throughput",
                  "train loss", acc ? "val acc" : "val loss", "seeds"});
  for (const auto& m : ms) {
    if (m.info.suite != suite) continue;
    const bool ok = m.status == "ok" || m.status == "diverged";
    auto count = [](int64_t n) {
      char b[32];
      if (n >= 1000000)
        std::snprintf(b, sizeof b, "%.2fM", n / 1e6);
      else if (n >= 1000)
        std::snprintf(b, sizeof b, "%.1fk", n / 1e3);
      else
        std::snprintf(b, sizeof b, "%lld", static_cast<long long>(n));
      return std::string(b);
    };
    const std::string q = quality(m, acc);
    const std::string seeds = m.seed_runs.empty()
                                  ? ""
                                  : std::to_string(m.seeds_ok) + "/" +
                                        std::to_string(m.seed_runs.size());
    std::string tp;
    if (ok && m.throughput > 0) {
      char b[48];
      std::snprintf(b, sizeof b, "%.0f %s", m.throughput,
                    m.throughput_unit.c_str());
      tp = b;
    }
    char st[32];
    std::snprintf(st, sizeof st, "%.1f", m.step_time_ms);
    rows.push_back({m.info.label, m.status, ok ? count(m.trainable_params) : "",
                    ok ? format_bytes(m.optimizer_state_bytes) : "",
                    ok ? format_bytes(m.peak_tensor_bytes) : "",
                    ok ? format_bytes(m.peak_rss_bytes) : "", ok ? st : "", tp,
                    ok ? num(m.final_train_loss) : "", q, seeds});
  }
  return detail::render_table(rows, markdown, 2);
}

namespace {

void report_header(std::ostringstream& o, const CompareResults& res) {
  o << "# lowmem compare\n\n";
  o << "- Command: `"
    << (res.command_line.empty() ? "lowmem compare" : res.command_line)
    << "`\n";
  o << "- Created: " << res.created << " on " << res.machine << "\n";
  if (!res.options.overrides.empty()) {
    o << "- Overrides:";
    for (const auto& kv : res.options.overrides) o << " `--set " << kv << "`";
    o << " (each method's applied ones are listed with its settings below and "
         "in "
         "`results.json` `methods[].overrides`)\n";
  }
  if (res.options.device != "cpu")
    o << "- Device: " << res.options.device
      << " (tensor bytes: the CUDA caching allocator's allocated bytes; RSS: "
         "host)\n";
  if (res.options.lr > 0)
    o << "- Learning rate of every optimizer: " << num(res.options.lr) << "\n";
  if (res.options.clip_norm > 0)
    o << "- Gradient-norm clipping: " << num(res.options.clip_norm) << "\n";
  o << "- Wall time: " << num(res.wall_s) << " s"
    << (res.interrupted ? " (**interrupted**: results below cover the methods "
                          "that finished)"
                        : "")
    << "\n";
  o << "- Results: `results.json`, `results.csv` (one row per method), "
       "`curves.csv` (schema version "
    << res.schema_version << ", see docs/compare.md)\n\n";
}

void report_suite(std::ostringstream& o, const CompareResults& res,
                  const std::string& s) {
  o << "## Suite `" << s << "`\n\n";
  for (const auto& m : res.methods)
    if (m.info.suite == s && !m.task.empty()) {
      o << "Task: " << m.task << ".\n\n";
      break;
    }
  o << format_table(res.methods, s, true) << "\n";
  o << "Trainable = parameters with gradients; optim state = optimizer state "
       "tensors (exact bytes); peak tensors = peak live tensor bytes of the "
       "method (weights, gradients, state, activations; the dataset excluded); "
       "peak RSS = the method's own process; step ms = median step time "
       "(memory and time: the first seed's run); train loss = mean over the "
       "last 10% of steps (mean over the seeds); val = mean ± sample standard "
       "deviation over the seeds that finished; seeds = finished / run.\n\n";
  for (const auto& m : res.methods)
    if (m.info.suite == s && !m.detail.empty())
      o << "- **" << m.info.label << "**: " << m.info.description
        << (m.detail.empty() ? "" : " (" + m.detail + ")") << "\n";
  o << "\n";
  bool any = false;
  for (const auto& m : res.methods)
    if (m.info.suite == s && m.status != "ok") {
      if (!any) o << "Not completed:\n\n";
      any = true;
      o << "- " << m.info.label << ": " << m.status << " — " << m.reason
        << "\n";
    }
  if (any) o << "\n";
  {
    for (const char* kind : {"loss_steps", "loss_time", "memory", "quality"}) {
      const std::string f = "plots/" + s + "_" + kind + ".png";
      if (std::find(res.plots.files.begin(), res.plots.files.end(), f) !=
          res.plots.files.end())
        o << "![" << s << " " << kind << "](" << f << ")\n\n";
    }
  }
}

// The recorded official settings next to this run's, deviations marked.
void report_official(std::ostringstream& o, const CompareResults& res) {
  std::vector<OfficialSetting> rows;
  for (const auto& r : official_settings(res.options))
    if (std::any_of(res.methods.begin(), res.methods.end(),
                    [&r](const MethodResult& m) {
                      return m.info.suite == r.suite && m.info.name == r.method;
                    }))
      rows.push_back(r);
  if (rows.empty()) return;
  o << "## Settings vs the official ones\n\n"
       "A method with official code or a paper recipe for the task type runs "
       "with those settings; a \"(tuned)\" row (`<name>-tuned`) runs the "
       "settings compare's recorded sweep found at this scale "
       "(docs/benchmarks/compare.md). Where a row's setting differs from the "
       "official one it says **deviates**, with the reason. Claims are judged "
       "on the official rows; a claim judged on a deviating setting tests the "
       "method as compare sets it, not as its authors do.\n\n"
       "| suite | method | key | official | this run | | why | source |\n"
       "|---|---|---|---:|---:|---|---|---|\n";
  for (const auto& r : rows)
    o << "| " << r.suite << " | " << r.method << " | `" << r.key << "` | "
      << r.official << " | " << (r.used.empty() ? "(default)" : r.used) << " | "
      << (r.deviates ? "**deviates**" : "same") << " | " << r.note << " | "
      << r.source << " |\n";
  o << "\n";
}

void report_claims(std::ostringstream& o, const CompareResults& res) {
  if (res.plots.status != "ok")
    o << "Plots: " << res.plots.status << " — " << res.plots.reason << "\n\n";

  o << "## Paper claims in this run\n\n";
  o << "Computed from the numbers above (tolerances in docs/compare.md); a "
       "small, short run is weak evidence either way.\n\n";
  o << "| paper | claim | verdict | evidence |\n|---|---|---|---|\n";
  for (const auto& c : res.claims)
    o << "| " << c.paper << " | " << c.claim << " | **" << c.status << "** | "
      << c.evidence << " |\n";
  o << "\n";
}

void report_python(std::ostringstream& o, const CompareResults& res) {
  o << "## Python baseline (Debian python3-torch)\n\n";
  const PythonBaseline& p = res.python;
  if (p.status == "ok") {
    const MethodResult* a = find(res.methods, "pretrain", "adamw");
    o << "The pretrain GPT with AdamW, same sizes, batch and steps.\n\n";
    o << "| run | params | step ms | tokens/s | peak RSS | train loss | val "
         "loss |\n"
         "|---|---:|---:|---:|---:|---:|---:|\n";
    if (a)
      o << "| lowmem (C++, fused AdamW) | " << a->total_params << " | "
        << num(a->step_time_ms) << " | " << num(a->throughput) << " | "
        << format_bytes(a->peak_rss_bytes) << " | " << num(a->final_train_loss)
        << " | " << (a->val_loss ? num(*a->val_loss) : "") << " |\n";
    o << "| python3-torch " << p.torch_version << " (torch.optim.AdamW) | "
      << p.total_params << " | " << num(p.step_time_ms) << " | "
      << num(p.throughput) << " | " << format_bytes(p.peak_rss_bytes) << " | "
      << num(p.final_train_loss) << " | " << num(p.val_loss) << " |\n\n";
    o << "Same sizes, batch, steps, learning-rate schedule and corpus split; "
         "the "
         "Python run draws its random windows with torch's RNG (same "
         "distribution, different order). Peak RSS is each process's own.\n\n";
  } else {
    o << p.status << ": " << p.reason << "\n\n";
  }
  if (!res.notes.empty()) {
    o << "## Notes\n\n";
    for (const auto& n : res.notes) o << "- " << n << "\n";
    o << "\n";
  }
}

// The memory suite: its table and plot.
void report_memory(std::ostringstream& o, const CompareResults& res) {
  const MemorySuite& m = res.memory;
  if (m.rows.empty()) return;
  o << "## Memory suite: LLaMA sizes x methods\n\n"
    << "Predicted by `lowmem plan` (train/plan.h; docs/memory.md) for one "
       "training step of LLaMA (GaLore's sizes) with "
    << m.dtype << " weights, batch " << m.batch_size << " x " << m.seq_len
    << " tokens; the measured peak is the tracked peak of " << m.measured_steps
    << " real training steps on random tokens in a child process (as the "
       "training suites measure it). Bytes by role at the planned peak; "
       "`not planned`: lowmem plan cannot size the method (the reason is in "
       "results.json `memory.rows[].reason`).\n\n"
    << format_memory_table(m, true) << "\n";
  for (const auto& r : m.rows)
    if (r.status != "ok" && r.model == m.rows.front().model)
      o << "- " << r.method << ": " << r.status << " — " << r.reason << "\n";
  o << "\n";
  const std::string f = "plots/memory_suite.png";
  if (std::find(res.plots.files.begin(), res.plots.files.end(), f) !=
      res.plots.files.end())
    o << "![memory suite](" << f << ")\n\n";
}

}  // namespace

void write_report(const CompareResults& res, const std::string& path) {
  std::ostringstream o;
  report_header(o, res);
  o << "## Summary\n\n" << format_summary(res, true) << "\n";
  for (const char* f :
       {"plots/pretrain_quality.png", "plots/finetune_quality.png"})
    if (std::find(res.plots.files.begin(), res.plots.files.end(), f) !=
        res.plots.files.end())
      o << "![frontier](" << f << ")\n\n";
  report_memory(o, res);
  std::vector<std::string> suites;
  for (const auto& m : res.methods)
    if (std::find(suites.begin(), suites.end(), m.info.suite) == suites.end())
      suites.push_back(m.info.suite);
  for (const auto& s : suites) report_suite(o, res, s);
  report_official(o, res);
  report_claims(o, res);
  report_python(o, res);
  detail::write_text_file(path, o.str());
}

}  // namespace lowmem::compare
