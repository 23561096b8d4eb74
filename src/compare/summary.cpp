// The one-screen summary of a compare run (what the report and the CLI lead
// with), the quality-vs-memory frontier and the memory suite's table.
// docs/compare.md, "Summary" and "Memory suite".
#include <algorithm>
#include <cmath>
#include <map>
#include <sstream>

#include "internal.h"
#include "lowmem/core/memory.h"

namespace lowmem::compare {
namespace {

using detail::num;
using Rows = std::vector<std::vector<std::string>>;

std::string render(const Rows& rows, bool markdown, size_t left = 1) {
  return detail::render_table(rows, markdown, left, "  ");
}

bool accuracy_suite(const std::vector<MethodResult>& ms,
                    const std::string& suite) {
  return std::any_of(ms.begin(), ms.end(), [&](const MethodResult& m) {
    return m.info.suite == suite && m.val_accuracy;
  });
}

// The suite's quality of `m` (accuracy or validation loss), if finite.
std::optional<double> quality_of(const MethodResult& m, bool acc) {
  const auto& q = acc ? m.val_accuracy : m.val_loss;
  if (!q || !std::isfinite(*q)) return std::nullopt;
  return q;
}

std::string quality_text(const MethodResult& m, bool acc) {
  const auto& q = acc ? m.val_accuracy : m.val_loss;
  const auto& sd = acc ? m.val_accuracy_std : m.val_loss_std;
  if (!q) return "";
  const double k = acc ? 100.0 : 1.0;
  return num(k * *q) + (sd ? " ± " + num(k * *sd) : "") + (acc ? "%" : "");
}

std::string budget_text(int64_t b) { return "≤ " + format_bytes(b); }

// Which model each method fits into each budget (planned peak).
std::string memory_summary(const MemorySuite& mem, bool markdown) {
  std::ostringstream o;
  if (mem.status != "ok" || mem.rows.empty()) {
    if (mem.status != "skipped")
      o << "Memory suite: " << mem.status << " (" << mem.reason << ")\n\n";
    return o.str();
  }
  std::vector<std::string> methods, models;
  for (const auto& r : mem.rows) {
    if (std::find(methods.begin(), methods.end(), r.method) == methods.end())
      methods.push_back(r.method);
    if (std::find(models.begin(), models.end(), r.model) == models.end())
      models.push_back(r.model);
  }
  Rows rows;
  rows.push_back({"method"});
  for (int64_t b : mem.budgets) rows[0].push_back(budget_text(b));
  const std::string largest = models.back();
  rows[0].push_back("peak at " + largest);
  for (const auto& name : methods) {
    std::vector<std::string> row{name};
    for (int64_t b : mem.budgets) {
      const std::string m = largest_fitting(mem, name, b);
      row.push_back(m.empty() ? "none" : m);
    }
    std::string peak = "not planned";
    for (const auto& r : mem.rows)
      if (r.model == largest && r.method == name && r.status == "ok")
        peak = format_bytes(r.peak);
    row.push_back(peak);
    rows.push_back(row);
  }
  o << (markdown ? "**Memory** " : "Memory ") << "(lowmem plan, LLaMA "
    << mem.dtype << ", batch " << mem.batch_size << " x " << mem.seq_len
    << " tokens): the largest model each method trains within each budget "
       "(planned peak tensor memory)\n\n"
    << render(rows, markdown) << "\n";
  // planned vs measured
  double worst = 0;
  std::string worst_row;
  int n = 0;
  for (const auto& r : mem.rows) {
    if (r.measured != "ok" || r.measured_peak <= 0) continue;
    ++n;
    const double e = static_cast<double>(r.peak - r.measured_peak) /
                     static_cast<double>(r.measured_peak);
    if (std::fabs(e) >= std::fabs(worst)) {
      worst = e;
      worst_row = r.model + " " + r.method;
    }
  }
  if (n > 0)
    o << "Planned vs measured peak over the " << n
      << " measured rows: largest difference " << (worst >= 0 ? "+" : "")
      << num(100.0 * worst) << "% (" << worst_row << ").\n\n";
  return o.str();
}

// The frontier of one training suite as budget -> best method.
std::string frontier_summary(const CompareResults& res,
                             const std::string& suite, bool markdown) {
  const bool acc = accuracy_suite(res.methods, suite);
  const auto f = quality_frontier(res.methods, suite);
  if (f.empty()) return "";
  int64_t seeds = 0;
  for (const auto& m : res.methods)
    if (m.info.suite == suite)
      seeds =
          std::max<int64_t>(seeds, static_cast<int64_t>(m.seed_runs.size()));
  Rows rows;
  rows.push_back({"peak tensors", "best method within it",
                  acc ? "val accuracy" : "val loss"});
  for (const MethodResult* m : f)
    rows.push_back({budget_text(m->peak_tensor_bytes), m->info.label,
                    quality_text(*m, acc)});
  std::ostringstream o;
  o << (markdown ? "**" + suite + "**" : suite)
    << ": best quality per memory budget (the quality-vs-peak frontier; "
    << (acc ? "accuracy" : "validation loss") << " as mean ± std over " << seeds
    << " seed" << (seeds == 1 ? "" : "s") << ")\n\n"
    << render(rows, markdown, 2) << "\n";
  return o.str();
}

std::string claims_summary(const std::vector<ClaimCheck>& claims,
                           bool markdown) {
  std::map<std::string, std::vector<std::string>> by;
  for (const auto& c : claims) by[c.status].push_back(c.id);
  std::ostringstream o;
  o << (markdown ? "**Paper claims**: " : "Paper claims: ");
  bool first = true;
  for (const char* s : {"held", "not held", "inconclusive", "not tested"}) {
    const auto it = by.find(s);
    if (it == by.end()) continue;
    o << (first ? "" : "; ") << s << " " << it->second.size() << " (";
    for (size_t i = 0; i < it->second.size(); ++i)
      o << (i ? ", " : "") << it->second[i];
    o << ")";
    first = false;
  }
  o << ". A verdict needs the difference to exceed the seeds' spread "
       "(docs/compare.md).\n";
  return o.str();
}

}  // namespace

std::vector<const MethodResult*> quality_frontier(
    const std::vector<MethodResult>& ms, const std::string& suite) {
  const bool acc = accuracy_suite(ms, suite);
  std::vector<const MethodResult*> c;
  for (const auto& m : ms)
    if (m.info.suite == suite && (m.status == "ok" || m.seeds_ok > 0) &&
        quality_of(m, acc))
      c.push_back(&m);
  // cheapest first; at equal peak the better quality first
  std::stable_sort(
      c.begin(), c.end(), [acc](const MethodResult* a, const MethodResult* b) {
        if (a->peak_tensor_bytes != b->peak_tensor_bytes)
          return a->peak_tensor_bytes < b->peak_tensor_bytes;
        const double qa = *quality_of(*a, acc), qb = *quality_of(*b, acc);
        return acc ? qa > qb : qa < qb;
      });
  std::vector<const MethodResult*> f;
  for (const MethodResult* m : c) {
    const double q = *quality_of(*m, acc);
    if (f.empty()) {
      f.push_back(m);
      continue;
    }
    const double best = *quality_of(*f.back(), acc);
    if (acc ? q > best : q < best) f.push_back(m);
  }
  return f;
}

std::string largest_fitting(const MemorySuite& memory,
                            const std::string& method, int64_t budget) {
  std::string best;
  for (const auto& r : memory.rows)
    if (r.method == method && r.status == "ok" && r.peak <= budget)
      best = r.model;
  return best;
}

std::string format_summary(const CompareResults& res, bool markdown) {
  std::ostringstream o;
  o << memory_summary(res.memory, markdown);
  std::vector<std::string> suites;
  for (const auto& m : res.methods)
    if (std::find(suites.begin(), suites.end(), m.info.suite) == suites.end())
      suites.push_back(m.info.suite);
  for (const auto& s : suites) o << frontier_summary(res, s, markdown);
  if (!res.claims.empty()) o << claims_summary(res.claims, markdown);
  return o.str();
}

std::string format_memory_table(const MemorySuite& mem, bool markdown) {
  Rows rows;
  rows.push_back({"model", "method", "trainable", "weights", "optim state",
                  "gradients", "activations", "temporaries", "planned peak",
                  "measured peak", "measured step ms"});
  for (const auto& r : mem.rows) {
    if (r.status != "ok") {
      rows.push_back(
          {r.model, r.method, r.status, "", "", "", "", "", "", "", ""});
      continue;
    }
    char tr[32];
    std::snprintf(tr, sizeof tr, "%.1fM",
                  static_cast<double>(r.trainable_params) / 1e6);
    rows.push_back(
        {r.model, r.method, tr, format_bytes(r.weights),
         format_bytes(r.optimizer_state), format_bytes(r.gradients),
         format_bytes(r.activations), format_bytes(r.temporaries),
         format_bytes(r.peak),
         r.measured == "ok" ? format_bytes(r.measured_peak) : r.measured,
         r.measured == "ok" ? num(r.measured_step_ms) : ""});
  }
  return render(rows, markdown, 2);
}

}  // namespace lowmem::compare

namespace lowmem::compare::detail {

std::string render_table(const std::vector<std::vector<std::string>>& rows,
                         bool markdown, size_t left,
                         const std::string& indent) {
  std::ostringstream o;
  if (rows.empty()) return "";
  std::vector<size_t> w(rows[0].size(), 0);
  for (const auto& r : rows)
    for (size_t i = 0; i < r.size() && i < w.size(); ++i)
      w[i] = std::max(w[i], r[i].size());
  for (size_t ri = 0; ri < rows.size(); ++ri) {
    const auto& r = rows[ri];
    if (markdown) {
      o << "|";
      for (const auto& c : r) o << " " << c << " |";
      o << "\n";
      if (ri == 0) {
        o << "|";
        for (size_t i = 0; i < r.size(); ++i)
          o << (i < left ? "---|" : "---:|");
        o << "\n";
      }
      continue;
    }
    o << indent;
    for (size_t i = 0; i < r.size() && i < w.size(); ++i) {
      const std::string pad(w[i] - r[i].size(), ' ');
      o << (i ? "  " : "") << (i < left ? r[i] + pad : pad + r[i]);
    }
    o << "\n";
  }
  return o.str();
}

}  // namespace lowmem::compare::detail
