// One method of a compare run, trained by train::Trainer (the loop, schedule,
// routing and registries of `lowmem train`) with a memory probe, and the
// orchestration of a run: one forked child per method, progress and results
// sent back over a pipe.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <torch/optim/optimizer.h>
#include <torch/utils.h>
#include <torch/version.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <numeric>
#include <optional>
#include <set>

#include "internal.h"
#include "lowmem/core/check.h"
#include "lowmem/core/memory.h"
#include "lowmem/core/threads.h"
#include "lowmem/train/device.h"
#include "lowmem/train/trainer.h"

namespace lowmem::compare {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::string iso_now() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

std::string machine_description() {
  struct utsname u {};
  uname(&u);
  std::string s = std::to_string(hardware_cores()) + " cores, " + u.sysname +
                  " " + u.release + " " + u.machine + ", libtorch " +
                  TORCH_VERSION;
  return s;
}

bool stop_requested(const CompareOptions& o) {
  return o.stop && o.stop->load();
}

// The workload's batches as the trainer's BatchSource.
class WorkloadSource final : public data::BatchSource {
 public:
  explicit WorkloadSource(std::function<data::Batch()> next)
      : next_(std::move(next)) {}
  data::Batch next() override {
    ++position_;
    return next_();
  }
  int64_t position() const override { return position_; }
  void seek(int64_t) override {}
  std::string describe() const override { return "compare workload"; }

 private:
  std::function<data::Batch()> next_;
  int64_t position_ = 0;
};

// The trainer's settings for `steps` updates: warm-up over 10% of them, then
// cosine decay to 10% of the peak rate; clipping only when asked; a
// non-finite step ends the run (status diverged), it is never retried.
train::TrainerOptions trainer_options(const CompareOptions& o, int64_t steps) {
  train::TrainerOptions t;
  t.max_steps = steps;
  t.warmup_steps = std::max<int64_t>(1, steps / 10);
  t.min_lr_ratio = 0.1;
  t.clip_norm = o.clip_norm;  // 0: off
  t.eval_every = 0;
  t.max_consecutive_skips = steps + 1;
  t.log_every = steps + 1;
  return t;
}

// Builds `def`'s configuration on the workload: routing, optimizers (and the
// lr override), the detail line and the --set keys it applied.
detail::Built build_method(const detail::MethodDef& def, const detail::Suite& s,
                           const CompareOptions& o, detail::Workload& w,
                           c10::Device device, MethodResult& r) {
  detail::Built b;
  try {
    b.config = detail::method_config(def, s, o);
    b.config.validate();
    b.setup = train::setup_method(b.config, w.model, device);
  } catch (const ConfigError& e) {
    LOWMEM_CHECK(false, "[compare] ", def.info.name, ": ", e.what());
  }
  for (const auto& item : o.overrides) {
    const std::string key = item.substr(0, item.find('='));
    const std::string section = key.substr(0, key.find('.'));
    if (std::find(b.setup.sections.begin(), b.setup.sections.end(), section) ==
        b.setup.sections.end())
      continue;  // a component this method does not build
    auto it = std::find_if(
        r.overrides.begin(), r.overrides.end(),
        [&key](const std::string& x) { return x.rfind(key + "=", 0) == 0; });
    if (it == r.overrides.end()) it = r.overrides.insert(it, item);
    *it = item;  // one entry per key: the value that took effect
  }
  r.detail = def.detail(b);
  if (!r.overrides.empty()) {
    std::string list;
    for (const auto& kv : r.overrides) list += (list.empty() ? "" : ", ") + kv;
    r.detail += " [set: " + list + "]";
  }
  if (o.lr > 0) {
    for (auto& slot : b.setup.optimizers)
      for (auto& g : slot.optimizer->param_groups()) g.options().set_lr(o.lr);
    r.detail += " [lr overridden: " + detail::num(o.lr) + "]";
  }
  if (o.clip_norm > 0)
    r.detail += " [gradient norm clipped at " + detail::num(o.clip_norm) + "]";
  return b;
}

// Median step time after warm-up, and the mean of the last 10% of losses.
void summarise(const std::vector<double>& step_s,
               const std::vector<double>& losses, int64_t items_per_step,
               MethodResult& r) {
  if (!step_s.empty()) {
    const size_t skip = std::min<size_t>(3, step_s.size() / 10);
    std::vector<double> v(step_s.begin() + static_cast<long>(skip),
                          step_s.end());
    std::nth_element(v.begin(), v.begin() + static_cast<long>(v.size() / 2),
                     v.end());
    const double med = v[v.size() / 2];
    r.step_time_ms = med * 1e3;
    r.throughput = med > 0 ? static_cast<double>(items_per_step) / med : 0;
  }
  if (!losses.empty()) {
    const size_t k = std::max<size_t>(1, losses.size() / 10);
    r.final_train_loss = std::accumulate(losses.end() - static_cast<long>(k),
                                         losses.end(), 0.0) /
                         static_cast<double>(k);
  }
}

// The training steps of one method with their evaluations and curve.
// Training peaks and evaluation peaks are measured apart: each stretch of
// steps between evaluations gets its own scope.
struct Measured {
  int64_t train_peak = 0, eval_peak = 0;
};

Measured train_loop(train::Trainer& trainer, detail::Workload& w,
                    const MethodInfo& method, const CompareOptions& o,
                    int64_t steps, MemoryTracker& tracker,
                    const CompareCallbacks& callbacks, MethodResult& r) {
  const int64_t eval_every =
      o.eval_every > 0 ? o.eval_every : std::max<int64_t>(1, steps / 5);
  const int64_t curve_stride = std::max<int64_t>(1, (steps + 499) / 500);
  WorkloadSource source(w.next_batch);
  std::vector<double> step_s, losses;
  double train_s = 0;
  Measured m;
  std::optional<MemoryScope> train_scope;
  train_scope.emplace(tracker.scope());
  for (int64_t step = 1; step <= steps; ++step) {
    if (stop_requested(o)) {
      r.status = "interrupted";
      r.reason = "stopped at step " + std::to_string(step);
      break;
    }
    const auto t0 = Clock::now();
    const train::StepResult sr = trainer.step(source);
    const double dt = seconds_since(t0);
    step_s.push_back(dt);
    train_s += dt;
    r.steps = step;
    if (sr.skipped) {
      r.status = "diverged";
      r.reason = "non-finite loss at step " + std::to_string(step);
      break;
    }
    losses.push_back(sr.loss);
    CurvePoint cp;
    cp.step = step;
    cp.wall_s = train_s;
    cp.train_loss = sr.loss;
    const bool eval_now = step % eval_every == 0 || step == steps;
    if (eval_now) {
      m.train_peak = std::max(m.train_peak, train_scope->peak_bytes());
      train_scope.reset();
      MemoryScope eval_scope = tracker.scope();
      torch::NoGradGuard ng;
      w.model->eval();  // dropout / drop-path off
      const detail::Evaluation e = w.evaluate();
      w.model->train();
      eval_scope.stop();
      m.eval_peak = std::max(m.eval_peak, eval_scope.peak_bytes());
      train_scope.emplace(tracker.scope());
      cp.val_loss = r.val_loss = e.loss;
      cp.val_accuracy = r.val_accuracy = e.accuracy;
    }
    if (eval_now || step % curve_stride == 0 || step == 1)
      r.curve.push_back(cp);
    if (callbacks.on_step) callbacks.on_step(method, step, steps, sr.loss);
  }
  m.train_peak = std::max(m.train_peak, train_scope->peak_bytes());
  summarise(step_s, losses, w.items_per_step, r);
  r.train_time_s = train_s;
  return m;
}

}  // namespace

// Four times the default budget on the default models, with 4x the
// validation batches. The models stay the default sizes so that the learning
// rates tuned on them (docs/benchmarks/compare.md) still apply.
CompareOptions& CompareOptions::full() {
  pretrain_steps = 1000;
  base_steps = 1000;
  finetune_steps = 500;
  eval_batches = 32;
  return *this;
}

std::vector<MethodInfo> list_methods(const CompareOptions& options,
                                     const std::vector<std::string>& wanted) {
  std::vector<MethodInfo> out;
  for (const auto& def : detail::method_defs()) {
    if (!wanted.empty() &&
        std::find(wanted.begin(), wanted.end(), def.info.suite) == wanted.end())
      continue;
    MethodInfo info = def.info;
    const auto& s = detail::suite(info.suite);
    info.unavailable = s.unavailable ? s.unavailable(options) : "";
    out.push_back(info);
  }
  return out;
}

MethodResult run_method(const MethodInfo& method, const CompareOptions& options,
                        const CompareCallbacks& callbacks) {
  const auto t_start = Clock::now();
  const detail::MethodDef& def = detail::method_def(method.suite, method.name);
  const detail::Suite& s = detail::suite(method.suite);
  validate_overrides(options.overrides);
  const c10::Device device = train::resolve_device(options.device);
  LOWMEM_CHECK(device.is_cpu() || device.is_cuda(), "[compare] device ",
               options.device, ": memory is measured on cpu and cuda only");
  LOWMEM_CHECK(options.clip_norm >= 0 && std::isfinite(options.clip_norm),
               "[compare] clip_norm must be >= 0 (0: off), got ",
               options.clip_norm);
  LOWMEM_CHECK(options.lr >= 0 && std::isfinite(options.lr),
               "[compare] lr must be >= 0 (0: each method's default), got ",
               options.lr);
  MethodResult r;
  r.info = method;
  MemoryTracker::install();
  set_default_threads(options.threads);
  r.start_rss_bytes = MemoryTracker::current_rss_bytes();

  auto data = s.load(options);
  MemoryTracker tracker(device);
  MemoryScope setup_scope = tracker.scope();
  torch::manual_seed(options.seed);
  detail::Workload w = s.build(*data, options, def.bf16);
  // Built on the CPU (same initial weights on every device), then moved; the
  // workload moves each batch to the model's device.
  w.model->to(device);
  torch::manual_seed(options.seed + 1);  // same adapter init for every method
  detail::Built b = build_method(def, s, options, w, device, r);
  r.task = w.task;
  r.throughput_unit = w.item_unit;
  for (const auto& p : w.model->parameters()) {
    r.total_params += p.numel();
    if (p.requires_grad()) r.trainable_params += p.numel();
  }
  const int64_t steps = s.steps(options);
  train::Trainer trainer(w.model, w.loss, b.setup.optimizers,
                         trainer_options(options, steps));
  // The memory probe: bytes by role right after the last update (gradients
  // still alive).
  trainer.set_step_probe([&](train::ProbePoint p) {
    if (p != train::ProbePoint::kAfterUpdate || trainer.steps_done() != steps)
      return;
    const auto m = train::memory_breakdown(*w.model, trainer.optimizers());
    r.frozen_weight_bytes = m.frozen_weights;
    r.trainable_weight_bytes = m.trainable_weights;
    r.gradient_bytes = m.gradients;
    r.optimizer_state_bytes = m.optimizer_state;
  });
  const Measured m =
      train_loop(trainer, w, method, options, steps, tracker, callbacks, r);
  setup_scope.stop();
  r.peak_tensor_bytes = m.train_peak - setup_scope.start_bytes();
  r.eval_peak_tensor_bytes =
      m.eval_peak > 0 ? m.eval_peak - setup_scope.start_bytes() : 0;
  r.activation_bytes =
      std::max<int64_t>(0, r.peak_tensor_bytes - r.frozen_weight_bytes -
                               r.trainable_weight_bytes - r.gradient_bytes -
                               r.optimizer_state_bytes);
  r.peak_rss_bytes = MemoryTracker::peak_rss_bytes();
  r.wall_s = seconds_since(t_start);
  return r;
}

namespace {

std::string signal_name(int sig) {
  const char* d = strsignal(sig);
  return std::string(d ? d : "signal") + " (" + std::to_string(sig) + ")";
}

void write_all(int fd, const std::string& s) {
  const char* p = s.data();
  size_t left = s.size();
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
}

std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  return s;
}

struct ChildOutcome {
  std::optional<std::string> result;  // the child's "R" payload
  std::string error;       // "E" line from the child
  bool interrupted = false;
  std::string death;       // exit status / signal when no result came
};

// Runs `job` in a forked child. The child reports "S step steps loss",
// "R <json>" or "E <message>" lines; progress is forwarded to `callbacks`.
ChildOutcome run_in_child(
    const MethodInfo& info, const CompareOptions& options,
    const CompareCallbacks& callbacks,
    const std::function<std::string(const CompareCallbacks&)>& job) {
  int fds[2];
  LOWMEM_CHECK(::pipe(fds) == 0, "[compare] pipe() failed: ", std::strerror(errno));
  std::fflush(nullptr);
  pid_t pid = ::fork();
  LOWMEM_CHECK(pid >= 0, "[compare] fork() failed: ", std::strerror(errno));
  if (pid == 0) {
    ::close(fds[0]);
    ::signal(SIGINT, SIG_DFL);
    ::signal(SIGTERM, SIG_DFL);
    const int out = fds[1];
    CompareCallbacks cb;
    auto last = Clock::now();
    cb.on_step = [&](const MethodInfo&, int64_t step, int64_t steps, double loss) {
      if (step != steps && seconds_since(last) < 0.1) return;
      last = Clock::now();
      char buf[96];
      std::snprintf(buf, sizeof buf, "S %lld %lld %.9g\n",
                    static_cast<long long>(step), static_cast<long long>(steps),
                    loss);
      write_all(out, buf);
    };
    cb.on_note = [&](const std::string& n) { write_all(out, "N " + one_line(n) + "\n"); };
    int code = 0;
    try {
      write_all(out, "R " + job(cb) + "\n");
    } catch (const c10::Error& e) {
      write_all(out, "E " + one_line(e.what_without_backtrace()) + "\n");
      code = 1;
    } catch (const std::exception& e) {
      write_all(out, "E " + one_line(e.what()) + "\n");
      code = 1;
    }
    ::close(out);
    ::_exit(code);
  }
  ::close(fds[1]);
  ChildOutcome oc;
  std::string buf;
  bool killed = false;
  char chunk[65536];
  for (;;) {
    if (stop_requested(options) && !killed) {
      ::kill(pid, SIGTERM);  // the terminal's SIGINT usually got there first
      killed = true;
    }
    pollfd pfd{fds[0], POLLIN, 0};
    int pr = ::poll(&pfd, 1, 200);
    if (pr < 0 && errno == EINTR) continue;
    if (pr == 0) continue;
    ssize_t n = ::read(fds[0], chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    buf.append(chunk, static_cast<size_t>(n));
    size_t nl;
    while ((nl = buf.find('\n')) != std::string::npos) {
      std::string line = buf.substr(0, nl);
      buf.erase(0, nl + 1);
      if (line.size() < 2) continue;
      const std::string body = line.substr(2);
      if (line[0] == 'S' && callbacks.on_step) {
        long long step = 0, steps = 0;
        double loss = 0;
        if (std::sscanf(body.c_str(), "%lld %lld %lf", &step, &steps, &loss) == 3)
          callbacks.on_step(info, step, steps, loss);
      } else if (line[0] == 'N' && callbacks.on_note) {
        callbacks.on_note(body);
      } else if (line[0] == 'R') {
        oc.result = body;
      } else if (line[0] == 'E') {
        oc.error = body;
      }
    }
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    oc.interrupted = stop_requested(options) && (sig == SIGINT || sig == SIGTERM);
    oc.death = "child killed by " + signal_name(sig);
  } else if (WIFEXITED(status) && WEXITSTATUS(status) != 0) {
    oc.death = "child exited with code " + std::to_string(WEXITSTATUS(status));
  }
  if (stop_requested(options) && !oc.result) oc.interrupted = true;
  return oc;
}

}  // namespace

void check_device(const CompareOptions& o) {
  const c10::Device d = train::parse_device(o.device);
  if (!d.is_cpu() && !d.is_cuda())
    throw ConfigError("device '" + o.device +
                      "': compare measures memory on cpu and cuda only");
  if (d.is_cpu()) return;
  if (!o.isolate) {
    train::resolve_device(o.device);
    return;
  }
  // In a child: CUDA initialised in this process would not survive fork().
  MethodInfo probe;
  probe.name = "device check";
  CompareOptions quiet = o;
  quiet.stop = nullptr;
  ChildOutcome oc =
      run_in_child(probe, quiet, {}, [&](const CompareCallbacks&) {
        train::resolve_device(o.device);
        return std::string("{}");
      });
  if (!oc.result)
    throw ConfigError(oc.error.empty() ? "device '" + o.device +
                                             "' could not be checked: " + oc.death
                                       : oc.error);
}

namespace {

MethodResult not_run(const MethodInfo& info, const std::string& status,
                     const std::string& reason) {
  MethodResult r;
  r.info = info;
  r.status = status;
  r.reason = reason;
  return r;
}

void write_outputs(CompareResults& res, const CompareOptions& o) {
  namespace fs = std::filesystem;
  fs::create_directories(o.out_dir);
  res.claims = check_claims(res.methods);
  const fs::path d(o.out_dir);
  write_results_json(res, (d / "results.json").string());
  write_results_csv(res, (d / "results.csv").string());
  write_curves_csv(res, (d / "curves.csv").string());
  write_report(res, (d / "report.md").string());
}

bool selected(const MethodInfo& i, const std::string& m) {
  return m == i.name || m == i.suite + "/" + i.name;
}

// The methods of the selected suites, narrowed to options.methods.
std::vector<MethodInfo> plan_methods(const CompareOptions& options) {
  std::vector<MethodInfo> plan = list_methods(options, options.suites);
  if (options.methods.empty()) return plan;
  for (const auto& m : options.methods) {
    const bool known =
        std::any_of(plan.begin(), plan.end(),
                    [&](const MethodInfo& i) { return selected(i, m); });
    LOWMEM_CHECK(known, "[compare] unknown method '", m,
                 "' for the selected suites (see `lowmem compare --list`)");
  }
  std::vector<MethodInfo> kept;
  for (const auto& i : plan)
    if (std::any_of(options.methods.begin(), options.methods.end(),
                    [&](const std::string& m) { return selected(i, m); }))
      kept.push_back(i);
  return kept;
}

// Pretrains (or reuses) the suite's cached base model; returns "" when it is
// there, "interrupted", or the failure.
std::string ensure_base(const MethodInfo& info, const detail::Suite& s,
                        const CompareOptions& options,
                        const CompareCallbacks& callbacks) {
  const std::string path = s.base_path(options);
  if (std::filesystem::exists(path)) {
    if (callbacks.on_note)
      callbacks.on_note(info.suite + ": reusing cached base model " + path);
    return "";
  }
  if (callbacks.on_note)
    callbacks.on_note(info.suite + ": training the base model (cached at " +
                      path + ")");
  if (!options.isolate) {
    try {
      s.make_base(options, callbacks);
      return "";
    } catch (const std::exception& e) {
      return std::string("base model failed: ") + e.what();
    }
  }
  MethodInfo base_info = info;
  base_info.name = "base";
  base_info.label = "base model";
  ChildOutcome oc = run_in_child(base_info, options, callbacks,
                                 [&](const CompareCallbacks& cb) {
                                   s.make_base(options, cb);
                                   return std::string("{}");
                                 });
  if (oc.interrupted) return "interrupted";
  if (!oc.result)
    return "base model failed: " + (oc.error.empty() ? oc.death : oc.error);
  return "";
}

// Runs one available method, in a child when isolating.
MethodResult run_one(const MethodInfo& info, const CompareOptions& options,
                     const CompareCallbacks& callbacks) {
  if (!options.isolate) {
    try {
      return run_method(info, options, callbacks);
    } catch (const c10::Error& e) {
      return not_run(info, "failed", one_line(e.what_without_backtrace()));
    } catch (const std::exception& e) {
      return not_run(info, "failed", one_line(e.what()));
    }
  }
  ChildOutcome oc =
      run_in_child(info, options, callbacks, [&](const CompareCallbacks& cb) {
        return detail::method_to_json_line(run_method(info, options, cb));
      });
  if (oc.result) {
    try {
      return detail::method_from_json_line(*oc.result);
    } catch (const std::exception& e) {
      return not_run(info, "failed",
                     std::string("unreadable result: ") + e.what());
    }
  }
  if (oc.interrupted)
    return not_run(info, "interrupted", "interrupted while running");
  return not_run(info, "failed", oc.error.empty() ? oc.death : oc.error);
}

CompareResults start_results(const CompareOptions& options) {
  CompareResults res;
  res.created = iso_now();
  res.command_line = options.command_line;
  res.machine = machine_description();
  res.options = options;
  res.options.stop = nullptr;
  res.plots.reason = "not drawn yet";
  return res;
}

}  // namespace

CompareResults run_compare(const CompareOptions& options,
                           const CompareCallbacks& user_callbacks) {
  const auto t0 = Clock::now();
  for (const auto& s : options.suites) detail::suite(s);  // validates names
  validate_overrides(options.overrides);  // ConfigError before any work
  check_device(options);                  // idem
  CompareResults res = start_results(options);
  CompareCallbacks callbacks = user_callbacks;
  callbacks.on_note = [&](const std::string& n) {
    res.notes.push_back(n);
    if (user_callbacks.on_note) user_callbacks.on_note(n);
  };
  const std::vector<MethodInfo> plan = plan_methods(options);
  std::filesystem::create_directories(options.out_dir);
  std::set<std::string> bases_done;
  const int count = static_cast<int>(plan.size());
  for (int idx = 0; idx < count; ++idx) {
    const MethodInfo& info = plan[static_cast<size_t>(idx)];
    if (stop_requested(options)) {
      res.interrupted = true;
      res.methods.push_back(
          not_run(info, "interrupted", "not started (interrupted)"));
      continue;
    }
    if (callbacks.on_start) callbacks.on_start(info, idx, count);
    const detail::Suite& s = detail::suite(info.suite);
    std::string base_error;
    if (info.unavailable.empty() && s.base_path &&
        !bases_done.count(info.suite)) {
      base_error = ensure_base(info, s, options, callbacks);
      if (base_error.empty()) bases_done.insert(info.suite);
    }
    MethodResult r;
    if (!info.unavailable.empty()) {
      r = not_run(info, "skipped", info.unavailable);
    } else if (base_error == "interrupted") {
      r = not_run(info, "interrupted",
                  "interrupted while training the base model");
    } else if (!base_error.empty()) {
      r = not_run(info, "failed", base_error);
    } else {
      r = run_one(info, options, callbacks);
    }
    if (r.status == "interrupted") res.interrupted = true;
    res.methods.push_back(r);
    if (callbacks.on_result) callbacks.on_result(r);
    res.wall_s = seconds_since(t0);
    write_outputs(res, options);
  }
  if (options.python_baseline && !stop_requested(options)) {
    if (callbacks.on_note)
      callbacks.on_note("python baseline: running " + options.python);
    res.python = detail::run_python_baseline(options);
  } else {
    res.python.reason = options.python_baseline
                            ? "interrupted"
                            : "not requested (--python-baseline)";
  }
  // Plots are cheap: drawn for whatever finished, interrupted or not.
  res.plots = make_plots(res, options.out_dir, options.gnuplot);
  res.wall_s = seconds_since(t0);
  write_outputs(res, options);
  return res;
}

}  // namespace lowmem::compare
