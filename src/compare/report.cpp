// Paper-claim checks (computed from the measured results) and report.md.
#include <algorithm>
#include <cmath>
#include <filesystem>
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

const MethodResult* find(const std::vector<MethodResult>& ms,
                         const std::string& suite, const std::string& name) {
  for (const auto& m : ms)
    if (m.info.suite == suite && m.info.name == name && m.status == "ok")
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
std::string mib(int64_t b) { return format_bytes(b); }
std::string verdict(bool ok) { return ok ? "held" : "not held"; }

}  // namespace

namespace {

const std::string P = "pretrain", F = "finetune";

ClaimCheck claim_came_vs_adafactor(const std::vector<MethodResult>& ms) {
  ClaimCheck c{"came-vs-adafactor", "CAME (arXiv 2307.02047)",
               "CAME reaches a validation loss at or below Adafactor's with "
               "factored (sublinear) optimizer state.",
               "", ""};
  if (!missing(c, ms, P, {"came", "adafactor"})) {
    const auto *a = find(ms, P, "came"), *b = find(ms, P, "adafactor");
    const bool ok = *a->val_loss <= *b->val_loss;
    c.status = verdict(ok);
    c.evidence = "validation loss CAME " + num(*a->val_loss) +
                 " vs Adafactor " + num(*b->val_loss) + "; optimizer state " +
                 mib(a->optimizer_state_bytes) + " vs " +
                 mib(b->optimizer_state_bytes);
  }
  return c;
}

ClaimCheck claim_galore_vs_adamw(const std::vector<MethodResult>& ms) {
  ClaimCheck c{"galore-vs-adamw", "GaLore (arXiv 2403.03507)",
               "GaLore-AdamW trains within " + pct(kLossTolerance) +
                   " of AdamW's validation loss with a fraction of its "
                   "optimizer state.",
               "", ""};
  if (!missing(c, ms, P, {"galore-adamw", "adamw"})) {
    const auto *g = find(ms, P, "galore-adamw"), *a = find(ms, P, "adamw");
    const double rel = (*g->val_loss - *a->val_loss) / *a->val_loss;
    const double mem = a->optimizer_state_bytes > 0
                           ? static_cast<double>(g->optimizer_state_bytes) /
                                 static_cast<double>(a->optimizer_state_bytes)
                           : NAN;
    c.status = verdict(rel <= kLossTolerance && mem < 1.0);
    c.evidence = "validation loss GaLore-AdamW " + num(*g->val_loss) +
                 " vs AdamW " + num(*a->val_loss) + " (" +
                 (rel >= 0 ? "+" : "") + pct(rel) + ") at " + pct(mem) +
                 " of AdamW's optimizer state (" +
                 mib(g->optimizer_state_bytes) + " vs " +
                 mib(a->optimizer_state_bytes) + ")";
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
               "", ""};
  if (!missing(c, ms, P, {"rsketch-adapter", "galore-adamw"})) {
    const auto *r = find(ms, P, "rsketch-adapter"),
               *g = find(ms, P, "galore-adamw");
    const double rel = (*r->val_loss - *g->val_loss) / *g->val_loss;
    const bool ok =
        rel <= kLossTolerance && r->peak_tensor_bytes < g->peak_tensor_bytes;
    c.status = verdict(ok);
    c.evidence = "validation loss random-sketch adapter " + num(*r->val_loss) +
                 " vs GaLore-AdamW " + num(*g->val_loss) + " (" +
                 (rel >= 0 ? "+" : "") + pct(rel) + "); peak tensor memory " +
                 mib(r->peak_tensor_bytes) + " vs " +
                 mib(g->peak_tensor_bytes) + "; gradients " +
                 mib(r->gradient_bytes) + " vs " + mib(g->gradient_bytes);
  }
  return c;
}

ClaimCheck claim_snell_vs_lora(const std::vector<MethodResult>& ms) {
  ClaimCheck c{"snell-vs-lora", "SNELL (arXiv 2411.01800)",
               "SNELL reaches at least LoRA's accuracy at comparable memory "
               "(peak within " +
                   pct(kMemTolerance) + " of LoRA's).",
               "", ""};
  if (!missing(c, ms, F, {"snell", "lora"})) {
    const auto *s = find(ms, F, "snell"), *l = find(ms, F, "lora");
    const double mem =
        static_cast<double>(s->peak_tensor_bytes) /
        static_cast<double>(std::max<int64_t>(1, l->peak_tensor_bytes));
    const bool ok =
        *s->val_accuracy >= *l->val_accuracy && mem <= 1.0 + kMemTolerance;
    c.status = verdict(ok);
    c.evidence = "accuracy SNELL " + pct(*s->val_accuracy) + " vs LoRA " +
                 pct(*l->val_accuracy) + "; peak tensor memory " +
                 mib(s->peak_tensor_bytes) + " vs " +
                 mib(l->peak_tensor_bytes) + " (" + pct(mem) + ")";
  }
  return c;
}

ClaimCheck claim_lotr_vs_lora(const std::vector<MethodResult>& ms) {
  ClaimCheck c{"lotr-vs-lora", "LoTR (arXiv 2402.01376)",
               "LoTR matches LoRA's accuracy (within " +
                   num(100 * kAccTolerance) +
                   " point) with fewer trainable parameters.",
               "", ""};
  if (!missing(c, ms, F, {"lotr", "lora"})) {
    const auto *t = find(ms, F, "lotr"), *l = find(ms, F, "lora");
    const bool ok = t->trainable_params < l->trainable_params &&
                    *t->val_accuracy >= *l->val_accuracy - kAccTolerance;
    c.status = verdict(ok);
    c.evidence = "accuracy LoTR " + pct(*t->val_accuracy) + " vs LoRA " +
                 pct(*l->val_accuracy) + " with " +
                 std::to_string(t->trainable_params) + " vs " +
                 std::to_string(l->trainable_params) + " trainable parameters";
  }
  return c;
}

ClaimCheck claim_singd_vs_adamw(const std::vector<MethodResult>& ms) {
  ClaimCheck c{"singd-vs-adamw", "SINGD (arXiv 2312.05705)",
               "SINGD (dense structure) reaches AdamW's validation loss "
               "(within " +
                   pct(kLossTolerance) + ").",
               "", ""};
  if (!missing(c, ms, P, {"singd-dense", "adamw"})) {
    const auto *s = find(ms, P, "singd-dense"), *a = find(ms, P, "adamw");
    const double rel = (*s->val_loss - *a->val_loss) / *a->val_loss;
    c.status = verdict(rel <= kLossTolerance);
    c.evidence = "validation loss SINGD-dense " + num(*s->val_loss) +
                 " vs AdamW " + num(*a->val_loss) + " (" +
                 (rel >= 0 ? "+" : "") + pct(rel) + ")";
  }
  return c;
}

ClaimCheck claim_singd_structure_memory(const std::vector<MethodResult>& ms) {
  ClaimCheck c{"singd-structure-memory", "SINGD (arXiv 2312.05705)",
               "Structured (diagonal) SINGD keeps far less preconditioner "
               "state than KFAC and still trains (within " +
                   pct(kLossTolerance) + " of KFAC's validation loss).",
               "", ""};
  if (!missing(c, ms, P, {"singd-diag", "kfac"})) {
    const auto *s = find(ms, P, "singd-diag"), *k = find(ms, P, "kfac");
    const double rel = (*s->val_loss - *k->val_loss) / *k->val_loss;
    const bool ok = s->optimizer_state_bytes < k->optimizer_state_bytes &&
                    rel <= kLossTolerance;
    c.status = verdict(ok);
    c.evidence = "optimizer state SINGD-diagonal " +
                 mib(s->optimizer_state_bytes) + " vs KFAC " +
                 mib(k->optimizer_state_bytes) + "; validation loss " +
                 num(*s->val_loss) + " vs " + num(*k->val_loss) + " (" +
                 (rel >= 0 ? "+" : "") + pct(rel) + ")";
  }
  return c;
}

ClaimCheck claim_singd_bf16(const std::vector<MethodResult>& ms) {
  ClaimCheck c{"singd-bf16", "SINGD (arXiv 2312.05705)",
               "SINGD is stable in bfloat16: the bf16 run stays finite and "
               "within " +
                   pct(kLossTolerance) + " of the fp32 run's loss.",
               "", ""};
  const MethodResult* bf = nullptr;
  for (const auto& m : ms)
    if (m.info.suite == P && m.info.name == "singd-bf16") bf = &m;
  if (bf && bf->status == "diverged") {
    c.status = "not held";
    c.evidence = "bf16 run diverged: " + bf->reason;
  } else if (!missing(c, ms, P, {"singd-bf16", "singd-dense"})) {
    const auto *b = find(ms, P, "singd-bf16"), *f = find(ms, P, "singd-dense");
    const double rel = (*b->val_loss - *f->val_loss) / *f->val_loss;
    c.status = verdict(std::isfinite(*b->val_loss) && rel <= kLossTolerance);
    c.evidence = "validation loss bf16 " + num(*b->val_loss) + " vs fp32 " +
                 num(*f->val_loss) + " (" + (rel >= 0 ? "+" : "") + pct(rel) +
                 ")";
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
                  "train loss", acc ? "val acc" : "val loss"});
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
    std::string quality;
    if (acc && m.val_accuracy)
      quality = num(100.0 * *m.val_accuracy) + "%";
    else if (!acc && m.val_loss)
      quality = num(*m.val_loss);
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
                    ok ? num(m.final_train_loss) : "", quality});
  }
  std::vector<size_t> w(rows[0].size(), 0);
  for (const auto& r : rows)
    for (size_t i = 0; i < r.size(); ++i) w[i] = std::max(w[i], r[i].size());
  std::ostringstream o;
  for (size_t ri = 0; ri < rows.size(); ++ri) {
    const auto& r = rows[ri];
    if (markdown) {
      o << "|";
      for (const auto& c : r) o << " " << c << " |";
      o << "\n";
      if (ri == 0) {
        o << "|";
        for (size_t i = 0; i < r.size(); ++i) o << (i < 2 ? "---|" : "---:|");
        o << "\n";
      }
    } else {
      for (size_t i = 0; i < r.size(); ++i) {
        const std::string pad(w[i] - r[i].size(), ' ');
        o << (i ? "  " : "") << (i < 2 ? r[i] + pad : pad + r[i]);
      }
      o << "\n";
    }
  }
  return o.str();
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
       "peak RSS = the method's own process; step ms = median step time; "
       "train loss = mean over the last 10% of steps.\n\n";
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

}  // namespace

void write_report(const CompareResults& res, const std::string& path) {
  std::ostringstream o;
  report_header(o, res);
  std::vector<std::string> suites;
  for (const auto& m : res.methods)
    if (std::find(suites.begin(), suites.end(), m.info.suite) == suites.end())
      suites.push_back(m.info.suite);
  for (const auto& s : suites) report_suite(o, res, s);
  report_claims(o, res);
  report_python(o, res);
  detail::write_text_file(path, o.str());
}

}  // namespace lowmem::compare
