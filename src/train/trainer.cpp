#include "lowmem/train/trainer.h"

#include <ATen/ATen.h>
#include <torch/cuda.h>
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <optional>

#include "lowmem/core/check.h"
#include "lowmem/core/memory.h"
#include "lowmem/core/profile.h"
#include "lowmem/io/checkpoint.h"
#include "lowmem/nn/nf4.h"
#include "lowmem/optim/extras.h"

namespace lowmem::train {
namespace {

double nan() {
  return std::numeric_limits<double>::quiet_NaN();
}

int64_t count_items(const data::Batch& b) {
  return b.target.defined() ? b.target.numel() : b.input.size(0);
}

}  // namespace

void validate(const TrainerOptions& o) {
  LOWMEM_CHECK(o.max_steps >= 1, "[trainer] steps must be >= 1, got ",
               o.max_steps);
  LOWMEM_CHECK(o.accum_steps >= 1, "[trainer] accum_steps must be >= 1, got ",
               o.accum_steps);
  LOWMEM_CHECK(std::isfinite(o.clip_norm),
               "[trainer] clip_norm must be finite, got ", o.clip_norm);
  LOWMEM_CHECK(o.eval_every >= 0, "[trainer] eval_every must be >= 0, got ",
               o.eval_every);
  LOWMEM_CHECK(o.eval_batches >= 1,
               "[trainer] eval_batches must be >= 1, got ", o.eval_batches);
  LOWMEM_CHECK(o.max_consecutive_skips >= 1,
               "[trainer] max_skips must be >= 1, got ",
               o.max_consecutive_skips);
  LOWMEM_CHECK(o.log_every >= 1, "[trainer] log_every must be >= 1, got ",
               o.log_every);
  LOWMEM_CHECK(o.save_every >= 0, "[trainer] save_every must be >= 0, got ",
               o.save_every);
  LOWMEM_CHECK(o.keep_checkpoints >= 0,
               "[trainer] keep_checkpoints must be >= 0, got ",
               o.keep_checkpoints);
  ScheduleOptions s;
  s.warmup_steps = o.warmup_steps;
  s.total_steps = o.max_steps;
  s.min_lr_ratio = o.min_lr_ratio;
  validate(s);
}

Trainer::Trainer(
    std::shared_ptr<torch::nn::Module> model,
    LossFn loss,
    std::vector<OptimizerSlot> optimizers,
    TrainerOptions options)
    : model_(std::move(model)),
      loss_(std::move(loss)),
      slots_(std::move(optimizers)),
      options_(std::move(options)),
      last_eval_(nan()) {
  validate(options_);
  LOWMEM_CHECK(model_ != nullptr, "[trainer] model is null");
  LOWMEM_CHECK(static_cast<bool>(loss_), "[trainer] loss function is empty");
  LOWMEM_CHECK(!slots_.empty(), "[trainer] no optimizer given");
  schedule_.warmup_steps = options_.warmup_steps;
  schedule_.total_steps = options_.max_steps;
  schedule_.min_lr_ratio = options_.min_lr_ratio;
  for (size_t i = 0; i < slots_.size(); ++i) {
    LOWMEM_CHECK(slots_[i].optimizer != nullptr,
                 "[trainer] optimizer '", slots_[i].name, "' is null");
    for (size_t j = 0; j < i; ++j) {
      LOWMEM_CHECK(slots_[j].name != slots_[i].name,
                   "[trainer] two optimizers named '", slots_[i].name, "'");
    }
    std::vector<double> lrs;
    for (auto& group : slots_[i].optimizer->param_groups()) {
      lrs.push_back(group.options().get_lr());
      for (const auto& p : group.params()) {
        params_.push_back(p);
      }
    }
    base_lrs_.push_back(std::move(lrs));
  }
  if (!params_.empty()) {
    device_ = params_.front().device();
  }
}

Trainer::~Trainer() = default;

TensorMemory tensor_memory(c10::Device device) {
  TensorMemory m;
  const bool measured =
      device.is_cpu() ? MemoryTracker::installed() : device.is_cuda();
#if !defined(LOWMEM_WITH_CUDA)
  if (!device.is_cpu()) {
    return m;  // core/memory.h reads the caching allocator in CUDA builds only
  }
#endif
  if (measured) {
    MemoryTracker tracker(device);
    m.live = tracker.current_bytes();
    m.peak = tracker.peak_bytes();
  }
  return m;
}

MemoryBreakdown memory_breakdown(torch::nn::Module& model,
                                 const std::vector<OptimizerSlot>& optimizers) {
  std::vector<at::Tensor> frozen, trainable, grads, state;
  for (const auto& p : model.parameters(/*recurse=*/true)) {
    (p.requires_grad() ? trainable : frozen).push_back(p);
    if (p.grad().defined()) {
      grads.push_back(p.grad());
    }
  }
  // An NF4 base's storage is buffers, not parameters: frozen weights too.
  for (const auto& m : model.modules(/*include_self=*/false)) {
    if (const auto* q = dynamic_cast<const nn::Nf4Linear*>(m.get())) {
      const nn::Nf4Weight& w = q->weight();
      frozen.insert(frozen.end(), {w.packed, w.absmax_q, w.absmax2, w.offset});
    }
  }
  for (const auto& slot : optimizers) {
    auto st = optim::state_tensors(*slot.optimizer);
    state.insert(state.end(), st.begin(), st.end());
  }
  MemoryBreakdown m;
  m.frozen_weights = storage_bytes(frozen);
  m.trainable_weights = storage_bytes(trainable);
  m.gradients = storage_bytes(grads);
  m.optimizer_state = storage_bytes(state);
  return m;
}

Progress Trainer::event(Progress::Kind kind) const {
  Progress p;
  p.kind = kind;
  p.step = step_;
  p.max_steps = options_.max_steps;
  p.eval_loss = last_eval_;
  p.items = items_total_;
  p.skipped = skipped_total_;
  const TensorMemory m = tensor_memory(device_);
  p.live_bytes = m.live;
  p.peak_bytes = m.peak;
  return p;
}

void Trainer::emit(const Progress& p) const {
  if (progress_) {
    progress_(p);
  }
}

void Trainer::apply_schedule() {
  const double factor = lr_factor(schedule_, step_);
  for (size_t i = 0; i < slots_.size(); ++i) {
    auto& groups = slots_[i].optimizer->param_groups();
    for (size_t g = 0; g < groups.size() && g < base_lrs_[i].size(); ++g) {
      // A group without an external lr (Adafactor's relative step) keeps
      // its own step-size rule.
      if (base_lrs_[i][g] != 0.0) {
        groups[g].options().set_lr(base_lrs_[i][g] * factor);
      }
    }
  }
}

namespace {

void drop_grads(std::vector<at::Tensor>& params) {
  for (auto& p : params) {
    p.mutable_grad() = at::Tensor();
  }
}

// Global L2 norm, as torch.nn.utils.clip_grad_norm_ (per-tensor norms, then
// the norm of the norms), accumulated in fp32 at least. A sharded run's
// NormSync turns this rank's per-tensor norms into all of them first.
double global_norm(const std::vector<at::Tensor>& grads,
                   const NormSync& norm_sync) {
  std::vector<at::Tensor> norms;
  norms.reserve(grads.size());
  for (const auto& g : grads) {
    norms.push_back(
        at::linalg_vector_norm(g, 2, c10::nullopt, false,
                               at::promote_types(g.scalar_type(), at::kFloat)));
  }
  if (norm_sync) {
    norms = norm_sync(norms);
  }
  if (norms.empty()) {
    return 0.0;
  }
  return at::linalg_vector_norm(at::stack(norms), 2).item<double>();
}

}  // namespace

StepResult Trainer::accumulate(data::BatchSource& source) {
  StepResult r;
  double loss_sum = 0.0;
  const double inv_accum = 1.0 / static_cast<double>(options_.accum_steps);
  for (int64_t micro = 0; micro < options_.accum_steps; ++micro) {
    for (auto& s : slots_) {
      optim::before_forward(*s.optimizer);
    }
    data::Batch batch;
    {
      profile::Scope data_scope(profile::Phase::kData);
      batch = source.next();
    }
    at::Tensor loss;
    {
      profile::Scope forward_scope(profile::Phase::kForward);
      loss = loss_(batch);
    }
    LOWMEM_CHECK(loss.defined() && loss.numel() == 1,
                 "[trainer] the loss must be a single number, got shape ",
                 loss.sizes());
    if (before_backward_) {
      before_backward_(micro + 1 == options_.accum_steps);
    }
    {
      profile::Scope backward_scope(profile::Phase::kBackward);
      (loss * inv_accum).backward();
    }
    loss_sum += loss.item<double>();
    r.items += count_items(batch);
  }
  r.loss = loss_sum * inv_accum;
  return r;
}

void Trainer::update(std::vector<at::Tensor>& grads, double total_norm) {
  if (options_.clip_norm > 0.0) {
    // clip_coef = max_norm / (total_norm + 1e-6), applied when < 1.
    const double coef = options_.clip_norm / (total_norm + 1e-6);
    if (coef < 1.0) {
      at::NoGradGuard no_grad;
      for (auto& g : grads) {
        g.mul_(coef);
      }
    }
  }
  {
    profile::Scope optimizer_scope(profile::Phase::kOptimizer);
    for (auto& s : slots_) {
      s.optimizer->step();
    }
  }
  if (after_update_) {
    after_update_();
  }
  if (probe_) {
    probe_(ProbePoint::kAfterUpdate);
  }
}

void Trainer::report(const StepResult& r, double seconds) {
  if (!progress_ || !(r.skipped || step_ % options_.log_every == 0 ||
                      step_ == options_.max_steps)) {
    return;
  }
  Progress p = event(r.skipped ? Progress::Kind::kSkip : Progress::Kind::kStep);
  p.loss = r.loss;
  p.grad_norm = r.grad_norm;
  p.lr = slots_.front().optimizer->param_groups().front().options().get_lr();
  p.items_per_second =
      seconds > 0.0 ? static_cast<double>(r.items) / seconds : 0.0;
  emit(p);
}

StepResult Trainer::step(data::BatchSource& source) {
  const auto t0 = std::chrono::steady_clock::now();
  model_->train();
  drop_grads(params_);
  StepResult r = accumulate(source);
  std::vector<at::Tensor> grads;
  grads.reserve(params_.size());
  for (auto& p : params_) {
    if (p.grad().defined()) {
      grads.push_back(p.grad());
    }
  }
  if (grad_sync_) {
    grad_sync_(grads);
  }
  if (probe_) {
    probe_(ProbePoint::kAfterBackward);
  }
  r.grad_norm = global_norm(grads, norm_sync_);
  r.skipped = !std::isfinite(r.loss) || !std::isfinite(r.grad_norm);
  apply_schedule();
  step_ += 1;
  items_total_ += r.items;
  if (r.skipped) {
    skipped_total_ += 1;
    consecutive_skips_ += 1;
  } else {
    consecutive_skips_ = 0;
    update(grads, r.grad_norm);
  }
  grads.clear();
  drop_grads(params_);
  if (device_.is_cuda()) {
    torch::cuda::synchronize(device_.index());  // the step's kernels ran
  }
  report(r, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
                .count());
  LOWMEM_CHECK(
      consecutive_skips_ < options_.max_consecutive_skips,
      "[trainer] stopping: ", consecutive_skips_,
      " consecutive updates had a non-finite loss or gradient (last loss ",
      r.loss, ", gradient norm ", r.grad_norm, ") at step ", step_,
      "; lower the learning rate or check the data");
  return r;
}

double Trainer::evaluate(data::BatchSource& source, int64_t batches) {
  LOWMEM_CHECK(batches >= 1, "[trainer] eval batches must be >= 1, got ",
               batches);
  const bool was_training = model_->is_training();
  model_->eval();
  at::NoGradGuard no_grad;
  source.seek(0);
  double sum = 0.0;
  for (int64_t i = 0; i < batches; ++i) {
    sum += loss_(source.next()).item<double>();
  }
  model_->train(was_training);
  last_eval_ = sum / static_cast<double>(batches);
  return last_eval_;
}

double Trainer::fit(data::BatchSource& train, data::BatchSource* eval) {
  auto do_eval = [&] {
    if (eval == nullptr) {
      return;
    }
    evaluate(*eval, options_.eval_batches);
    emit(event(Progress::Kind::kEval));
  };
  const bool saving = !options_.checkpoint_dir.empty();
  while (step_ < options_.max_steps) {
    step(train);
    const bool last = step_ == options_.max_steps;
    if (last || (options_.eval_every > 0 && step_ % options_.eval_every == 0)) {
      do_eval();
    }
    if (saving && (last || (options_.save_every > 0 &&
                            step_ % options_.save_every == 0))) {
      Progress p = event(Progress::Kind::kCheckpoint);
      auto write = [&] { p.path = save_checkpoint(train); };
      if (save_hook_) {
        save_hook_(write);
      } else {
        write();
      }
      emit(p);
    }
  }
  emit(event(Progress::Kind::kDone));
  return last_eval_;
}

namespace {

io::CheckpointState make_state(
    torch::nn::Module& model,
    const std::vector<OptimizerSlot>& slots) {
  io::CheckpointState s;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    s.tensors.emplace_back(item.key(), item.value());
  }
  for (const auto& item : model.named_buffers(/*recurse=*/true)) {
    s.tensors.emplace_back(item.key(), item.value());
  }
  for (const auto& slot : slots) {
    s.optimizers.emplace_back(slot.name, slot.optimizer.get());
  }
  return s;
}

}  // namespace

void Trainer::set_optimizer_shards(OptimizerShards shards) {
  LOWMEM_CHECK(shards.world_size >= 1 && shards.rank >= 0 &&
                   shards.rank < shards.world_size,
               "[trainer] optimizer shards: rank ", shards.rank,
               " is not in [0, world_size = ", shards.world_size, ")");
  LOWMEM_CHECK(shards.owners.size() == params_.size(),
               "[trainer] optimizer shards name ", shards.owners.size(),
               " owners for ", params_.size(), " parameters");
  for (const int o : shards.owners) {
    LOWMEM_CHECK(o >= 0 && o < shards.world_size, "[trainer] shard owner ", o,
                 " is not in [0, ", shards.world_size, ")");
  }
  shards_ = std::move(shards);
}

void Trainer::save_optimizer_shard() {
  LOWMEM_CHECK(optimizer_shards() != nullptr,
               "[trainer] save_optimizer_shard without optimizer shards");
  LOWMEM_CHECK(!options_.checkpoint_dir.empty(),
               "[trainer] no checkpoint directory set");
  const std::string staging =
      io::sharded_staging_dir(options_.checkpoint_dir, step_);
  for (size_t i = 0; i < slots_.size(); ++i) {
    io::save_optimizer_shard(staging, i, shards_.rank, *slots_[i].optimizer);
  }
}

std::string Trainer::save_checkpoint(const data::BatchSource& train) {
  LOWMEM_CHECK(!options_.checkpoint_dir.empty(),
               "[trainer] no checkpoint directory set");
  io::CheckpointState s = make_state(*model_, slots_);
  if (optimizer_shards() != nullptr) {
    s.shard_world_size = shards_.world_size;
    s.shard_owners.assign(shards_.owners.begin(), shards_.owners.end());
  }
  s.counters["step"] = step_;
  s.counters["data_position"] = train.position();
  s.counters["skipped_total"] = skipped_total_;
  s.counters["consecutive_skips"] = consecutive_skips_;
  s.counters["items_total"] = items_total_;
  s.info = info_;
  return io::save_checkpoint(options_.checkpoint_dir, step_, s,
                             options_.keep_checkpoints);
}

namespace {

/// The shards of a checkpoint laid out as `layout` that hold state of the
/// parameters `shards` gives this rank (unset: all of them).
std::optional<std::vector<int64_t>> shards_to_load(
    const io::CheckpointLayout& layout, const OptimizerShards* shards,
    size_t num_params) {
  if (layout.shard_world_size == 0 || shards == nullptr) {
    return std::nullopt;  // unsharded, or every shard (an unsharded run)
  }
  std::vector<int64_t> out;
  LOWMEM_CHECK(layout.shard_owners.size() == num_params, "[trainer] ",
               layout.dir, " shards the state of ", layout.shard_owners.size(),
               " parameters, the run has ", num_params);
  std::vector<bool> wanted(static_cast<size_t>(layout.shard_world_size));
  for (size_t i = 0; i < num_params; ++i) {
    if (shards->owners[i] == shards->rank) {
      wanted[static_cast<size_t>(layout.shard_owners[i])] = true;
    }
  }
  for (size_t r = 0; r < wanted.size(); ++r) {
    if (wanted[r]) out.push_back(static_cast<int64_t>(r));
  }
  // A rank that owns nothing still reads one shard, for the state every
  // rank keeps whole (SINGD/KFAC's factors, GaLore's bases in hook modes).
  if (out.empty() && layout.shard_world_size > 0) out.push_back(0);
  return out;
}

}  // namespace

void Trainer::load_checkpoint(const std::string& path,
                              data::BatchSource& train) {
  io::CheckpointState s = make_state(*model_, slots_);
  const io::CheckpointLayout layout = io::read_checkpoint_layout(path);
  s.load_shards = shards_to_load(layout, optimizer_shards(), params_.size());
  if (optimizer_shards() != nullptr) {
    // Keep only this rank's parameters' state, after every shard.
    s.after_shard = [this] {
      size_t k = 0;
      for (auto& slot : slots_) {
        for (auto& group : slot.optimizer->param_groups()) {
          for (auto& p : group.params()) {
            if (shards_.owners[k++] != shards_.rank) {
              optim::drop_state(*slot.optimizer, p);
            }
          }
        }
      }
    };
  }
  io::load_checkpoint(layout.dir, s);
  auto get = [&](const char* key) {
    auto it = s.counters.find(key);
    LOWMEM_CHECK(it != s.counters.end(), "[trainer] checkpoint at '", path,
                 "' lacks the counter '", key, "'");
    return it->second;
  };
  step_ = get("step");
  skipped_total_ = get("skipped_total");
  consecutive_skips_ = get("consecutive_skips");
  items_total_ = get("items_total");
  train.seek(get("data_position"));
  LOWMEM_CHECK(step_ <= options_.max_steps, "[trainer] checkpoint step ",
               step_, " is past steps = ", options_.max_steps);
}

}  // namespace lowmem::train
