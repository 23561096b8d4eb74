// lowmem plan (train/plan.h): the model on the meta device, the method and
// routing of lowmem train (setup_method), state sizes from the optimizer
// registry, update temporaries from a probe, activations from the model's
// closed form, and the peak over the events of one steady-state step.
#include "lowmem/train/plan.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <sstream>
#include <tuple>

#include "components.h"
#include "lowmem/core/check.h"
#include "lowmem/core/dtype.h"
#include "lowmem/core/input.h"
#include "lowmem/core/memory.h"
#include "lowmem/dist/zero.h"
#include "lowmem/models/layers.h"
#include "lowmem/nn/nf4.h"
#include "lowmem/optim/galore.h"
#include "lowmem/optim/quant8.h"
#include "lowmem/optim/registry.h"
#include "lowmem/train/run.h"

namespace lowmem::train {
namespace {

int64_t nbytes(const at::Tensor& t) {
  return t.numel() * static_cast<int64_t>(t.element_size());
}

const char* dtype_name(c10::ScalarType t) {
  const char* name = dtype_short_name(t);
  return name == nullptr ? "other" : name;
}

// Tracked bytes per element that one update of optimizer `kind` allocates
// for a parameter of `dtype` (a matrix, or a vector), measured on a 64 x 96
// probe: the second step's scoped peak (the first creates the state). The
// optimizer's own code decides (fused fp32 kernels allocate no tensors, the
// generic path its fp32 copies), so nothing here knows optimizer names.
class UpdateProbe {
 public:
  double per_element(const optim::OptimizerKind& kind, const Section& section,
                     c10::ScalarType dtype, bool matrix) {
    const auto key = std::make_tuple(kind.name, dtype, matrix);
    auto it = cache_.find(key);
    if (it != cache_.end()) return it->second;
    MemoryTracker::install();
    MemoryTracker tracker;
    at::NoGradGuard no_grad;
    const std::vector<int64_t> shape =
        matrix ? std::vector<int64_t>{64, 96} : std::vector<int64_t>{6144};
    at::Tensor p = at::randn(shape).to(dtype);
    p.mutable_grad() = at::randn(shape).mul_(1e-3).to(dtype);
    optim::ParamGroups groups;
    groups.emplace_back(std::vector<at::Tensor>{p});
    auto opt = kind.make(std::move(groups), section);
    opt->step();
    auto scope = tracker.scope();
    opt->step();
    const double v = static_cast<double>(scope.peak_delta()) /
                     static_cast<double>(p.numel());
    cache_[key] = v;
    return v;
  }

 private:
  std::map<std::tuple<std::string, c10::ScalarType, bool>, double> cache_;
};

// How many elements of a tensor of `numel` an update's temporaries scale
// with: all of them, or with 8-bit state (bitsandbytes' options optim_bits 8
// and min_8bit_size, optim/quant8.h) one chunk of kQ8ChunkElements, since
// q8_update dequantizes, updates and requantizes chunk by chunk. The probe's
// tensor (6144 elements) is a single chunk either way.
int64_t update_elements(const Section& section, int64_t numel) {
  const Field* bits = section.find("optim_bits");
  if (bits == nullptr || bits->get() != "8") return numel;
  const Field* min = section.find("min_8bit_size");
  const int64_t floor =
      min != nullptr ? std::stoll(min->get()) : optim::kMin8bitSize;
  return numel >= floor ? std::min(numel, optim::kQ8ChunkElements) : numel;
}

// What one parameter contributes.
struct Param {
  std::string name;
  at::Tensor p;        // meta
  int64_t stage = -1;  // ActivationModel::stage_of
  int64_t state = 0;
  int64_t shared = 0;     // of state: what every ZeRO worker keeps (bases)
  int64_t update = 0;     // temporaries of its update (non-layerwise step)
  int64_t hook = 0;       // layer-wise: its gradient + update inside backward
  int64_t refresh = 0;    // GaLore: temporaries of a basis refresh
  int64_t low_alive = 0;  // GaLore: proxy and its gradient during the step
  bool hooked = false;    // updated inside backward (layer-wise GaLore)
};

const optim::OptimizerKind& sized_kind(const std::string& name) {
  const optim::OptimizerKind& kind = optim::optimizer_kind(name);
  if (!kind.state_bytes || !kind.make) {
    throw ConfigError("lowmem plan cannot size optimizer " + name +
                      ": its registry row has no state_bytes (whole-layer "
                      "optimizers such as singd and kfac are not modelled)");
  }
  return kind;
}

// GaLore's projected parameter i: the inner state on the low-rank proxy, the
// stored basis, and the temporaries of optim/galore.cpp and
// projection/projector.cpp: project (the gradient upcast to the basis dtype,
// whole or a block of ~2^20 elements for large one-sided projections, the
// low-rank product), apply (the update in the basis dtype and its cast back,
// whole or a block), a refresh
// (svd/rsvd: LAPACK's copy, U, V^T and gesdd's workspace; sketches: the
// drawn matrix).
// In GaLore's hook modes every worker projects every gradient, so under
// ZeRO each keeps every stored basis (`shared`).
void size_projected(const optim::GaLore& g, size_t i, Param& q,
                    const optim::OptimizerKind& inner, const Section& section,
                    UpdateProbe& probe) {
  const auto& pr = g.projector(i);
  const auto& o = pr.options();
  const int64_t m = pr.rows(), n = pr.cols(), r = pr.rank();
  const int64_t e = static_cast<int64_t>(q.p.element_size());
  // The basis's element size: fp32 (fp64 for fp64), or the gradient's own
  // 16-bit dtype under proj_dtype "grad".
  const int64_t f = q.p.scalar_type() == at::kDouble       ? 8
                    : (o.proj_dtype() == "grad" && e == 2) ? 2
                                                           : 4;
  // Large one-sided projections upcast the gradient and add the update back
  // a block at a time (Projector::blocked, block_rows, block_cols).
  const int64_t apply_block = pr.block_rows() * n;
  const int64_t project_block = pr.side() == projection::Side::kLeft
                                    ? m * pr.block_cols()
                                    : pr.block_rows() * n;
  const auto low_shape = pr.low_rank_shape();
  const at::Tensor low =
      at::empty(low_shape, at::TensorOptions()
                               .dtype(f == 8 ? at::kDouble : at::kFloat)
                               .device(c10::kMeta));
  const int64_t low_bytes = nbytes(low);
  int64_t basis = 0;
  if (pr.side() != projection::Side::kRight) basis += m * r * f;
  if (pr.side() != projection::Side::kLeft) basis += n * r * f;
  const bool sketch = o.basis() == "gaussian" || o.basis() == "orthogonal";
  const bool stored = !sketch || o.cache_sketch();
  q.state = inner.state_bytes(low, section) + (stored ? basis : 0);
  if (g.hook_modes()) q.shared = stored ? basis : 0;
  const int64_t regenerated = stored ? 0 : basis;
  const int64_t upcast = e == f ? 0 : project_block * f;
  const int64_t project = upcast + low_bytes + regenerated;
  const int64_t inner_update = static_cast<int64_t>(std::ceil(
      probe.per_element(inner, section, low.scalar_type(), low.dim() >= 2) *
      static_cast<double>(update_elements(section, low.numel()))));
  const int64_t apply = apply_block * f + (e == f ? 0 : apply_block * e) +
                        regenerated + inner_update;
  q.low_alive = 2 * low_bytes;
  q.update = apply;
  q.hook = nbytes(q.p) + std::max(project, q.low_alive + apply);
  const int64_t k = std::min(m, n);
  // A refresh computes in fp32 (fp64): the whole gradient upcast, then SVD.
  const int64_t fc = f == 8 ? 8 : 4;
  const int64_t refresh_upcast = e == fc ? 0 : m * n * fc;
  q.refresh =
      sketch
          ? basis + (f == fc ? 0 : basis / f * fc)
          : refresh_upcast + m * n * fc + (m + n) * k * fc +
                (3 * k * k + std::max(std::max(m, n), 4 * k * k + 4 * k)) * fc;
}

// A parameter stepped directly by optimizer `kind`.
void size_plain(Param& q, const optim::OptimizerKind& kind,
                const Section& section, UpdateProbe& probe) {
  q.state = kind.state_bytes(q.p, section);
  q.update = static_cast<int64_t>(std::ceil(
      probe.per_element(kind, section, q.p.scalar_type(), q.p.dim() >= 2) *
      static_cast<double>(update_elements(section, q.p.numel()))));
  q.hook = nbytes(q.p) + q.update;
}

struct Sized {
  std::vector<Param> params;  // trainable ones
  int64_t weights = 0, frozen = 0, count = 0, trainable = 0;
  // NF4 bases: the largest dequantized weight (compute dtype) plus its
  // float32 block scales, alive while a layer's matmul runs.
  int64_t dequant = 0;
  std::vector<PlanPart> parts;
};

Sized size_parameters(const Config& c, const detail::PlannedModel& pm) {
  auto model = std::static_pointer_cast<torch::nn::Module>(pm.model);
  const MethodSetup setup = setup_method(c, model, c10::Device(c10::kMeta));
  Sized out;
  std::map<std::string, int64_t> by_dtype;
  for (const auto& item : model->named_parameters(/*recurse=*/true)) {
    const at::Tensor& p = item.value();
    out.weights += nbytes(p);
    out.count += p.numel();
    by_dtype[std::string(p.requires_grad() ? "trainable " : "frozen ") +
             dtype_name(p.scalar_type())] += nbytes(p);
    if (!p.requires_grad()) out.frozen += nbytes(p);
  }
  int64_t nf4 = 0;
  for (const auto& m : model->modules(/*include_self=*/false)) {
    const auto* q = dynamic_cast<const nn::Nf4Linear*>(m.get());
    if (q == nullptr) continue;
    const nn::Nf4Weight& w = q->weight();
    nf4 += w.nbytes();
    out.count += w.numel();
    const int64_t blocks = w.absmax_q.numel();
    out.dequant = std::max(
        out.dequant,
        w.numel() * static_cast<int64_t>(c10::elementSize(q->compute_dtype())) +
            2 * blocks * 4);
  }
  out.weights += nf4;
  out.frozen += nf4;
  if (nf4 > 0) by_dtype["frozen nf4"] = nf4;
  for (const auto& [what, bytes] : by_dtype)
    out.parts.push_back({"weights (" + what + ")", bytes, ""});
  UpdateProbe probe;
  for (size_t s = 0; s < setup.routes.size(); ++s) {
    const Route& route = setup.routes[s];
    const bool main = route.target == detail::main_target(c);
    const auto& kind = sized_kind(main ? c.optimizer : c.aux_optimizer);
    const Section& section = *c.section(kind.name);
    const auto* galore =
        dynamic_cast<const optim::GaLore*>(setup.optimizers[s].optimizer.get());
    const bool hooked = galore != nullptr && galore->options().layerwise();
    int64_t slot_state = 0;
    for (size_t i = 0; i < route.params.size(); ++i) {
      Param q;
      q.hooked = hooked;
      q.name = route.names[i];
      q.p = route.params[i];
      q.stage = pm.activations.stage_of(q.name);
      if (galore != nullptr && i < galore->num_projected()) {
        size_projected(*galore, i, q, kind, section, probe);
      } else {
        size_plain(q, kind, section, probe);
      }
      out.trainable += q.p.numel();
      slot_state += q.state;
      out.params.push_back(q);
    }
    out.parts.push_back(
        {"optimizer state (" + route.target + ": " + kind.name + ")",
         slot_state, std::to_string(route.params.size()) + " tensors"});
  }
  return out;
}

struct Event {
  std::string at;
  int64_t gradients = 0, activations = 0, transient = 0;
  int64_t total() const { return gradients + activations + transient; }
};

// The live sums (beyond weights, state and the batch) at each event of a
// steady-state step, in time order. A parameter of a layer-wise GaLore is
// updated by its hook as soon as its gradient is ready (that gradient and the
// update's temporaries: `hooks`); every other gradient stays alive until the
// optimizer step, except, under ZeRO-2's reduction during backward, those
// of other workers' parameters (`foreign`, by parameter): alive while their
// bucket goes out, counted in their own stage's event only.
std::vector<Event> step_events(const Sized& z, const ActivationModel& a,
                               const std::vector<bool>& foreign = {}) {
  const int64_t L = a.layers;
  std::vector<int64_t> grads(static_cast<size_t>(L + 2), 0);
  std::vector<int64_t> passing(static_cast<size_t>(L + 2), 0);
  std::vector<int64_t> hooked(static_cast<size_t>(L + 2), 0);
  std::vector<int64_t> hooks(static_cast<size_t>(L + 2), 0);
  int64_t all_grads = 0, update = 0, refresh = 0, low_alive = 0;
  bool stepped = false;
  for (size_t i = 0; i < z.params.size(); ++i) {
    const Param& q = z.params[i];
    const auto s =
        static_cast<size_t>(std::clamp<int64_t>(q.stage + 1, 0, L + 1));
    const int64_t grad = nbytes(q.p);
    if (!foreign.empty() && foreign[i]) {
      passing[s] += grad;
      continue;
    }
    if (q.hooked) {
      // A refresh (GaLore::prepare) finishes before the projection starts:
      // its temporaries and the update's are never alive together.
      hooked[s] += grad;
      hooks[s] = std::max(hooks[s], grad + std::max(q.hook - grad, q.refresh));
      continue;
    }
    stepped = true;
    grads[s] += grad;
    all_grads += grad;
    update = std::max(update, q.update);
    refresh = std::max(refresh, q.refresh);
    low_alive += q.low_alive;
  }
  const int64_t kept = a.checkpointing ? a.checkpoint : a.layer;
  std::vector<Event> ev;
  ev.push_back({"forward (loss)", 0, L * kept + a.head, a.head_forward});
  // The loss's backward (no parameter gradient yet), then the output
  // projection's, when the log-probabilities are freed and the logits'
  // gradient sits next to the head's new weight gradients; a hooked head
  // is updated after that matmul's backward has returned.
  ev.push_back({"backward of the loss", 0, L * kept + a.head, a.head_backward});
  int64_t done = grads[0];
  const int64_t after_loss = L * kept + a.head - a.log_probs;
  ev.push_back({"backward of the head", done + hooked[0] + passing[0],
                after_loss, a.logits_grad});
  if (hooks[0] > 0) {
    ev.push_back({"update of the head", done, after_loss, hooks[0]});
  }
  for (int64_t l = L - 1; l >= 0; --l) {
    const auto s = static_cast<size_t>(l + 1);
    done += grads[s];
    const int64_t recompute = a.checkpointing ? a.layer : 0;
    ev.push_back({"backward of layer " + std::to_string(l), done + passing[s],
                  (l + 1) * kept,
                  recompute + a.layer_backward + z.dequant + hooks[s]});
  }
  const auto emb = static_cast<size_t>(L + 1);
  done += grads[emb];
  ev.push_back(
      {"backward of the embedding", done + passing[emb], 0, hooks[emb]});
  if (stepped || !foreign.empty()) {
    ev.push_back({"optimizer step", all_grads, 0, low_alive + update});
    if (refresh > 0)
      ev.push_back({"projection refresh", all_grads, 0, refresh});
  }
  return ev;
}

// The owner worker of each trainable parameter under ZeRO (empty without
// it), as dist::partition_by_bytes assigns them. The routes list parameters
// in optimizer order except GaLore's (projected first here, plain first in
// its groups): equal-sized parameters may then land on other workers than in
// training, same totals otherwise.
std::vector<int> zero_owners(const Config& c, const Sized& z, int64_t workers) {
  if (workers < 1) {
    throw ConfigError("plan: workers must be >= 1, got " +
                      std::to_string(workers));
  }
  if (workers == 1 || detail::zero_stage(c) == 0) {
    return {};
  }
  check_data_parallel(c, static_cast<int>(workers));
  std::vector<int64_t> bytes;
  for (const auto& q : z.params) bytes.push_back(nbytes(q.p));
  return dist::partition_by_bytes(bytes, static_cast<int>(workers));
}

// The peak event of one worker (the only one without ZeRO): its events'
// largest sum plus its optimizer state. Under ZeRO-2 with reduction during
// backward the gradients it keeps are its own.
struct WorkerPeak {
  Event top;
  int64_t state = 0;
  int64_t total() const { return top.total() + state; }
};

WorkerPeak worker_peak(const Config& c, const Sized& z,
                       const ActivationModel& a, const std::vector<int>& owners,
                       int worker) {
  WorkerPeak out;
  std::vector<bool> foreign;
  const bool overlap = detail::zero_stage(c) == 2 && detail::zero_overlap(c);
  // Layer-wise GaLore's hooks take their gradients on every worker (and
  // step only their own: the non-owners' smaller temporaries are planned as
  // the owner's); ZeRO reduces the others.
  if (overlap) {
    for (size_t i = 0; i < owners.size(); ++i) {
      foreign.push_back(owners[i] != worker && !z.params[i].hooked);
    }
  }
  for (size_t i = 0; i < z.params.size(); ++i) {
    const Param& q = z.params[i];
    const bool own = owners.empty() || owners[i] == worker;
    out.state += own ? q.state : q.shared;
  }
  auto events = step_events(z, a, foreign);
  int64_t all = 0, largest = 0;  // the gradients ZeRO reduces
  for (const auto& q : z.params) {
    if (q.hooked) continue;
    all += nbytes(q.p);
    largest = std::max(largest, nbytes(q.p));
  }
  if (!owners.empty() && all > 0) {
    // The reduction's flat copies, a bucket being up to bucket_cap_mb (the
    // dist::ZeroOptions default lowmem train uses) or one larger parameter:
    // after backward (stage 1, or stage 2 without overlap) two buckets in
    // flight beside every gradient (dist/zero.h); during backward one
    // bucket's copy beside the gradients it was made from (measured: 60m, 2
    // workers, docs/distributed.md).
    const auto cap =
        static_cast<int64_t>(dist::ZeroOptions().bucket_cap_mb() * 1048576.0);
    const int64_t bucket = std::max(std::min(cap, all), largest);
    if (overlap) {
      for (auto& e : events) {
        if (e.at.rfind("backward of", 0) == 0 &&
            e.at != "backward of the loss") {
          e.transient += bucket;
        }
      }
    } else {
      events.push_back({"gradient reduction", all, 0, 2 * bucket});
    }
  }
  out.top = events.front();
  for (const auto& e : events) {
    if (e.total() > out.top.total()) out.top = e;
  }
  return out;
}

Plan make_plan(const Config& config, const PlanOptions& o) {
  const Config c = config.with_optim_bits();
  const int64_t batch = o.batch_size() > 0 ? o.batch_size() : c.batch_size;
  if (batch < 1) {
    throw ConfigError("batch size must be >= 1, got " + std::to_string(batch));
  }
  const detail::ModelKind* kind = nullptr;
  for (const auto& k : detail::model_kinds())
    if (k.name == c.model) kind = &k;
  if (kind == nullptr || !kind->plan) {
    throw ConfigError("lowmem plan has no activation model for model '" +
                      c.model + "' yet (llama only)");
  }
  const auto pm = kind->plan(c, o.dtype(), batch, o.seq_len());
  const ActivationModel& a = pm.activations;
  const Sized z = size_parameters(c, pm);
  Plan out;
  out.batch_size = batch;
  out.seq_len = pm.seq;
  out.params = z.count;
  out.trainable_params = z.trainable;
  out.weights = z.weights;
  for (const auto& q : z.params) out.optimizer_state += q.state;
  out.activations_full = a.layers * a.layer + a.head;
  out.activations_checkpointed = a.layers * a.checkpoint + a.head;
  const int64_t batch_bytes = 2 * batch * pm.seq * 8;  // int64 input, target
  for (const auto& e : step_events(z, a)) {
    if (e.transient > out.largest_transient) {
      out.largest_transient = e.transient;
      out.largest_transient_at = e.at;
    }
  }
  const auto owners = zero_owners(c, z, o.workers());
  WorkerPeak top;
  const int workers = owners.empty() ? 1 : static_cast<int>(o.workers());
  for (int w = 0; w < workers; ++w) {
    const WorkerPeak p = worker_peak(c, z, a, owners, w);
    if (w == 0 || p.total() > top.total()) top = p;
    if (!owners.empty()) out.worker_state.push_back(p.state);
  }
  out.gradients = top.top.gradients;
  out.activations = top.top.activations;
  out.transient = top.top.transient + batch_bytes;
  out.peak_at = top.top.at;
  out.peak = out.weights + top.total() + batch_bytes;
  out.parts = z.parts;
  if (!out.worker_state.empty()) {
    out.parts.push_back({"optimizer state of the peak's worker", top.state,
                         "ZeRO-" + std::to_string(detail::zero_stage(c)) +
                             ", " + std::to_string(o.workers()) +
                             " workers; the peak counts it"});
  }
  out.parts.push_back({"gradients", out.gradients, "alive at the peak"});
  out.parts.push_back({"activations", out.activations,
                       std::string("saved for backward at the peak (") +
                           (a.checkpointing ? "checkpointed" : "all kept") +
                           ")"});
  out.parts.push_back({"temporaries", out.transient,
                       "short-lived buffers at the peak, batch included"});
  return out;
}

}  // namespace

Plan plan(const Config& config, const PlanOptions& options) {
  const auto t = options.dtype();
  if (t && *t != at::kFloat && *t != at::kBFloat16 && *t != at::kHalf) {
    throw ConfigError(std::string("lowmem plan: dtype must be fp32, bf16 or "
                                  "fp16, got ") +
                      dtype_name(*t));
  }
  return make_plan(config, options);
}

int64_t largest_batch(const Config& config, PlanOptions options,
                      int64_t budget_bytes) {
  auto fits = [&](int64_t b) {
    options.batch_size(b);
    return plan(config, options).peak <= budget_bytes;
  };
  if (!fits(1)) return 0;
  int64_t lo = 1, hi = 2;
  while (hi <= (int64_t{1} << 20) && fits(hi)) {
    lo = hi;
    hi *= 2;
  }
  if (hi > (int64_t{1} << 20)) return lo;
  while (hi - lo > 1) {  // fits(lo), !fits(hi)
    const int64_t mid = lo + (hi - lo) / 2;
    (fits(mid) ? lo : hi) = mid;
  }
  return lo;
}

int64_t parse_bytes(const std::string& text) {
  std::istringstream in(text);
  double v = 0;
  std::string unit;
  in >> v;
  const bool number = !in.fail();
  in >> unit;
  std::string rest;
  in >> rest;
  static const std::map<std::string, double> units = {{"", 1.0},
                                                      {"B", 1.0},
                                                      {"KiB", 1024.0},
                                                      {"MiB", 1048576.0},
                                                      {"GiB", 1073741824.0},
                                                      {"TiB", 1099511627776.0},
                                                      {"KB", 1e3},
                                                      {"MB", 1e6},
                                                      {"GB", 1e9},
                                                      {"TB", 1e12}};
  auto u = units.find(unit);
  if (!number || !rest.empty() || u == units.end() || !(v >= 0) ||
      v * u->second > 9.0e18) {
    throw ConfigError("cannot read " + quote(text) +
                      " as a size (e.g. 24GiB, 512MiB, 1.5GB, 1000000)");
  }
  return static_cast<int64_t>(v * u->second);
}

std::string Plan::to_string() const {
  std::ostringstream o;
  o << "batch " << batch_size << " x " << seq_len << " tokens; " << params
    << " parameters, " << trainable_params << " trainable\n";
  for (const auto& p : parts) {
    o << "  " << p.name;
    for (size_t i = p.name.size(); i < 48; ++i) o << ' ';
    o << format_bytes(p.bytes);
    if (!p.detail.empty()) o << "  (" << p.detail << ")";
    o << "\n";
  }
  o << "  peak" << std::string(44, ' ') << format_bytes(peak) << "  (at "
    << peak_at << ")\n"
    << "  activations when backward starts: " << format_bytes(activations_full)
    << " without checkpointing, " << format_bytes(activations_checkpointed)
    << " with\n"
    << "  largest transient: " << format_bytes(largest_transient) << " ("
    << largest_transient_at << ")\n";
  if (!worker_state.empty()) {
    o << "  optimizer state per worker:";
    for (size_t r = 0; r < worker_state.size(); ++r) {
      o << (r == 0 ? " " : ", ") << format_bytes(worker_state[r]);
    }
    o << " (of " << format_bytes(optimizer_state) << ")\n";
  }
  return o.str();
}

std::vector<PlanMethod> plan_methods() {
  const std::string all =
      "targets=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
  const std::string projected = "galore.targets=(attn|mlp)";
  return {
      {"full AdamW", {"method=full", "optimizer=adamw"}},
      {"GaLore-AdamW", {"method=galore", "optimizer=galore_adamw", projected}},
      {"GaLore layer-wise",
       {"method=galore", "optimizer=galore_adamw", projected,
        "galore.layerwise=true"}},
      {"CAME", {"method=full", "optimizer=came"}},
      {"Adafactor", {"method=full", "optimizer=adafactor"}},
      {"LoRA r16", {"method=lora", "optimizer=adamw", all, "lora.r=16"}},
      {"AdamW 8-bit", {"method=full", "optimizer=adamw", "optim_bits=8"}},
      {"QLoRA r16 (NF4)",
       {"method=lora", "optimizer=adamw", all, "lora.r=16", "base_dtype=nf4"}},
  };
}

}  // namespace lowmem::train
