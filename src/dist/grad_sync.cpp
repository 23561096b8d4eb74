#include "lowmem/dist/grad_sync.h"

#include "lowmem/core/check.h"

#include <c10/core/GradMode.h>
#include <ATen/ATen.h>

namespace lowmem::dist {

GradSync::GradSync(
    std::shared_ptr<Communicator> comm,
    std::vector<at::Tensor> params,
    GradSyncOptions options)
    : comm_(std::move(comm)), params_(std::move(params)), options_(options) {
  LOWMEM_CHECK(comm_ != nullptr, "[dist] GradSync needs a communicator");
  LOWMEM_CHECK(
      options_.bucket_cap_mb() > 0,
      "[dist] bucket_cap_mb must be > 0, got ",
      options_.bucket_cap_mb());
  for (size_t i = 0; i < params_.size(); ++i) {
    LOWMEM_CHECK(
        params_[i].defined() && params_[i].requires_grad(),
        "[dist] GradSync parameter ",
        i,
        " must be a defined tensor that requires grad");
    LOWMEM_CHECK(
        params_[i].is_leaf(), "[dist] GradSync parameter ", i, " must be a leaf");
  }
  const auto cap = static_cast<int64_t>(options_.bucket_cap_mb() * 1024 * 1024);
  // Gradients arrive roughly in reverse order of the parameters' use, so the
  // last parameters go into the first bucket (as DDP).
  where_.assign(params_.size(), {-1, -1});
  int64_t bytes = 0;
  for (int64_t i = static_cast<int64_t>(params_.size()) - 1; i >= 0; --i) {
    const auto& p = params_[i];
    const int64_t pb = p.numel() * static_cast<int64_t>(p.element_size());
    bool fresh = buckets_.empty() || bytes + pb > cap;
    if (!fresh) {
      const auto& first = params_[buckets_.back().params.front()];
      fresh = first.scalar_type() != p.scalar_type() ||
          first.device() != p.device();
    }
    if (fresh) {
      buckets_.emplace_back();
      bytes = 0;
    }
    auto& b = buckets_.back();
    const int64_t offset =
        b.offsets.empty() ? 0 : b.offsets.back() + params_[b.params.back()].numel();
    where_[i] = {static_cast<int64_t>(buckets_.size()) - 1,
                 static_cast<int64_t>(b.params.size())};
    b.params.push_back(i);
    b.offsets.push_back(offset);
    bytes += pb;
  }
  for (auto& b : buckets_) {
    const auto& last = params_[b.params.back()];
    const int64_t n = b.offsets.back() + last.numel();
    b.flat = at::zeros({n}, last.options().requires_grad(false));
    b.filled.assign(b.params.size(), false);
    b.pending = static_cast<int64_t>(b.params.size());
  }
  if (options_.overlap() && comm_->world_size() > 1) {
    for (size_t i = 0; i < params_.size(); ++i) {
      const auto idx = static_cast<int64_t>(i);
      hook_ids_.push_back(params_[i].register_hook([this, idx](at::Tensor g) {
        on_grad(idx, g);
        return g;
      }));
    }
  }
}

GradSync::~GradSync() {
  for (size_t i = 0; i < hook_ids_.size(); ++i) {
    try {
      params_[i].remove_hook(hook_ids_[i]);
    } catch (...) {  // the tensor may already be gone from autograd
    }
  }
  // Collectives still in flight must finish before their buffers die.
  for (auto& b : buckets_) {
    if (b.launched) {
      try {
        b.work.wait();
      } catch (...) {
      }
    }
  }
}

void GradSync::set_enabled(bool enabled) {
  std::lock_guard<std::mutex> lock(mutex_);
  enabled_ = enabled;
}

std::vector<std::vector<int64_t>> GradSync::bucket_indices() const {
  std::vector<std::vector<int64_t>> out;
  for (const auto& b : buckets_) {
    out.push_back(b.params);
  }
  return out;
}

void GradSync::on_grad(int64_t param_index, const at::Tensor& grad) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!enabled_) {
    return;
  }
  const auto [bi, slot] = where_[param_index];
  auto& b = buckets_[bi];
  if (b.launched || b.filled[slot]) {
    // A second backward before synchronize(): keep the first (DDP errors
    // here too; gradient accumulation must disable the sync).
    LOWMEM_CHECK(
        false,
        "[dist] parameter ",
        param_index,
        " got a second gradient before synchronize(); call set_enabled(false) "
        "for accumulation micro-steps");
  }
  const auto& p = params_[param_index];
  auto view = b.flat.narrow(0, b.offsets[slot], p.numel()).view(p.sizes());
  c10::NoGradGuard no_grad;
  if (p.grad().defined()) {
    at::add_out(view, p.grad(), grad);  // what AccumulateGrad will produce
  } else {
    view.copy_(grad);
  }
  b.filled[slot] = true;
  if (--b.pending == 0) {
    launch_ready_locked(/*from_hook=*/true);
  }
}

void GradSync::launch_locked(Bucket& b) {
  b.work = comm_->allreduce_sum_async({b.flat});
  b.launched = true;
  bytes_this_step_ +=
      b.flat.numel() * static_cast<int64_t>(b.flat.element_size());
}

void GradSync::launch_ready_locked(bool from_hook) {
  // All ranks must issue the collectives in the same order: bucket order.
  while (next_launch_ < buckets_.size() && buckets_[next_launch_].pending == 0) {
    launch_locked(buckets_[next_launch_]);
    if (from_hook) {
      ++launched_early_;
    }
    ++next_launch_;
  }
}

void GradSync::reset_step_locked() {
  for (auto& b : buckets_) {
    b.filled.assign(b.params.size(), false);
    b.pending = static_cast<int64_t>(b.params.size());
    b.launched = false;
    b.work = Work();
  }
  next_launch_ = 0;
  bytes_last_step_ = bytes_this_step_;
  bytes_this_step_ = 0;
  launched_early_last_ = launched_early_;
  launched_early_ = 0;
}

void GradSync::synchronize() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (comm_->world_size() == 1) {
    bytes_last_step_ = 0;
    return;
  }
  c10::NoGradGuard no_grad;
  // Fill whatever the hooks did not see (no overlap, or unused parameters)
  // from .grad, in bucket order, and launch.
  for (size_t bi = next_launch_; bi < buckets_.size(); ++bi) {
    auto& b = buckets_[bi];
    for (size_t s = 0; s < b.params.size(); ++s) {
      if (b.filled[s]) {
        continue;
      }
      const auto& p = params_[b.params[s]];
      auto view = b.flat.narrow(0, b.offsets[s], p.numel()).view(p.sizes());
      if (p.grad().defined()) {
        view.copy_(p.grad());
      } else {
        view.zero_();
      }
      b.filled[s] = true;
    }
    b.pending = 0;
  }
  launch_ready_locked(/*from_hook=*/false);
  std::exception_ptr failure;
  for (auto& b : buckets_) {
    try {
      b.work.wait();
    } catch (...) {
      if (!failure) {
        failure = std::current_exception();
      }
    }
  }
  if (failure) {
    reset_step_locked();
    std::rethrow_exception(failure);
  }
  const double scale = options_.average() ? 1.0 / comm_->world_size() : 1.0;
  for (auto& b : buckets_) {
    if (scale != 1.0) {
      b.flat.mul_(scale);
    }
    for (size_t s = 0; s < b.params.size(); ++s) {
      auto& p = params_[b.params[s]];
      auto view = b.flat.narrow(0, b.offsets[s], p.numel()).view(p.sizes());
      if (p.grad().defined()) {
        p.mutable_grad().copy_(view);
      } else {
        p.mutable_grad() = view.clone();
      }
    }
  }
  reset_step_locked();
}

int64_t allreduce_mean_bucketed(
    Communicator& comm,
    std::vector<at::Tensor>& grads,
    double bucket_cap_mb) {
  LOWMEM_CHECK(
      bucket_cap_mb > 0, "[dist] bucket_cap_mb must be > 0, got ", bucket_cap_mb);
  if (comm.world_size() == 1 || grads.empty()) {
    return 0;
  }
  c10::NoGradGuard no_grad;
  const auto cap = static_cast<int64_t>(bucket_cap_mb * 1024 * 1024);
  struct Pack {
    std::vector<size_t> members;
    at::Tensor flat;
    Work work;
  };
  std::vector<Pack> packs;
  int64_t bytes = 0;
  for (size_t i = 0; i < grads.size(); ++i) {
    const auto& g = grads[i];
    const int64_t gb = g.numel() * static_cast<int64_t>(g.element_size());
    bool fresh = packs.empty() || bytes + gb > cap;
    if (!fresh) {
      const auto& first = grads[packs.back().members.front()];
      fresh = first.scalar_type() != g.scalar_type() ||
          first.device() != g.device();
    }
    if (fresh) {
      packs.emplace_back();
      bytes = 0;
    }
    packs.back().members.push_back(i);
    bytes += gb;
  }
  // Waits for a pack and writes its mean back; its flat copy goes.
  auto finish = [&](Pack& pk) {
    pk.work.wait();
    pk.flat.div_(comm.world_size());
    int64_t off = 0;
    for (const size_t i : pk.members) {
      auto& g = grads[i];
      g.copy_(pk.flat.narrow(0, off, g.numel()).view(g.sizes()));
      off += g.numel();
    }
    pk.flat = at::Tensor();
    pk.work = Work();  // it holds the flat too
  };
  // At most two packs in flight: their flat copies, not a second copy of
  // every gradient, are the extra memory.
  int64_t total = 0;
  for (size_t k = 0; k < packs.size(); ++k) {
    if (k >= 2) finish(packs[k - 2]);
    Pack& pk = packs[k];
    std::vector<at::Tensor> parts;
    for (const size_t i : pk.members) {
      parts.push_back(grads[i].reshape({-1}));
    }
    pk.flat = at::cat(parts);
    total += pk.flat.numel() * static_cast<int64_t>(pk.flat.element_size());
    pk.work = comm.allreduce_sum_async({pk.flat});
  }
  for (size_t k = packs.size() >= 2 ? packs.size() - 2 : 0; k < packs.size();
       ++k) {
    finish(packs[k]);
  }
  return total;
}

std::function<void(std::vector<at::Tensor>&)> make_trainer_grad_sync(
    std::shared_ptr<Communicator> comm,
    double bucket_cap_mb) {
  LOWMEM_CHECK(comm != nullptr, "[dist] make_trainer_grad_sync needs a communicator");
  LOWMEM_CHECK(
      bucket_cap_mb > 0, "[dist] bucket_cap_mb must be > 0, got ", bucket_cap_mb);
  return [comm, bucket_cap_mb](std::vector<at::Tensor>& grads) {
    if (comm->world_size() == 1) {
      return;
    }
    check_same_layout(*comm, grads, "gradient",
                      "a parameter got no gradient on some ranks");
    allreduce_mean_bucketed(*comm, grads, bucket_cap_mb);
  };
}

void check_same_layout(Communicator& comm, const std::vector<at::Tensor>& ts,
                       const char* what, const char* likely_cause) {
  // Cheap agreement check on the layout (count and total elements) so a
  // rank with a missing tensor fails clearly instead of mixing tensors.
  int64_t numel = 0;
  for (const auto& t : ts) {
    numel += t.numel();
  }
  auto layout = at::tensor({static_cast<int64_t>(ts.size()), numel}, at::kLong);
  layout = layout.to(at::Device(comm.options().device()));
  const auto all = comm.allgather(layout);
  for (int r = 0; r < comm.world_size(); ++r) {
    const auto theirs = all[r].to(at::kCPU);
    LOWMEM_CHECK(theirs[0].item<int64_t>() == static_cast<int64_t>(ts.size()) &&
                     theirs[1].item<int64_t>() == numel,
                 "[dist] ", what, " layouts differ: rank ", comm.rank(),
                 " has ", ts.size(), " tensors (", numel, " elements), rank ",
                 r, " has ", theirs[0].item<int64_t>(), " (",
                 theirs[1].item<int64_t>(), " elements); ", likely_cause);
  }
}

std::function<void(std::vector<at::Tensor>&)> make_statistics_sync(
    std::shared_ptr<Communicator> comm, double bucket_cap_mb) {
  LOWMEM_CHECK(comm != nullptr,
               "[dist] make_statistics_sync needs a communicator");
  LOWMEM_CHECK(bucket_cap_mb > 0, "[dist] bucket_cap_mb must be > 0, got ",
               bucket_cap_mb);
  return [comm, bucket_cap_mb](std::vector<at::Tensor>& stats) {
    if (comm->world_size() == 1) {
      return;
    }
    check_same_layout(*comm, stats, "optimizer statistics",
                      "a layer recorded curvature or a gradient on some "
                      "ranks only");
    // Averaged in fp32 at least (bf16/fp16 factors), then written back.
    std::vector<at::Tensor> wide;
    wide.reserve(stats.size());
    for (const auto& t : stats) {
      const bool narrow =
          t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf;
      wide.push_back(narrow ? t.to(at::kFloat) : t);
    }
    allreduce_mean_bucketed(*comm, wide, bucket_cap_mb);
    for (size_t i = 0; i < stats.size(); ++i) {
      if (!wide[i].is_same(stats[i])) stats[i].copy_(wide[i]);
    }
  };
}

}  // namespace lowmem::dist
