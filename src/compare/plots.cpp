// Plots: gnuplot scripts + data files under <out>/plots, drawn to PNG and SVG
// when a gnuplot executable is available (Debian gnuplot-nox).
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <sstream>

#include "internal.h"
#include "lowmem/core/memory.h"

namespace lowmem::compare {
namespace {

namespace fs = std::filesystem;
using detail::num;

// Resolves `prog` like execvp would; "" if not found or not executable.
std::string find_executable(const std::string& prog) {
  if (prog.empty()) return "";
  if (prog.find('/') != std::string::npos)
    return ::access(prog.c_str(), X_OK) == 0 ? prog : "";
  const char* path = std::getenv("PATH");
  std::stringstream ss(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    const std::string c = (dir.empty() ? "." : dir) + "/" + prog;
    struct stat st {};
    if (::stat(c.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        ::access(c.c_str(), X_OK) == 0)
      return c;
  }
  return "";
}

std::string quoted(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    o += c;
  }
  return o + "\"";
}

double to_mib(int64_t b) { return static_cast<double>(b) / (1024.0 * 1024.0); }

// Line style of the i-th method of a plot: 12 well-separated colours (the
// "Paired"/tab20 families without the near-duplicates) crossed with dash
// patterns, so every (colour, dash) pair is distinct for the first 12 * 5
// methods (gnuplot's `lc N` repeats after 8). Solid lines first.
const char* colour(size_t i) {
  static const char* const kColours[] = {
      "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
      "#e377c2", "#17becf", "#7f7f7f", "#bcbd22", "#000000", "#aec7e8"};
  constexpr size_t kN = sizeof(kColours) / sizeof(kColours[0]);
  return kColours[i % kN];
}
std::string line_style(size_t i) {
  // dash type cycles 1 (solid), 2 (dashed), 4 (dash-dot), 3 (dotted), 5
  static const int kDash[] = {1, 2, 4, 3, 5};
  const size_t d = (i / 12) % 5;
  return std::string("lc rgb '") + colour(i) + "' dt " +
         std::to_string(kDash[d]);
}

// The EMA of a curve's training loss, by step (alpha from the run length).
std::map<int64_t, double> ema_by_step(const std::vector<CurvePoint>& curve,
                                      int64_t steps) {
  std::map<int64_t, double> out;
  double ema = NAN;
  const double alpha = 2.0 / (1.0 + std::max<double>(1.0, steps / 20.0));
  for (const auto& p : curve) {
    ema = std::isnan(ema) ? p.train_loss : ema + alpha * (p.train_loss - ema);
    out[p.step] = ema;
  }
  return out;
}

// One curve file of a method: per point of its first curve, the step, the
// time, the loss, the mean of the seeds' EMAs and their lowest and highest
// (the seed band; all three equal with one seed).
std::string curve_data(const MethodResult& m) {
  std::vector<std::map<int64_t, double>> seeds;
  for (const auto& r : m.seed_runs)
    if (!r.curve.empty()) seeds.push_back(ema_by_step(r.curve, m.steps));
  if (seeds.empty()) seeds.push_back(ema_by_step(m.curve, m.steps));
  std::ostringstream c;
  c << "# step wall_s train_loss train_loss_ema(mean over seeds) "
       "ema_min ema_max\n";
  for (const auto& p : m.curve) {
    double sum = 0, lo = INFINITY, hi = -INFINITY;
    int n = 0;
    for (const auto& s : seeds) {
      const auto it = s.find(p.step);
      if (it == s.end() || !std::isfinite(it->second)) continue;
      sum += it->second;
      lo = std::min(lo, it->second);
      hi = std::max(hi, it->second);
      ++n;
    }
    if (n == 0) continue;
    c << p.step << " " << num(p.wall_s) << " " << num(p.train_loss) << " "
      << num(sum / n) << " " << num(lo) << " " << num(hi) << "\n";
  }
  return c.str();
}

struct SuitePlots {
  std::string script;                // file name of the .gp script
  std::vector<std::string> outputs;  // relative to out_dir
};

// What the plots of one suite share while its script is written.
struct SuitePlotWriter {
  const std::vector<const MethodResult*>& ms;
  const std::vector<MethodResult>& all;  // every method of the run
  const std::string& suite;
  const fs::path& dir;
  bool acc;  // accuracy (classification) rather than loss
  std::ostringstream& gp;
  SuitePlots& sp;
  const std::vector<std::pair<std::string, std::string>>& terms;

  // Loss curves (by step and by time) with the evaluation points.
  void loss_curves() {
    // Per method: its curve with the seed band (curve_data), eval points.
    std::vector<std::string> curve_files, eval_files, labels;
    for (const MethodResult* m : ms) {
      const std::string base = "data/" + suite + "_" + m->info.name;
      std::ostringstream e;
      e << "# step wall_s val_loss val_accuracy_percent\n";
      for (const auto& p : m->curve)
        if (p.val_loss || p.val_accuracy)
          e << p.step << " " << num(p.wall_s) << " "
            << (p.val_loss ? num(*p.val_loss) : "nan") << " "
            << (p.val_accuracy ? num(100.0 * *p.val_accuracy) : "nan") << "\n";
      const std::string c = curve_data(*m);
      detail::write_text_file((dir / (base + ".dat")).string(), c);
      detail::write_text_file((dir / (base + "_eval.dat")).string(), e.str());
      curve_files.push_back(base + ".dat");
      eval_files.push_back(base + "_eval.dat");
      labels.push_back(m->info.label);
    }
    auto curves = [&](const char* xcol, const char* xlabel,
                      const std::string& name) {
      gp << "\n# " << name << "\n";
      gp << "set title "
         << quoted(suite + ": training loss (EMA, mean over seeds; band: " +
                   "min-max over seeds) and validation " +
                   (acc ? "accuracy" : "loss") + " (points, first seed)")
         << "\nset xlabel " << quoted(xlabel)
         << "\nset ylabel 'training loss'\n";
      if (acc)
        gp << "set y2label 'validation accuracy (%)'\nset y2tics\nset ytics "
              "nomirror\n";
      else
        gp << "unset y2label\nunset y2tics\nset ytics mirror\n";
      for (const auto& t : terms) {
        gp << t.second << "\nset output " << quoted(name + "." + t.first)
           << "\nplot ";
        for (size_t i = 0; i < curve_files.size(); ++i)
          gp << quoted(curve_files[i]) << " using " << xcol
             << ":5:6 with filledcurves fs transparent solid 0.18 noborder "
                "lc rgb '"
             << colour(i) << "' notitle, \\\n     ";
        for (size_t i = 0; i < curve_files.size(); ++i) {
          gp << (i ? ", \\\n     " : "") << quoted(curve_files[i]) << " using "
             << xcol << ":4 with lines lw 2 " << line_style(i) << " title "
             << quoted(labels[i]);
          gp << ", " << quoted(eval_files[i]) << " using " << xcol << ":"
             << (acc ? "4 axes x1y2" : "3") << " with points pt 7 ps 0.8 "
             << line_style(i) << " notitle";
        }
        gp << "\nunset output\n";
      }
      sp.outputs.push_back("plots/" + name + ".png");
      sp.outputs.push_back("plots/" + name + ".svg");
    };
    if (!curve_files.empty()) {
      curves("1", "step", suite + "_loss_steps");
      curves("2", "training time (s)", suite + "_loss_time");
    }
    gp << "unset y2label\nunset y2tics\nset ytics mirror\n";
  }

  // Memory breakdown: stacked bars per method (MiB).
  void memory() {
    std::ostringstream d;
    d << "# label frozen_weights trainable_weights gradients optimizer_state "
         "activations_other (MiB)\n";
    for (const MethodResult* m : ms)
      d << quoted(m->info.label) << " " << num(to_mib(m->frozen_weight_bytes))
        << " " << num(to_mib(m->trainable_weight_bytes)) << " "
        << num(to_mib(m->gradient_bytes)) << " "
        << num(to_mib(m->optimizer_state_bytes)) << " "
        << num(to_mib(m->activation_bytes)) << "\n";
    const std::string f = "data/" + suite + "_memory.dat";
    detail::write_text_file((dir / f).string(), d.str());
    const std::string name = suite + "_memory";
    gp << "\n# " << name << "\nset title "
       << quoted(suite + ": peak tensor memory by role")
       << "\nset xlabel ''\nset ylabel 'MiB'\nset style data histograms\n"
          "set style histogram rowstacked\n"
          "set style fill solid 0.85 border -1\n"
          "set boxwidth 0.7\nset xtics rotate by -30\n";
    for (const auto& t : terms) {
      gp << t.second << "\nset output " << quoted(name + "." + t.first) << "\n";
      gp << "plot " << quoted(f)
         << " using 2:xtic(1) title 'frozen weights', '' "
         << "using 3 title 'trainable weights', "
         << "'' using 4 title 'gradients', "
         << "'' using 5 title 'optimizer state', "
         << "'' using 6 title 'activations + other'"
         << "\nunset output\n";
    }
    gp << "set xtics norotate\nset style data lines\n";
    sp.outputs.push_back("plots/" + name + ".png");
    sp.outputs.push_back("plots/" + name + ".svg");
  }

  // Peak memory vs final quality, one labelled point per method.
  void quality() {
    std::ostringstream d;
    d << "# label peak_tensor_MiB "
      << (acc ? "val_accuracy_percent" : "val_loss")
      << " optimizer_state_MiB std_over_seeds\n";
    size_t n = 0;
    for (const MethodResult* m : ms) {
      const double k = acc ? 100.0 : 1.0;
      const auto& q = acc ? m->val_accuracy : m->val_loss;
      const auto& sd = acc ? m->val_accuracy_std : m->val_loss_std;
      if (!q || !std::isfinite(*q)) continue;
      d << quoted(m->info.label) << " " << num(to_mib(m->peak_tensor_bytes))
        << " " << num(k * *q) << " " << num(to_mib(m->optimizer_state_bytes))
        << " " << num(sd ? k * *sd : 0.0) << "\n";
      ++n;
    }
    const std::string f = "data/" + suite + "_quality.dat";
    detail::write_text_file((dir / f).string(), d.str());
    std::ostringstream fr;
    fr << "# the quality-vs-peak frontier (quality_frontier), cheapest first\n";
    for (const MethodResult* m : quality_frontier(all, suite)) {
      const auto& q = acc ? m->val_accuracy : m->val_loss;
      fr << num(to_mib(m->peak_tensor_bytes)) << " "
         << num((acc ? 100.0 : 1.0) * *q) << "\n";
    }
    const std::string ff = "data/" + suite + "_frontier.dat";
    detail::write_text_file((dir / ff).string(), fr.str());
    if (n > 0) {
      const std::string name = suite + "_quality";
      gp << "\n# " << name << "\nset title "
         << quoted(suite + ": peak tensor memory vs final " +
                   (acc ? "validation accuracy (higher is better)"
                        : "validation loss (lower is better)") +
                   "; bars: std over seeds; line: the frontier")
         << "\nset xlabel 'peak tensor memory (MiB)'\nset ylabel "
         << quoted(acc ? "validation accuracy (%)" : "validation loss")
         << "\nset key off\nset offsets graph 0.08, graph 0.25, graph 0.1, "
            "graph 0.1\n";
      for (const auto& t : terms) {
        gp << t.second << "\nset output " << quoted(name + "." + t.first)
           << "\n";
        gp << "plot " << quoted(ff)
           << " using 1:2 with lines lw 2 dt 2 lc rgb '#2ca02c', " << quoted(f)
           << " using 2:3:5 with yerrorbars pt 7 ps 1.2 lc rgb '#1f77b4', "
           << quoted(f)
           << " using 2:3:1 with labels offset char 1,0.8 left font ',9'"
           << "\nunset output\n";
      }
      gp << "set offsets 0,0,0,0\nset key outside right top\n";
      sp.outputs.push_back("plots/" + name + ".png");
      sp.outputs.push_back("plots/" + name + ".svg");
    }
  }
};

// Writes the data files and the script of one suite; returns the outputs.
SuitePlots write_suite(const std::vector<const MethodResult*>& ms,
                       const std::vector<MethodResult>& all,
                       const std::string& suite, const fs::path& dir) {
  SuitePlots sp;
  fs::create_directories(dir / "data");
  const bool acc = std::any_of(ms.begin(), ms.end(), [](const MethodResult* m) {
    return m->val_accuracy.has_value();
  });
  std::ostringstream gp;
  gp << "# Generated by lowmem compare: curves, memory and quality of suite '"
     << suite << "'.\n# Run from this directory: gnuplot " << suite << ".gp\n";
  gp << "set datafile missing 'nan'\nset grid\nset key outside right top\n"
        "set style line 100 lw 1\n";
  const std::vector<std::pair<std::string, std::string>> terms = {
      {"png",
       "set terminal pngcairo size 1000,600 enhanced font 'DejaVu Sans,10'"},
      {"svg",
       "set terminal svg size 1000,600 enhanced font 'DejaVu Sans,10' "
       "background rgb 'white'"}};

  SuitePlotWriter w{ms, all, suite, dir, acc, gp, sp, terms};
  w.loss_curves();
  w.memory();
  w.quality();
  sp.script = suite + ".gp";
  detail::write_text_file((dir / sp.script).string(), gp.str());
  return sp;
}

double gib(int64_t b) {
  return static_cast<double>(b) / (1024.0 * 1024.0 * 1024.0);
}

// The memory suite: one panel per model, stacked planned parts per method,
// the measured peak as a marker, the budgets below the panel's top as lines
// named on the right axis.
SuitePlots write_memory_suite(const MemorySuite& mem, const fs::path& dir) {
  SuitePlots sp;
  fs::create_directories(dir / "data");
  std::vector<std::string> models;
  for (const auto& r : mem.rows)
    if (std::find(models.begin(), models.end(), r.model) == models.end())
      models.push_back(r.model);
  std::ostringstream gp;
  gp << "# Generated by lowmem compare: the memory suite (lowmem plan's parts "
        "and the measured peaks).\n# Run from this directory: gnuplot "
        "memory_suite.gp\nset datafile missing 'nan'\nset grid ytics\n"
        "set style data histograms\nset style histogram rowstacked\n"
        "set style fill solid 0.85 border -1\nset boxwidth 0.7\n"
        "set xtics rotate by -60 font ',8'\nset ylabel 'GiB'\n"
        "set offsets 0, 0, graph 0.08, 0\nset style textbox opaque noborder\n";
  const char* parts[] = {"weights", "optimizer state", "gradients",
                         "activations", "temporaries"};
  const char* colours[] = {"#4c72b0", "#dd8452", "#55a868", "#c44e52",
                           "#8172b3"};
  std::vector<std::string> panels;
  for (const auto& model : models) {
    std::ostringstream d;
    d << "# method weights optimizer_state gradients activations temporaries "
         "measured_peak (GiB; nan: not measured)\n";
    int64_t top = 0;
    for (const auto& r : mem.rows) {
      if (r.model != model || r.status != "ok") continue;
      top = std::max(top, std::max(r.peak, r.measured_peak));
      d << quoted(r.method) << " " << num(gib(r.weights)) << " "
        << num(gib(r.optimizer_state)) << " " << num(gib(r.gradients)) << " "
        << num(gib(r.activations)) << " " << num(gib(r.temporaries)) << " "
        << (r.measured == "ok" ? num(gib(r.measured_peak)) : "nan") << "\n";
    }
    const std::string f = "data/memory_" + model + ".dat";
    detail::write_text_file((dir / f).string(), d.str());
    std::ostringstream p;
    p << "set title " << quoted("LLaMA " + model) << "\nunset label\n";
    // Budgets are named on the right axis (a label inside the panel hid the
    // bars under it).
    std::string budget_tics;
    for (int64_t b : mem.budgets)
      if (b <= top)
        budget_tics += (budget_tics.empty() ? "" : ", ") +
                       quoted(format_bytes(b)) + " " + num(gib(b));
    if (budget_tics.empty())
      p << "unset y2tics; set ytics mirror\n";
    else
      p << "set link y2; set y2tics (" << budget_tics
        << ") font ',8' textcolor rgb '#444444' nomirror; set ytics "
           "nomirror\n";
    p << "plot ";
    for (int i = 0; i < 5; ++i)
      p << (i ? ", '' using " : quoted(f) + " using ") << i + 2
        << (i ? "" : ":xtic(1)") << " lc rgb '" << colours[i] << "' title "
        << quoted(parts[i]);
    p << ", '' using 0:7 with points pt 13 ps 1.6 lc rgb 'black' title "
         "'measured peak'";
    for (int64_t b : mem.budgets)
      if (b <= top)
        p << ", " << num(gib(b))
          << " with lines dt 2 lw 2 lc rgb '#444444' notitle";
    p << "\n";
    panels.push_back(p.str());
  }
  const std::string title =
      "Memory suite (lowmem plan, " + mem.dtype + ", batch " +
      std::to_string(mem.batch_size) + " x " + std::to_string(mem.seq_len) +
      " tokens): planned peak by part; diamonds: measured peak";
  const std::vector<std::pair<std::string, std::string>> terms = {
      {"png",
       "set terminal pngcairo size 1800,1100 enhanced font 'DejaVu Sans,10'"},
      {"svg",
       "set terminal svg size 1800,1100 enhanced font 'DejaVu Sans,10' "
       "background rgb 'white'"}};
  for (const auto& t : terms) {
    gp << t.second << "\nset output " << quoted("memory_suite." + t.first)
       << "\nset multiplot layout 2,3 title " << quoted(title) << "\n";
    for (size_t i = 0; i < panels.size(); ++i)
      gp << (i == 0 ? "set key top right Left reverse font ',8'\n"
                    : "set key off\n")
         << panels[i];
    gp << "unset multiplot\nunset output\n";
  }
  sp.script = "memory_suite.gp";
  detail::write_text_file((dir / sp.script).string(), gp.str());
  sp.outputs = {"plots/memory_suite.png", "plots/memory_suite.svg"};
  return sp;
}

// Runs `gnuplot script` in `dir`; "" on success, else the reason.
std::string run_gnuplot(const std::string& exe, const fs::path& dir,
                        const std::string& script) {
  const std::string log = (dir / (script + ".log")).string();
  pid_t pid = ::fork();
  if (pid < 0) return std::string("fork failed: ") + std::strerror(errno);
  if (pid == 0) {
    if (::chdir(dir.c_str()) != 0) ::_exit(126);
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::close(fd);
    }
    ::execl(exe.c_str(), exe.c_str(), script.c_str(),
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return "";
  return "gnuplot failed on plots/" + script + " (see plots/" + script +
         ".log)";
}

}  // namespace

PlotSet make_plots(const CompareResults& results, const std::string& out_dir,
                   const std::string& gnuplot) {
  PlotSet ps;
  const fs::path dir = fs::path(out_dir) / "plots";
  std::vector<std::string> suites;
  for (const auto& m : results.methods)
    if (std::find(suites.begin(), suites.end(), m.info.suite) == suites.end())
      suites.push_back(m.info.suite);
  std::vector<SuitePlots> all;
  for (const auto& s : suites) {
    std::vector<const MethodResult*> ok;
    for (const auto& m : results.methods)
      if (m.info.suite == s && (m.status == "ok" || m.status == "diverged") &&
          !m.curve.empty())
        ok.push_back(&m);
    if (!ok.empty()) all.push_back(write_suite(ok, results.methods, s, dir));
  }
  if (!results.memory.rows.empty())
    all.push_back(write_memory_suite(results.memory, dir));
  if (all.empty()) {
    ps.status = "skipped";
    ps.reason = "no completed method to plot";
    return ps;
  }
  const std::string exe = find_executable(gnuplot);
  if (exe.empty()) {
    ps.status = "skipped";
    ps.reason =
        gnuplot.empty()
            ? "disabled (empty --gnuplot); scripts are in plots/*.gp"
            : "gnuplot not found ('" + gnuplot +
                  "'; Debian package gnuplot-nox); scripts are in plots/*.gp";
    return ps;
  }
  std::vector<std::string> errors;
  for (const auto& sp : all) {
    const std::string err = run_gnuplot(exe, dir, sp.script);
    if (!err.empty()) errors.push_back(err);
    for (const auto& f : sp.outputs) {
      std::error_code ec;
      const auto size = fs::file_size(fs::path(out_dir) / f, ec);
      if (!ec && size > 0)
        ps.files.push_back(f);
      else if (err.empty())
        errors.push_back("gnuplot wrote no " + f);
    }
  }
  ps.status = errors.empty() ? "ok" : "failed";
  for (size_t i = 0; i < errors.size(); ++i)
    ps.reason += (i ? "; " : "") + errors[i];
  return ps;
}

}  // namespace lowmem::compare
