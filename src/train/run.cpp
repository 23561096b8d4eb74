#include "lowmem/train/run.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <iomanip>
#include <optional>
#include <regex>
#include <set>
#include <sstream>

#include "components.h"
#include "lowmem/adapters/adapter_file.h"
#include "lowmem/adapters/inject.h"
#include "lowmem/core/check.h"
#include "lowmem/core/input.h"
#include "lowmem/core/memory.h"
#include "lowmem/core/profile.h"
#include "lowmem/core/threads.h"
#include "lowmem/dist/communicator.h"
#include "lowmem/dist/consistency.h"
#include "lowmem/dist/grad_sync.h"
#include "lowmem/dist/shard.h"
#include "lowmem/dist/zero.h"
#include "lowmem/io/atomic_file.h"
#include "lowmem/io/checkpoint.h"
#include "lowmem/io/safetensors.h"
#include "lowmem/models/gpt.h"
#include "lowmem/models/layers.h"
#include "lowmem/models/llama.h"
#include "lowmem/nn/nf4.h"
#include "lowmem/optim/extras.h"
#include "lowmem/train/data_parallel.h"
#include "lowmem/train/device.h"
#include "lowmem/train/metrics.h"

namespace fs = std::filesystem;

namespace lowmem::train {
namespace {

std::vector<std::pair<std::string, at::Tensor>> named_parameters(
    torch::nn::Module& m) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& item : m.named_parameters(/*recurse=*/true)) {
    out.emplace_back(item.key(), item.value());
  }
  return out;
}

TrainerOptions trainer_options(const Config& c) {
  TrainerOptions o;
  o.max_steps = c.steps;
  o.accum_steps = c.accum_steps;
  o.clip_norm = c.clip_norm;
  o.warmup_steps = c.warmup_steps;
  o.min_lr_ratio = c.min_lr_ratio;
  o.eval_every = c.eval_every;
  o.eval_batches = c.eval_batches;
  o.max_consecutive_skips = c.max_skips;
  o.log_every = c.log_every;
  o.save_every = c.save_every;
  o.keep_checkpoints = c.keep_checkpoints;
  if (!c.out_dir.empty()) {
    o.checkpoint_dir = c.out_dir + "/checkpoints";
  }
  return o;
}

/// Intra-op threads: `threads`, else OMP_NUM_THREADS if it is a positive
/// integer (torch's own default), else 0 (all cores).
int thread_count(int64_t threads) {
  if (threads > 0) {
    return static_cast<int>(threads);
  }
  if (const char* omp = std::getenv("OMP_NUM_THREADS")) {
    char* end = nullptr;
    const long n = std::strtol(omp, &end, 10);
    if (end != omp && *end == '\0' && n > 0) {
      return static_cast<int>(n);
    }
  }
  return 0;
}

}  // namespace

std::unique_ptr<Session> build_session(const Config& config) {
  config.validate();
  auto s = std::make_unique<Session>();
  // optim_bits written into the optimizer sections: what the run uses, what
  // it prints and what its checkpoints record.
  s->config = config.with_optim_bits();
  const Config& c = s->config;
  s->device = resolve_device(c.device);
  set_default_threads(thread_count(c.threads));
  // Deterministic: model initialisation and dropout draw from the global
  // generator seeded here; data sources have their own seeded streams.
  at::manual_seed(static_cast<uint64_t>(c.seed));

  auto data = detail::build_data(c);
  s->train_data = data.train;
  s->eval_data = data.eval;
  s->unit = data.unit;
  s->data_summary = data.summary;
  s->baseline_loss = data.baseline;
  // Built (and initialised, same seed) on the CPU, then moved: every device
  // starts from the same weights.
  s->model = detail::build_model(c, data);
  if (!c.init.empty()) {
    load_weights(*s->model, c.init, c.init_exclude);
  }
  s->model->to(s->device);
  MethodSetup setup = setup_method(c, s->model, s->device);
  s->adapter = setup.adapter;
  s->routes = setup.routes;
  std::vector<OptimizerSlot> slots = std::move(setup.optimizers);
  auto model = s->model;
  const c10::Device device = s->device;
  s->trainer = std::make_unique<Trainer>(
      s->model,
      [model, device](const data::Batch& b) {
        if (b.segments.defined()) {  // packed rows (data/jsonl.h)
          const models::PackedLayout layout{b.segments.to(device),
                                            b.positions.to(device)};
          return model->loss(b.input.to(device), b.target.to(device), layout);
        }
        return model->loss(b.input.to(device), b.target.to(device));
      },
      std::move(slots), trainer_options(c));
  s->trainer->set_checkpoint_info(c.to_yaml());
  return s;
}

std::shared_ptr<models::Model> build_model(const Config& config) {
  config.validate();
  at::manual_seed(static_cast<uint64_t>(config.seed));
  return detail::build_model(config, detail::data_shape(config));
}

MethodSetup setup_method(const Config& config,
                         const std::shared_ptr<torch::nn::Module>& model,
                         c10::Device device) {
  const Config c = config.with_optim_bits();
  MethodSetup setup;
  const auto applied = detail::apply_method(c, model);
  model->to(device);  // adapter parameters made by the method
  setup.adapter = applied.adapter;
  setup.projected_adapters =
      static_cast<int64_t>(applied.projected.layers.size());
  setup.routes = route_parameters(named_parameters(*model),
                                  detail::routing_rules(c, *model, applied));
  LOWMEM_CHECK(!setup.routes.empty(),
               "[run] the model has no trainable parameters");
  auto add_section = [&setup](const std::string& s) {
    if (!s.empty() && std::find(setup.sections.begin(), setup.sections.end(),
                                s) == setup.sections.end()) {
      setup.sections.push_back(s);
    }
  };
  add_section(detail::section_of("method", c.method));
  for (const auto& r : setup.routes) {
    const bool main = r.target == detail::main_target(c);
    const std::string name = main ? c.optimizer : c.aux_optimizer;
    setup.optimizers.push_back(OptimizerSlot{
        r.target, detail::build_optimizer(c, name, main, r, *model, applied),
        r.names});
    add_section(detail::section_of("optimizer", name));
  }
  return setup;
}

void check_data_parallel(const Config& c, int world_size) {
  const std::string w = std::to_string(world_size);
  if (!parse_device(c.device).is_cpu()) {
    throw ConfigError("device " + c.device + " is not data-parallel yet: the "
                      "workers all-reduce over Gloo on the CPU (NCCL is not "
                      "in this build); train on one device, or use device "
                      "cpu");
  }
  if (c.batch_size % world_size != 0) {
    throw ConfigError("batch_size " + std::to_string(c.batch_size) +
                      " is the global batch and must be divisible by the " +
                      w + " data-parallel workers");
  }
}

namespace {

// What lowmem writes into out_dir (README's "Output folder").
constexpr const char* kRunFiles[] = {"checkpoints", "metrics.jsonl", "adapter",
                                     "config.yaml"};

/// A fresh run (no resume) may not mix with another run's files: out_dir must
/// be absent or empty unless `overwrite` is set. Checked before anything is
/// built or written. ConfigError (usage).
void check_out_dir(const Config& c) {
  if (c.out_dir.empty() || !c.resume.empty() || c.overwrite) {
    return;
  }
  std::error_code ec;
  if (!fs::is_directory(c.out_dir, ec) ||
      fs::directory_iterator(c.out_dir, ec) == fs::directory_iterator()) {
    return;
  }
  std::string held;
  for (const char* f : kRunFiles) {
    if (fs::exists(fs::path(c.out_dir) / f, ec)) {
      held += (held.empty() ? "" : ", ") + std::string(f);
    }
  }
  throw ConfigError(
      "out_dir " + quote(c.out_dir) + " is not empty" +
      (held.empty() ? "" : " (it holds " + held + " of another run)") +
      ": a new run there would mix with it; pass --overwrite to replace that "
      "run, --resume auto to continue it, or another out_dir");
}

/// Moves `path` to a hidden trash name in its folder, then deletes it: a
/// crash leaves either the whole old entry or a .trash-* one (removed by the
/// next clean-up), never a half-deleted one under its own name.
void retire(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    return;
  }
  const fs::path trash =
      path.parent_path() /
      (".trash-" + path.filename().string() + "-" + std::to_string(::getpid()));
  fs::remove_all(trash, ec);
  fs::rename(path, trash, ec);
  LOWMEM_CHECK(!ec, "[run] cannot retire ", quote(path.string()), ": ",
               ec.message());
  fs::remove_all(trash, ec);
}

/// Creates out_dir once the run has started successfully (built, resumed);
/// with `overwrite`, retires the old run's files first; writes config.yaml.
void prepare_out_dir(const Config& c) {
  if (c.out_dir.empty()) {
    return;
  }
  std::error_code ec;
  fs::create_directories(c.out_dir, ec);
  LOWMEM_CHECK(!ec, "[run] cannot create out_dir ", quote(c.out_dir), ": ",
               ec.message());
  if (c.overwrite) {
    for (const char* f : kRunFiles) {
      retire(fs::path(c.out_dir) / f);
    }
    // What an earlier retirement left when it was killed.
    for (const auto& e : fs::directory_iterator(c.out_dir, ec)) {
      if (e.path().filename().string().rfind(".trash-", 0) == 0) {
        fs::remove_all(e.path(), ec);
      }
    }
  }
  io::atomic_write_file(c.out_dir + "/config.yaml", c.to_yaml());
}

/// Joins the data-parallel job described by the environment (if any): the
/// communicator, this rank's shard, gradient sync, rank-0 saves, and a check
/// that every rank starts from the same weights.
std::shared_ptr<dist::Communicator> join_job(const dist::DistEnv& env,
                                             Session& session) {
  if (!env.distributed()) {
    return nullptr;
  }
  Trainer& trainer = *session.trainer;
  auto comm = dist::Communicator::init(
      env, dist::InitOptions().timeout_s(session.config.dist_timeout_s));
  session.rank = comm->rank();
  session.world_size = comm->world_size();
  session.train_data = std::make_shared<dist::ShardedSource>(
      session.train_data, comm->rank(), comm->world_size());
  // Gradient sync, ZeRO's hooks and the (rank 0 or sharded) checkpoint
  // writes.
  attach_data_parallel(trainer, comm, detail::zero_stage(session.config),
                       dist::ZeroOptions().bucket_cap_mb(),
                       detail::zero_overlap(session.config));
  // Same seed, same initialisation: checked, not assumed.
  dist::check_identical(*comm, trainer.parameters(), "initial weights");
  return comm;
}

/// The trainer's progress callback: global figures across ranks, the
/// periodic consistency check, then (on rank 0) metrics and `progress`.
ProgressFn progress_reporter(const std::shared_ptr<dist::Communicator>& comm,
                             const Config& config, Trainer& trainer, bool main,
                             JsonlWriter* metrics, RunResult& result,
                             ProgressFn progress) {
  const bool sharded = detail::zero_stage(config) > 0;
  return [comm, &trainer, main, metrics, &result, progress,
          sharded](const Progress& event) {
    Progress p = event;
    if (comm) {
      using K = Progress::Kind;
      if (p.kind == K::kStep || p.kind == K::kSkip) {
        // Each rank's loss is the mean over its rows; the global batch's
        // loss is their mean (equal shards).
        auto loss = at::full({1}, p.loss, at::kDouble);
        comm->allreduce_mean({loss});
        p.loss = loss.item<double>();
        p.items *= comm->world_size();
        p.items_per_second *= comm->world_size();
      } else if (p.kind == K::kEval) {
        // The periodic checksum: identical weights and (replicated runs)
        // optimizer states; ZeRO's states differ by design.
        dist::check_identical(*comm, trainer.parameters(), nullptr);
        for (const auto& slot : trainer.optimizers()) {
          if (sharded) break;
          dist::check_identical(*comm, optim::state_tensors(*slot.optimizer),
                                "optimizer state of " + slot.name,
                                /*ordered=*/false);
        }
      }
    }
    if (!main) {
      return;
    }
    if (metrics != nullptr) {
      metrics->write(p);
    }
    if (p.kind == Progress::Kind::kCheckpoint) {
      result.checkpoint = p.path;
    }
    if (progress) {
      progress(p);
    }
  };
}

}  // namespace

RunResult run(const Config& config, ProgressFn progress,
              const std::function<void(Session&)>& on_ready) {
  MemoryTracker::install();
  const dist::DistEnv env = dist::env_from_environment();
  config.validate();
  if (env.distributed()) {
    check_data_parallel(config, env.world_size);
  }
  check_out_dir(config);
  auto session = build_session(config);
  const Config& c = session->config;
  Trainer& trainer = *session->trainer;
  std::shared_ptr<dist::Communicator> comm = join_job(env, *session);
  // On rank 0, or on every rank when there is no job.
  auto on_main = [&](const std::function<void()>& fn, const std::string& what) {
    if (comm) {
      dist::run_on_main(*comm, fn, what);
    } else {
      fn();
    }
  };
  RunResult result;
  result.baseline_loss = session->baseline_loss;
  result.rank = session->rank;
  result.world_size = session->world_size;
  // Resume before anything in out_dir changes: a failing resume leaves the
  // folder describing the checkpoints it holds.
  if (!c.resume.empty()) {
    const std::string where =
        c.resume == "auto" ? c.out_dir + "/checkpoints" : c.resume;
    if (c.resume != "auto" || io::has_checkpoint(where)) {
      trainer.load_checkpoint(where, *session->train_data);
      result.resumed_from = trainer.steps_done();
    }
  }
  if (on_ready) {
    on_ready(*session);
  }
  std::string metrics_path = c.metrics;
  if (!c.out_dir.empty() && metrics_path.empty()) {
    metrics_path = c.out_dir + "/metrics.jsonl";
  }
  std::unique_ptr<JsonlWriter> metrics;
  on_main(
      [&] {
        prepare_out_dir(c);
        if (!metrics_path.empty()) {
          metrics = std::make_unique<JsonlWriter>(metrics_path);
        }
      },
      "create out_dir and the metrics file");
  trainer.set_progress(progress_reporter(comm, c, trainer, session->rank == 0,
                                         metrics.get(), result, progress));
  const auto t0 = std::chrono::steady_clock::now();
  result.eval_loss = trainer.fit(*session->train_data, session->eval_data.get());
  result.seconds = std::chrono::duration<double>(
                       std::chrono::steady_clock::now() - t0)
                       .count();
  result.steps = trainer.steps_done();
  result.skipped = trainer.skipped_total();
  if (session->adapter && !c.out_dir.empty()) {
    on_main(
        [&] {
          result.adapter_dir = c.out_dir + "/adapter";
          adapters::save_adapter(*session->adapter, result.adapter_dir);
        },
        "save the adapter");
  }
  result.peak_bytes = tensor_memory(session->device).peak;
  for (const auto& slot : trainer.optimizers()) {
    result.optimizer_state_bytes += optim::state_bytes(*slot.optimizer);
  }
  return result;
}

void load_weights(torch::nn::Module& model, const std::string& path,
                  const std::string& exclude) {
  std::string file = path;
  if (fs::is_directory(path)) {
    file = io::resolve_checkpoint(path) + "/weights.safetensors";
  }
  std::regex skip;
  try {
    skip = std::regex(exclude.empty() ? "$^" : exclude);
  } catch (const std::regex_error& e) {
    throw ConfigError("init_exclude: bad regex '" + exclude + "'");
  }
  auto excluded = [&](const std::string& n) {
    return !exclude.empty() && std::regex_search(n, skip);
  };
  auto loaded = io::load_safetensors(file);
  std::vector<std::pair<at::Tensor, at::Tensor>> copies;
  std::set<std::string> used;
  auto take = [&](const std::string& name, const at::Tensor& t) {
    if (excluded(name)) {
      return;
    }
    auto it = loaded.tensors.find(name);
    LOWMEM_CHECK(it != loaded.tensors.end(), "[init] ", file,
                 " has no tensor '", name, "' (exclude it with init_exclude)");
    LOWMEM_CHECK(it->second.sizes() == t.sizes(), "[init] ", file,
                 ": tensor '", name, "' has shape ", it->second.sizes(),
                 ", the model has ", t.sizes(),
                 " (exclude it with init_exclude)");
    copies.emplace_back(t, it->second);
    used.insert(name);
  };
  for (const auto& item : model.named_parameters(true)) {
    take(item.key(), item.value());
  }
  for (const auto& item : model.named_buffers(true)) {
    take(item.key(), item.value());
  }
  for (const auto& [name, t] : loaded.tensors) {
    LOWMEM_CHECK(used.count(name) != 0 || excluded(name), "[init] ", file,
                 ": tensor '", name, "' is not in the model");
  }
  at::NoGradGuard no_grad;
  for (auto& [dst, src] : copies) {
    dst.copy_(src);
  }
}

namespace {

// The configuration of `lowmem merge`'s base (method full, on the CPU) and
// the weights to load over the model it builds ("" for none): a Hugging Face
// directory (config.json, no checkpoint) is model hf with hf.path = base; a
// checkpoint brings its run's info.txt. A checkpoint of an adapter run is
// refused: it is not the model its adapter was trained on top of.
std::pair<Config, std::string> merge_base(const std::string& base) {
  Config c;
  std::string weights;
  if (!io::has_checkpoint(base) && fs::is_directory(base) &&
      fs::is_regular_file(base + "/config.json")) {
    c.model = "hf";
    c.set("hf.path", fs::absolute(base).lexically_normal().string());
  } else {
    weights = io::resolve_checkpoint(base);
    const std::string info_path = weights + "/info.txt";
    c.apply_yaml(
        read_file_limited(info_path, kMaxRecipeBytes, "[merge] run info"),
        info_path);
    if (c.method != "full" && c.method != "galore") {
      throw ConfigError("--base " + quote(base) + " is a checkpoint of a " +
                        c.method +
                        " run, not a base model: pass the model its adapter "
                        "was trained on (for --model hf the hf.path "
                        "directory), or export the run merged with lowmem "
                        "export RUN --format hf");
    }
  }
  c.method = "full";
  c.device = "cpu";  // merging needs no GPU, whatever the run trained on
  c.init = weights;
  c.init_exclude = "";
  c.out_dir = "";
  c.resume = "";
  c.overwrite = false;
  c.metrics = "";
  return {c, weights};
}

}  // namespace

int64_t merge_adapter(const std::string& base, const std::string& adapter_dir,
                      const std::string& out_dir) {
  auto [c, weights] = merge_base(base);
  // The model alone (its shape from the configuration): the training data
  // need not exist any more.
  std::shared_ptr<models::Model> model = build_model(c);
  if (!weights.empty()) load_weights(*model, weights, "");
  auto adapter = adapters::load_adapter(model, adapter_dir);
  adapter->merge_and_unload();
  std::map<std::string, at::Tensor> tensors;
  for (const auto& item : model->named_parameters(true)) {
    tensors.emplace(item.key(), item.value().detach());
  }
  for (const auto& item : model->named_buffers(true)) {
    tensors.emplace(item.key(), item.value().detach());
  }
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  LOWMEM_CHECK(!ec, "[merge] cannot create '", out_dir, "': ", ec.message());
  io::save_safetensors(out_dir + "/model.safetensors", tensors,
                       {{"format", "pt"}});
  io::atomic_write_file(out_dir + "/config.yaml", c.to_yaml());
  return static_cast<int64_t>(tensors.size());
}

namespace {

// GFLOP/s of c = a b for n x n matrices of `dtype` on `device`, the best of
// a few timed repetitions after a warm-up (about a second in all on CPU).
double gemm_gflops(at::ScalarType dtype, c10::Device device, int64_t n = 2048) {
  const auto opts = at::TensorOptions().dtype(dtype).device(device);
  at::Tensor a = at::randn({n, n}, opts), b = at::randn({n, n}, opts);
  at::Tensor c = at::empty({n, n}, opts);
  using Clock = std::chrono::steady_clock;
  auto sync = [&] { (void)c.sum().item<double>(); };
  at::mm_out(c, a, b);
  sync();
  double best = 0.0;
  const auto t_end = Clock::now() + std::chrono::milliseconds(800);
  for (int rep = 0; rep < 3 || (rep < 50 && Clock::now() < t_end); ++rep) {
    const auto t0 = Clock::now();
    at::mm_out(c, a, b);
    sync();
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (s > 0.0) best = std::max(best, 2.0 * n * n * n / s * 1e-9);
  }
  return best;
}

// FLOPs of the step: tokens x the model's training FLOPs per token (LLaMA
// and GPT count theirs; other models leave 0).
void count_step_flops(Session& session, const Config& config,
                      const StepResult& step, InfoReport& r) {
  if (session.unit != "tokens" || step.items <= 0) return;
  // Text batches are batch_size rows of one sequence length.
  const int64_t rows =
      std::max<int64_t>(1, config.batch_size * config.accum_steps);
  const int64_t seq_len = std::max<int64_t>(1, step.items / rows);
  double per_token = 0.0;
  bool checkpointing = false;
  if (auto* l = dynamic_cast<models::Llama*>(session.model.get())) {
    per_token = l->flops_per_token(seq_len);
    checkpointing = l->config().activation_checkpointing();
  } else if (auto* g = dynamic_cast<models::GPT*>(session.model.get())) {
    per_token = g->flops_per_token(seq_len);
    checkpointing = g->config().activation_checkpointing();
  }
  r.model_flops = per_token * static_cast<double>(step.items);
  r.step_flops = r.model_flops * (checkpointing ? 4.0 / 3.0 : 1.0);
}

}  // namespace

InfoReport info(const Config& config, bool measure_gemm) {
  MemoryTracker::install();
  using Clock = std::chrono::steady_clock;
  auto seconds_since = [](Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
  };
  // std::clock: the process's CPU time, all threads (POSIX, glibc).
  auto cpu_since = [](std::clock_t c0) {
    return static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
  };
  const auto build_t0 = Clock::now();
  const std::clock_t build_c0 = std::clock();
  auto session = build_session(config);
  InfoReport r;
  r.build_seconds = seconds_since(build_t0);
  r.build_cpu_seconds = cpu_since(build_c0);
  r.data_summary = session->data_summary;
  r.baseline_loss = session->baseline_loss;
  for (const auto& p : session->model->parameters(/*recurse=*/true)) {
    r.total_params += p.numel();
    if (p.requires_grad()) {
      r.trainable_params += p.numel();
      r.trainable_bytes += p.numel() * static_cast<int64_t>(p.element_size());
    } else {
      r.frozen_bytes += p.numel() * static_cast<int64_t>(p.element_size());
    }
  }
  for (const auto& m : session->model->modules(/*include_self=*/false)) {
    if (const auto* q = dynamic_cast<const nn::Nf4Linear*>(m.get())) {
      r.nf4_params += q->weight().numel();
      r.nf4_bytes += q->weight().nbytes();
    }
  }
  r.total_params += r.nf4_params;
  r.frozen_bytes += r.nf4_bytes;
  Trainer& t = *session->trainer;
  const c10::Device device = session->device;
  // MemoryTracker reads the CPU allocator or the CUDA caching allocator
  // (CUDA builds); other devices are not measured.
  std::optional<MemoryTracker> tracker;
  std::optional<MemoryScope> scope;
#if defined(LOWMEM_WITH_CUDA)
  const bool measured = device.is_cpu() || device.is_cuda();
#else
  const bool measured = device.is_cpu();
#endif
  if (measured) {
    tracker.emplace(device);
    scope.emplace(tracker->scope());
    r.live_before_step_bytes = scope->start_bytes();
  }
  // One trainer step, measured by its probe: the gradients once backward is
  // done, each optimizer's state once it has stepped.
  t.set_step_probe([&](ProbePoint p) {
    if (p == ProbePoint::kAfterBackward) {
      r.gradient_bytes = memory_breakdown(*session->model, {}).gradients;
      return;
    }
    for (const auto& s : t.optimizers()) {
      const int64_t b = optim::state_bytes(*s.optimizer);
      r.optimizer_bytes.emplace_back(s.name, b);
      r.optimizer_state_bytes += b;
    }
  });
  const bool was_profiling = profile::enabled();
  profile::reset();
  profile::set_enabled(true);
  const auto step_t0 = Clock::now();
  const std::clock_t step_c0 = std::clock();
  const StepResult step = t.step(*session->train_data);
  r.step_loss = step.loss;
  r.step_seconds = seconds_since(step_t0);
  r.step_cpu_seconds = cpu_since(step_c0);
  profile::set_enabled(was_profiling);
  const profile::Totals phases = profile::totals();
  for (int i = 0; i < profile::kPhaseCount; ++i)
    r.phase_seconds.emplace_back(
        profile::phase_name(static_cast<profile::Phase>(i)), phases.seconds[i]);
  t.set_step_probe({});
  count_step_flops(*session, config, step, r);
  r.peak_step_bytes = scope ? scope->peak_delta() : 0;
  r.peak_rss_bytes = MemoryTracker::peak_rss_bytes();
  for (const auto& route : session->routes) {
    int64_t n = 0;
    for (const auto& p : route.params) {
      n += p.numel();
    }
    r.route_params.emplace_back(route.target, n);
  }
  if (measure_gemm) {
    r.gemm_fp32_gflops = gemm_gflops(at::kFloat, device);
    r.gemm_bf16_gflops = gemm_gflops(at::kBFloat16, device);
  }
  return r;
}

namespace {

// The GEMM-rate lines of InfoReport::to_string (info with measure_gemm). A
// CPU without a native bf16 GEMM (oneDNN's AVX512-BF16 / AMX paths; e.g. an
// AVX2-only Zen 3 ran a 2048^3 bf16 GEMM at 5 GFLOP/s against 162 in fp32)
// gets a note: there bf16 weights save memory but cost time.
void write_gemm_rate(const InfoReport& r, std::ostream& o) {
  if (r.gemm_fp32_gflops <= 0.0) return;
  o << "GEMM rate:        " << r.gemm_fp32_gflops << " GFLOP/s float32, "
    << r.gemm_bf16_gflops << " GFLOP/s bfloat16 (2048^3, this process)";
  if (r.step_flops > 0.0) {
    const double bound =
        r.step_flops / (std::max(r.gemm_fp32_gflops, r.gemm_bf16_gflops) * 1e9);
    o << "; the step's FLOPs at the faster rate take " << bound
      << " s, the step took " << r.step_seconds / bound << "x that";
  }
  o << "\n";
  if (r.gemm_bf16_gflops > 0.0 && r.gemm_bf16_gflops < r.gemm_fp32_gflops) {
    o << "note:             this CPU multiplies bfloat16 "
      << r.gemm_fp32_gflops / r.gemm_bf16_gflops
      << "x slower than float32 (no native bf16 GEMM): bfloat16 weights "
         "halve their memory here but slow the step; float32 weights "
         "compute faster\n";
  }
}

}  // namespace

std::string InfoReport::to_string() const {
  std::ostringstream o;
  o << "parameters:       " << total_params << " total, " << trainable_params
    << " trainable\n";
  o << "frozen weights:   " << format_bytes(frozen_bytes);
  if (nf4_params > 0) {
    o << " (NF4: " << format_bytes(nf4_bytes) << " for " << nf4_params
      << " weights)";
  }
  o << "\n";
  o << "trainable params: " << format_bytes(trainable_bytes) << "\n";
  o << "gradients:        " << format_bytes(gradient_bytes) << "\n";
  o << "optimizer state:  " << format_bytes(optimizer_state_bytes) << "\n";
  for (size_t i = 0; i < optimizer_bytes.size(); ++i) {
    o << "  " << optimizer_bytes[i].first << ": "
      << format_bytes(optimizer_bytes[i].second) << " for "
      << (i < route_params.size() ? route_params[i].second : 0)
      << " parameters\n";
  }
  o << "peak of one step: " << format_bytes(peak_step_bytes)
    << " above the weights (activations, gradients, new state)\n";
  o << "tracked peak:     "
    << format_bytes(live_before_step_bytes + peak_step_bytes) << " ("
    << format_bytes(live_before_step_bytes)
    << " live before the step + the step's peak); peak RSS "
    << format_bytes(peak_rss_bytes) << "\n";
  o << "step:             loss " << step_loss << ", " << std::fixed
    << std::setprecision(1) << step_seconds << " s wall, " << step_cpu_seconds
    << " s CPU (build " << build_seconds << " s wall, " << build_cpu_seconds
    << " s CPU)\n";
  double named = 0.0;
  for (const auto& [phase, secs] : phase_seconds) named += secs;
  if (!phase_seconds.empty() && step_seconds > 0.0) {
    // Three significant digits: seconds of a 7B step, milliseconds of a
    // small one.
    o.unsetf(std::ios_base::floatfield);
    o << std::setprecision(3);
    o << "step phases:     ";
    for (const auto& [phase, secs] : phase_seconds) {
      if (secs <= 0.0) continue;
      o << " " << phase << " " << secs << " s;";
    }
    o << " other " << std::max(0.0, step_seconds - named) << " s\n";
  }
  if (model_flops > 0.0 && step_seconds > 0.0) {
    o << "step FLOPs:       " << std::setprecision(3) << std::scientific
      << model_flops << " (6N + attention), " << step_flops
      << " with the recomputed forward; " << std::fixed << std::setprecision(1)
      << step_flops / step_seconds * 1e-9 << " GFLOP/s wall, "
      << (step_cpu_seconds > 0.0 ? step_flops / step_cpu_seconds * 1e-9 : 0.0)
      << " GFLOP per CPU second\n";
  }
  write_gemm_rate(*this, o);
  o.unsetf(std::ios_base::floatfield);
  o << std::setprecision(6);
  o << "data:             " << data_summary << "\n";
  o << "baseline loss:    " << baseline_loss
    << " (input-independent predictor)\n";
  return o.str();
}

}  // namespace lowmem::train
