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
#include <map>
#include <numeric>
#include <optional>
#include <set>
#include <sstream>

#include "internal.h"
#include "lowmem/core/check.h"
#include "lowmem/core/input.h"
#include "lowmem/core/memory.h"
#include "lowmem/core/threads.h"
#include "lowmem/models/llama.h"
#include "lowmem/train/device.h"
#include "lowmem/train/plan.h"
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
  if (b.config.base_dtype != "auto")
    r.overrides.push_back("base_dtype=" + b.config.base_dtype);
  if (b.config.optim_bits != 0)
    r.overrides.push_back("optim_bits=" + std::to_string(b.config.optim_bits));
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

// The status order of a merged result: the first of these any seed has.
int severity(const std::string& status) {
  if (status == "interrupted") return 4;
  if (status == "failed") return 3;
  if (status == "diverged") return 2;
  if (status == "skipped") return 1;
  return 0;
}

// One run's per-seed record.
SeedRun seed_run_of(const MethodResult& r, uint64_t seed) {
  SeedRun s;
  s.seed = seed;
  s.status = r.status;
  s.reason = r.reason;
  s.steps = r.steps;
  s.step_time_ms = r.step_time_ms;
  s.final_train_loss = r.final_train_loss;
  s.val_loss = r.val_loss;
  s.val_accuracy = r.val_accuracy;
  s.curve = r.curve;
  return s;
}

// Mean and sample standard deviation (unset below 2 values).
void mean_std(const std::vector<double>& v, std::optional<double>& mean,
              std::optional<double>& sd) {
  mean.reset();
  sd.reset();
  if (v.empty()) return;
  const double m =
      std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
  mean = m;
  if (v.size() < 2) return;
  double ss = 0;
  for (double x : v) ss += (x - m) * (x - m);
  sd = std::sqrt(ss / static_cast<double>(v.size() - 1));
}

}  // namespace

// Four to five times the default budget on the default models, with 4x the
// validation batches. The models stay the default sizes so that the learning
// rates tuned on them (docs/benchmarks/compare.md) still apply.
CompareOptions& CompareOptions::full() {
  pretrain_steps = 1000;
  base_steps = 1000;
  finetune_steps = 500;
  lm_base_steps = 1600;
  lm_steps = 400;
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
  const uint64_t seed = detail::run_seed(options);
  torch::manual_seed(seed);
  detail::Workload w =
      s.build(*data, options, detail::model_variant(def, s, options));
  // Built on the CPU (same initial weights on every device), then moved; the
  // workload moves each batch to the model's device.
  w.model->to(device);
  torch::manual_seed(seed + 1);  // same adapter init for every method
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
  r.seed_runs = {seed_run_of(r, seed)};
  r.seeds_ok = r.status == "ok" ? 1 : 0;
  return r;
}

MethodResult merge_seeds(const std::vector<MethodResult>& runs) {
  LOWMEM_CHECK(!runs.empty(), "[compare] merge_seeds needs at least one run");
  size_t base = 0;
  while (base < runs.size() && runs[base].status != "ok" &&
         runs[base].status != "diverged")
    ++base;
  if (base == runs.size()) base = 0;
  MethodResult m = runs[base];
  m.seed_runs.clear();
  for (const auto& r : runs)
    m.seed_runs.insert(m.seed_runs.end(), r.seed_runs.begin(),
                       r.seed_runs.end());
  m.status = "ok";
  m.reason.clear();
  for (const auto& s : m.seed_runs)
    if (severity(s.status) > severity(m.status)) {
      m.status = s.status;
      m.reason = "seed " + std::to_string(s.seed) + ": " + s.reason;
    }
  std::vector<double> loss, acc, train;
  m.seeds_ok = 0;
  for (const auto& s : m.seed_runs) {
    if (s.status != "ok") continue;
    ++m.seeds_ok;
    train.push_back(s.final_train_loss);
    if (s.val_loss && std::isfinite(*s.val_loss)) loss.push_back(*s.val_loss);
    if (s.val_accuracy) acc.push_back(*s.val_accuracy);
  }
  if (m.seeds_ok > 0) {
    std::optional<double> t, unused;
    mean_std(train, t, unused);
    m.final_train_loss = t.value_or(m.final_train_loss);
    mean_std(loss, m.val_loss, m.val_loss_std);
    mean_std(acc, m.val_accuracy, m.val_accuracy_std);
  }
  return m;
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
  std::string error;                  // "E" line from the child
  bool interrupted = false;
  std::string death;  // exit status / signal when no result came
};

using Job = std::function<std::string(const CompareCallbacks&)>;

// A forked child running a job; its pipe is read by pump_child.
struct Child {
  MethodInfo info;
  pid_t pid = -1;
  int fd = -1;
  std::string buf;
  bool killed = false;
  ChildOutcome oc;
};

// The child's side: runs `job`, reporting "S step steps loss", "N note",
// "R <json>" or "E <message>" lines on `out`; never returns.
[[noreturn]] void child_main(int out, const Job& job) {
  ::signal(SIGINT, SIG_DFL);
  ::signal(SIGTERM, SIG_DFL);
  CompareCallbacks cb;
  auto last = Clock::now();
  cb.on_step = [&](const MethodInfo&, int64_t step, int64_t steps,
                   double loss) {
    if (step != steps && seconds_since(last) < 0.1) return;
    last = Clock::now();
    char buf[96];
    std::snprintf(buf, sizeof buf, "S %lld %lld %.9g\n",
                  static_cast<long long>(step), static_cast<long long>(steps),
                  loss);
    write_all(out, buf);
  };
  cb.on_note = [&](const std::string& n) {
    write_all(out, "N " + one_line(n) + "\n");
  };
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

// Forks a child running `job`.
Child start_child(const MethodInfo& info, const Job& job) {
  int fds[2];
  LOWMEM_CHECK(::pipe(fds) == 0,
               "[compare] pipe() failed: ", std::strerror(errno));
  std::fflush(nullptr);
  pid_t pid = ::fork();
  LOWMEM_CHECK(pid >= 0, "[compare] fork() failed: ", std::strerror(errno));
  if (pid == 0) {
    ::close(fds[0]);
    child_main(fds[1], job);
  }
  ::close(fds[1]);
  Child c;
  c.info = info;
  c.pid = pid;
  c.fd = fds[0];
  return c;
}

// Reads what the child wrote and forwards its progress; false at EOF.
bool pump_child(Child& c, const CompareCallbacks& callbacks) {
  char chunk[65536];
  ssize_t n = ::read(c.fd, chunk, sizeof chunk);
  if (n < 0 && errno == EINTR) return true;
  if (n <= 0) return false;
  c.buf.append(chunk, static_cast<size_t>(n));
  size_t nl;
  while ((nl = c.buf.find('\n')) != std::string::npos) {
    std::string line = c.buf.substr(0, nl);
    c.buf.erase(0, nl + 1);
    if (line.size() < 2) continue;
    const std::string body = line.substr(2);
    if (line[0] == 'S' && callbacks.on_step) {
      long long step = 0, steps = 0;
      double loss = 0;
      if (std::sscanf(body.c_str(), "%lld %lld %lf", &step, &steps, &loss) == 3)
        callbacks.on_step(c.info, step, steps, loss);
    } else if (line[0] == 'N' && callbacks.on_note) {
      callbacks.on_note(body);
    } else if (line[0] == 'R') {
      c.oc.result = body;
    } else if (line[0] == 'E') {
      c.oc.error = body;
    }
  }
  return true;
}

// Reaps the child after EOF and completes its outcome.
ChildOutcome finish_child(Child& c, const CompareOptions& options) {
  ::close(c.fd);
  int status = 0;
  while (::waitpid(c.pid, &status, 0) < 0 && errno == EINTR) {
  }
  ChildOutcome& oc = c.oc;
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    oc.interrupted =
        stop_requested(options) && (sig == SIGINT || sig == SIGTERM);
    oc.death = "child killed by " + signal_name(sig);
  } else if (WIFEXITED(status) && WEXITSTATUS(status) != 0) {
    oc.death = "child exited with code " + std::to_string(WEXITSTATUS(status));
  }
  if (stop_requested(options) && !oc.result) oc.interrupted = true;
  return oc;
}

// Waits up to 200 ms for output of the running children and pumps it;
// returns the indices (into `running`) of those that reached EOF. A stop
// request sends SIGTERM to each (the terminal's SIGINT usually got there
// first).
std::vector<size_t> poll_children(std::vector<Child>& running,
                                  const CompareOptions& options,
                                  const CompareCallbacks& callbacks) {
  std::vector<pollfd> fds;
  for (auto& c : running) {
    if (stop_requested(options) && !c.killed) {
      ::kill(c.pid, SIGTERM);
      c.killed = true;
    }
    fds.push_back(pollfd{c.fd, POLLIN, 0});
  }
  std::vector<size_t> done;
  const int pr = ::poll(fds.data(), fds.size(), 200);
  if (pr <= 0) return done;
  for (size_t i = 0; i < fds.size(); ++i)
    if (fds[i].revents != 0 && !pump_child(running[i], callbacks))
      done.push_back(i);
  return done;
}

// Runs `job` in a forked child and waits for it.
ChildOutcome run_in_child(const MethodInfo& info, const CompareOptions& options,
                          const CompareCallbacks& callbacks, const Job& job) {
  std::vector<Child> running{start_child(info, job)};
  while (poll_children(running, options, callbacks).empty()) {
  }
  return finish_child(running[0], options);
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
    throw ConfigError(oc.error.empty()
                          ? "device '" + o.device +
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
    if (!known) {
      throw ConfigError("unknown method " + quote(m) +
                        " for the selected suites (see `lowmem compare "
                        "--list`)");
    }
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

// A child's outcome as the run's result.
MethodResult outcome_result(const MethodInfo& info, const ChildOutcome& oc) {
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

// Runs one available method in this process (isolate off).
MethodResult run_in_process(const MethodInfo& info,
                            const CompareOptions& options,
                            const CompareCallbacks& callbacks) {
  try {
    return run_method(info, options, callbacks);
  } catch (const c10::Error& e) {
    return not_run(info, "failed", one_line(e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return not_run(info, "failed", one_line(e.what()));
  }
}

// Concurrent runs: options.jobs, or cores / threads (at most 4); 1 without
// isolation.
size_t job_count(const CompareOptions& o) {
  if (!o.isolate) return 1;
  if (o.jobs > 0) return static_cast<size_t>(o.jobs);
  const int threads = o.threads > 0 ? o.threads : hardware_cores();
  return static_cast<size_t>(
      std::clamp(hardware_cores() / std::max(1, threads), 1, 4));
}

// The runs of a compare: every seed of every available method, run by up to
// job_count children at once, merged
// per method in plan order as the last seed finishes.
class Runner {
 public:
  Runner(const CompareOptions& o, const CompareCallbacks& cb,
         const std::vector<MethodInfo>& plan, CompareResults& res,
         Clock::time_point t0)
      : o_(o),
        cb_(cb),
        plan_(plan),
        res_(res),
        t0_(t0),
        runs_(plan.size()),
        final_(plan.size()) {}

  // Queues the seeds of plan[i].
  void queue(size_t i) {
    for (int64_t k = 0; k < std::max<int64_t>(1, o_.seeds); ++k)
      queue_.push_back({i, k});
  }
  // A method that does not run (skipped, base failed, interrupted).
  void set_final(size_t i, MethodResult r) {
    final_[i] = std::move(r);
    if (cb_.on_result) cb_.on_result(*final_[i]);
    publish();
  }
  void run() {
    const size_t jobs = job_count(o_);
    while (next_ < queue_.size() || !running_.empty()) {
      if (stop_requested(o_)) stop_pending();
      while (next_ < queue_.size() && running_.size() < jobs)
        start(queue_[next_++]);
      if (running_.empty()) continue;
      std::vector<size_t> done = poll_children(running_, o_, cb_);
      std::sort(done.rbegin(), done.rend());
      for (size_t d : done) {
        const ChildOutcome oc = finish_child(running_[d], o_);
        const Slot slot = slots_[d];
        running_.erase(running_.begin() + static_cast<long>(d));
        slots_.erase(slots_.begin() + static_cast<long>(d));
        finish(slot, outcome_result(plan_[slot.method], oc));
      }
    }
  }

 private:
  struct Slot {
    size_t method;
    int64_t seed_index;
  };
  CompareOptions seeded(const Slot& s) const {
    CompareOptions so = o_;
    so.seed_index = s.seed_index;
    return so;
  }
  MethodInfo run_info(const Slot& s) const {
    MethodInfo info = plan_[s.method];
    if (o_.seeds > 1)
      info.name += " seed " + std::to_string(detail::run_seed(seeded(s)));
    return info;
  }
  void start(const Slot& s) {
    if (cb_.on_start)
      cb_.on_start(run_info(s), static_cast<int>(started_++),
                   static_cast<int>(queue_.size()));
    const CompareOptions so = seeded(s);
    const MethodInfo info = plan_[s.method];
    if (!o_.isolate) {
      finish(s, run_in_process(info, so, cb_));
      return;
    }
    running_.push_back(
        start_child(run_info(s), [info, so](const CompareCallbacks& cb) {
          return detail::method_to_json_line(run_method(info, so, cb));
        }));
    slots_.push_back(s);
  }
  // Records the runs not started as interrupted.
  void stop_pending() {
    res_.interrupted = true;
    for (; next_ < queue_.size(); ++next_)
      finish(queue_[next_], not_run(plan_[queue_[next_].method], "interrupted",
                                    "not started (interrupted)"));
  }
  void finish(const Slot& s, MethodResult r) {
    if (r.seed_runs.empty())
      r.seed_runs = {seed_run_of(r, detail::run_seed(seeded(s)))};
    auto& runs = runs_[s.method];
    runs.push_back(std::move(r));
    if (static_cast<int64_t>(runs.size()) < std::max<int64_t>(1, o_.seeds))
      return;
    std::sort(runs.begin(), runs.end(),
              [](const MethodResult& a, const MethodResult& b) {
                return a.seed_runs.front().seed < b.seed_runs.front().seed;
              });
    set_final(s.method, merge_seeds(runs));
  }
  // Rewrites the outputs with the methods finished so far, in plan order.
  void publish() {
    res_.methods.clear();
    for (const auto& f : final_)
      if (f) {
        if (f->status == "interrupted") res_.interrupted = true;
        res_.methods.push_back(*f);
      }
    res_.wall_s = seconds_since(t0_);
    write_outputs(res_, o_);
  }

  const CompareOptions& o_;
  const CompareCallbacks& cb_;
  const std::vector<MethodInfo>& plan_;
  CompareResults& res_;
  Clock::time_point t0_;
  std::vector<std::vector<MethodResult>> runs_;
  std::vector<std::optional<MethodResult>> final_;
  std::vector<Slot> queue_, slots_;
  std::vector<Child> running_;
  size_t next_ = 0, started_ = 0;
};

// The memory suite's options, checked before any work (ConfigError).
void validate_memory(const CompareOptions& o) {
  const auto known = models::llama_preset_names();
  const auto models = split_list(o.memory_models);
  for (const auto& m : models)
    if (std::find(known.begin(), known.end(), m) == known.end())
      throw ConfigError("--memory-models: unknown LLaMA preset '" + m + "'");
  for (const auto& m : split_list(o.memory_measure))
    if (std::find(models.begin(), models.end(), m) == models.end())
      throw ConfigError("--memory-measure: '" + m +
                        "' is not one of --memory-models");
  std::vector<std::string> rows;
  for (const auto& m : detail::memory_methods("60m")) rows.push_back(m.name);
  for (const auto& m : split_list(o.memory_methods)) {
    if (std::find(rows.begin(), rows.end(), m) != rows.end()) continue;
    std::string known;
    for (const auto& r : rows) known += (known.empty() ? "" : ", ") + r;
    throw ConfigError("--memory-methods: unknown row " + quote(m) + " (" +
                      known + ")");
  }
  detail::memory_dtype(o);
  if (o.memory_batch < 1 || o.memory_seq < 1 || o.memory_steps < 1)
    throw ConfigError(
        "--memory-batch, --memory-seq and --memory-steps must "
        "be >= 1");
  for (const auto& b : split_list(o.memory_budgets)) train::parse_bytes(b);
}

// Every row planned, in a child when isolating (plan runs torch ops, which
// the parent must not before it forks the method runs).
std::string plan_memory_rows(MemorySuite& m, const CompareOptions& o,
                             const CompareCallbacks& cb) {
  auto job = [&o](const CompareCallbacks&) {
    std::vector<MemoryRow> rows;
    const auto only = split_list(o.memory_methods);
    for (const auto& model : split_list(o.memory_models))
      for (const auto& method : detail::memory_methods(model))
        if (only.empty() ||
            std::find(only.begin(), only.end(), method.name) != only.end())
          rows.push_back(detail::plan_row(model, method, o));
    return detail::memory_rows_to_json_line(rows);
  };
  if (!o.isolate) {
    m.rows = detail::memory_rows_from_json_line(job(cb));
    return "";
  }
  MethodInfo info;
  info.suite = "memory";
  info.name = info.label = "plan";
  const ChildOutcome oc = run_in_child(info, o, cb, job);
  if (oc.interrupted) return "interrupted";
  if (!oc.result)
    return "plan failed: " + (oc.error.empty() ? oc.death : oc.error);
  m.rows = detail::memory_rows_from_json_line(*oc.result);
  return "";
}

// Fills one row's measured fields from its child's outcome.
void take_measurement(MemoryRow& r, const ChildOutcome& oc) {
  long long peak = 0, rss = 0;
  double ms = 0;
  if (oc.result &&
      std::sscanf(oc.result->c_str(), "%lld %lld %lf", &peak, &rss, &ms) == 3) {
    r.measured = "ok";
    r.measured_peak = peak;
    r.measured_rss = rss;
    r.measured_step_ms = ms;
  } else {
    r.measured = oc.interrupted ? "interrupted" : "failed";
    r.measured_reason = oc.error.empty() ? oc.death : oc.error;
  }
}

// Trains the rows of the measured sizes, job_count children at once.
void measure_memory_rows(MemorySuite& m, const CompareOptions& o,
                         const CompareCallbacks& cb) {
  const auto measure = split_list(o.memory_measure);
  std::vector<size_t> todo, slots;
  for (size_t i = 0; i < m.rows.size(); ++i)
    if (m.rows[i].status == "ok" && std::find(measure.begin(), measure.end(),
                                              m.rows[i].model) != measure.end())
      todo.push_back(i);
  std::vector<Child> running;
  size_t next = 0;
  const size_t jobs = std::max<size_t>(1, job_count(o));
  while (next < todo.size() || !running.empty()) {
    while (next < todo.size() && running.size() < jobs && !stop_requested(o)) {
      const MemoryRow& r = m.rows[todo[next]];
      detail::MemoryMethod method{r.method, {}};
      for (const auto& mm : detail::memory_methods(r.model))
        if (mm.name == r.method) method = mm;
      if (!o.isolate) {
        ChildOutcome oc;
        try {
          oc.result = detail::measure_memory(r.model, method, o);
        } catch (const std::exception& e) {
          oc.error = one_line(e.what());
        }
        take_measurement(m.rows[todo[next++]], oc);
        continue;
      }
      MethodInfo info;
      info.suite = "memory";
      info.name = info.label = r.model + " " + r.method;
      const std::string model = r.model;
      running.push_back(
          start_child(info, [model, method, o](const CompareCallbacks&) {
            return detail::measure_memory(model, method, o);
          }));
      slots.push_back(todo[next++]);
    }
    if (running.empty()) break;
    std::vector<size_t> done = poll_children(running, o, cb);
    std::sort(done.rbegin(), done.rend());
    for (size_t d : done) {
      const ChildOutcome oc = finish_child(running[d], o);
      MemoryRow& r = m.rows[slots[d]];
      take_measurement(r, oc);
      if (cb.on_note)
        cb.on_note("memory: LLaMA " + r.model + " " + r.method + ": planned " +
                   format_bytes(r.peak) + ", measured " +
                   (r.measured == "ok" ? format_bytes(r.measured_peak)
                                       : r.measured + " " + r.measured_reason));
      running.erase(running.begin() + static_cast<long>(d));
      slots.erase(slots.begin() + static_cast<long>(d));
    }
  }
}

// The memory suite: plan every size x method, measure the small sizes.
MemorySuite run_memory_suite(const CompareOptions& o,
                             const CompareCallbacks& cb) {
  MemorySuite m;
  m.dtype = o.memory_dtype;
  m.batch_size = o.memory_batch;
  m.seq_len = o.memory_seq;
  m.measured_steps = o.memory_steps;
  for (const auto& b : split_list(o.memory_budgets))
    m.budgets.push_back(train::parse_bytes(b));
  if (cb.on_note)
    cb.on_note(
        "memory: planning LLaMA " + o.memory_models + " x " +
        (o.memory_methods.empty()
             ? std::to_string(detail::memory_methods("60m").size()) + " methods"
             : o.memory_methods) +
        "; measuring " + o.memory_measure);
  const std::string err = plan_memory_rows(m, o, cb);
  if (!err.empty()) {
    m.status = err == "interrupted" ? "interrupted" : "failed";
    m.reason = err;
    return m;
  }
  measure_memory_rows(m, o, cb);
  m.status = stop_requested(o) ? "interrupted" : "ok";
  return m;
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
  const bool memory = std::find(options.suites.begin(), options.suites.end(),
                                "memory") != options.suites.end();
  for (const auto& s : options.suites)
    if (s != "memory") detail::suite(s);  // validates names
  validate_overrides(options.overrides);  // ConfigError before any work
  check_device(options);                  // idem
  if (memory) validate_memory(options);   // idem
  CompareResults res = start_results(options);
  CompareCallbacks callbacks = user_callbacks;
  callbacks.on_note = [&](const std::string& n) {
    res.notes.push_back(n);
    if (user_callbacks.on_note) user_callbacks.on_note(n);
  };
  const std::vector<MethodInfo> plan = plan_methods(options);
  std::filesystem::create_directories(options.out_dir);
  if (memory) {
    res.memory = run_memory_suite(options, callbacks);
    if (res.memory.status == "interrupted") res.interrupted = true;
    res.wall_s = seconds_since(t0);
    write_outputs(res, options);
  } else {
    res.memory.reason = "not selected (--suite memory)";
  }
  Runner runner(options, callbacks, plan, res, t0);
  // Base models first (one child each), then every seed of every method.
  std::map<std::string, std::string> base_error;
  for (size_t i = 0; i < plan.size(); ++i) {
    const MethodInfo& info = plan[i];
    const detail::Suite& s = detail::suite(info.suite);
    if (!info.unavailable.empty()) {
      runner.set_final(i, not_run(info, "skipped", info.unavailable));
      continue;
    }
    if (stop_requested(options)) {
      res.interrupted = true;
      runner.set_final(
          i, not_run(info, "interrupted", "not started (interrupted)"));
      continue;
    }
    if (s.base_path && !base_error.count(info.suite))
      base_error[info.suite] = ensure_base(info, s, options, callbacks);
    const std::string err = s.base_path ? base_error[info.suite] : "";
    if (err == "interrupted")
      runner.set_final(i, not_run(info, "interrupted",
                                  "interrupted while training the base model"));
    else if (!err.empty())
      runner.set_final(i, not_run(info, "failed", err));
    else
      runner.queue(i);
  }
  runner.run();
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
