#include "lowmem/dist/zero.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <numeric>

#include "lowmem/core/check.h"
#include "lowmem/dist/grad_sync.h"

namespace lowmem::dist {
namespace {

int64_t nbytes(const at::Tensor& t) {
  return t.numel() * static_cast<int64_t>(t.element_size());
}

/// Splits `members` (indices into `tensors`) into runs of one dtype and
/// device of at most `cap` bytes (a larger tensor gets a run of its own).
std::vector<std::vector<size_t>> packs_of(
    const std::vector<size_t>& members, const std::vector<at::Tensor>& tensors,
    int64_t cap) {
  std::vector<std::vector<size_t>> packs;
  int64_t bytes = 0;
  for (const size_t i : members) {
    const at::Tensor& t = tensors[i];
    bool fresh = packs.empty() || bytes + nbytes(t) > cap;
    if (!fresh) {
      const at::Tensor& first = tensors[packs.back().front()];
      fresh = first.scalar_type() != t.scalar_type() ||
              first.device() != t.device();
    }
    if (fresh) {
      packs.emplace_back();
      bytes = 0;
    }
    packs.back().push_back(i);
    bytes += nbytes(t);
  }
  return packs;
}

at::Tensor flatten(const std::vector<size_t>& pack,
                   const std::vector<at::Tensor>& tensors) {
  std::vector<at::Tensor> parts;
  parts.reserve(pack.size());
  for (const size_t i : pack) {
    parts.push_back(tensors[i].reshape({-1}));
  }
  return at::cat(parts);
}

void unflatten(const at::Tensor& flat, const std::vector<size_t>& pack,
               std::vector<at::Tensor>& tensors) {
  int64_t off = 0;
  for (const size_t i : pack) {
    at::Tensor& t = tensors[i];
    t.copy_(flat.narrow(0, off, t.numel()).view(t.sizes()));
    off += t.numel();
  }
}

}  // namespace

std::vector<int> partition_by_bytes(const std::vector<int64_t>& bytes,
                                    int world_size) {
  LOWMEM_CHECK(world_size >= 1, "[dist] world_size must be >= 1, got ",
               world_size);
  std::vector<size_t> order(bytes.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return bytes[a] > bytes[b]; });
  std::vector<int64_t> load(static_cast<size_t>(world_size), 0);
  std::vector<int> owners(bytes.size(), 0);
  for (const size_t i : order) {
    LOWMEM_CHECK(bytes[i] >= 0, "[dist] item ", i, " has negative size ",
                 bytes[i]);
    const auto least = std::min_element(load.begin(), load.end());
    owners[i] = static_cast<int>(least - load.begin());
    *least += bytes[i];
  }
  return owners;
}

void validate(const ZeroOptions& o) {
  LOWMEM_CHECK(o.stage() == 1 || o.stage() == 2,
               "[dist] ZeRO stage must be 1 or 2, got ", o.stage());
  LOWMEM_CHECK(o.bucket_cap_mb() > 0, "[dist] bucket_cap_mb must be > 0, got ",
               o.bucket_cap_mb());
}

std::vector<int> partition_grouped(const std::vector<int64_t>& bytes,
                                   const std::vector<size_t>& groups,
                                   int world_size) {
  if (groups.empty()) return partition_by_bytes(bytes, world_size);
  LOWMEM_CHECK(groups.size() == bytes.size(), "[dist] ", groups.size(),
               " group ids for ", bytes.size(), " items");
  std::vector<int64_t> group_bytes(bytes.size(), 0);
  for (size_t i = 0; i < bytes.size(); ++i) {
    LOWMEM_CHECK(groups[i] <= i, "[dist] item ", i, " names group ", groups[i],
                 " (a group is named by its first item)");
    group_bytes[groups[i]] += bytes[i];
  }
  const std::vector<int> group_owner =
      partition_by_bytes(group_bytes, world_size);
  std::vector<int> owners(bytes.size());
  for (size_t i = 0; i < bytes.size(); ++i) owners[i] = group_owner[groups[i]];
  return owners;
}

ZeroSharding::ZeroSharding(std::shared_ptr<Communicator> comm,
                           std::vector<at::Tensor> params, ZeroOptions options,
                           const std::vector<size_t>& groups)
    : comm_(std::move(comm)),
      params_(std::move(params)),
      options_(options),
      had_grad_(params_.size(), false) {
  LOWMEM_CHECK(comm_ != nullptr, "[dist] ZeroSharding needs a communicator");
  validate(options_);
  std::vector<int64_t> bytes;
  bytes.reserve(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    LOWMEM_CHECK(params_[i].defined(), "[dist] ZeroSharding parameter ", i,
                 " is undefined");
    bytes.push_back(nbytes(params_[i]));
  }
  owners_ = partition_grouped(bytes, groups, comm_->world_size());
  if (options_.stage() == 2 && options_.overlap() && comm_->world_size() > 1) {
    install_hooks();
  }
}

// Runs after AccumulateGrad wrote a parameter's .grad (the LibTorch 1.13
// equivalent of register_post_accumulate_grad_hook; optim/galore.cpp does
// the same).
class ZeroSharding::Hook : public torch::autograd::FunctionPostHook {
 public:
  Hook(ZeroSharding* owner, size_t index) : owner_(owner), index_(index) {}
  torch::autograd::variable_list operator()(
      const torch::autograd::variable_list& outputs,
      const torch::autograd::variable_list& /*inputs*/) override {
    owner_->on_accumulated(index_);
    return outputs;
  }

 private:
  ZeroSharding* owner_;
  size_t index_;
};

ZeroSharding::~ZeroSharding() {
  for (size_t k = 0; k < nodes_.size(); ++k) {
    std::static_pointer_cast<torch::autograd::Node>(nodes_[k])->del_post_hook(
        hook_keys_[k]);
  }
}

void ZeroSharding::install_hooks() {
  for (const auto& p : params_) {
    // Without a grad accumulator (a non-leaf) there is nothing to hook:
    // reduce after backward.
    if (!p.requires_grad() || !p.is_leaf()) return;
  }
  std::vector<size_t> reverse(params_.size());
  std::iota(reverse.rbegin(), reverse.rend(), size_t{0});
  const auto cap = static_cast<int64_t>(options_.bucket_cap_mb() * 1048576);
  bucket_of_.assign(params_.size(), 0);
  for (auto& members : packs_of(reverse, params_, cap)) {
    for (const size_t i : members) bucket_of_[i] = buckets_.size();
    buckets_.push_back(Bucket{std::move(members)});
  }
  reached_.assign(params_.size(), false);
  reduced_.assign(params_.size(), false);
  sums_.assign(params_.size(), at::Tensor());
  for (size_t i = 0; i < params_.size(); ++i) {
    auto node = torch::autograd::impl::grad_accumulator(params_[i]);
    hook_keys_.push_back(node->add_post_hook(std::make_unique<Hook>(this, i)));
    nodes_.push_back(std::move(node));
  }
}

void ZeroSharding::before_backward(bool last_micro_batch) {
  if (nodes_.empty()) return;
  std::lock_guard<std::mutex> lock(mutex_);
  armed_ = last_micro_batch;
  if (!armed_) return;
  std::fill(reached_.begin(), reached_.end(), false);
  std::fill(reduced_.begin(), reduced_.end(), false);
  std::fill(sums_.begin(), sums_.end(), at::Tensor());
  for (auto& b : buckets_) {
    b.launched = false;
    b.waiting = static_cast<int64_t>(b.params.size());
  }
  next_launch_ = 0;
  launches_ = 0;
  launched_in_backward_ = 0;
  late_reduces_ = 0;
}

void ZeroSharding::on_accumulated(size_t i) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!armed_) return;
  Bucket& b = buckets_[bucket_of_[i]];
  if (b.launched) {
    launch_late(i);
    return;
  }
  if (reached_[i]) return;  // accumulates into .grad until the bucket goes
  reached_[i] = true;
  b.waiting -= 1;
  while (next_launch_ < buckets_.size() &&
         buckets_[next_launch_].waiting == 0) {
    launch_bucket(buckets_[next_launch_++], true);
  }
}

void ZeroSharding::launch_bucket(Bucket& b, bool in_backward) {
  c10::NoGradGuard no_grad;
  const size_t index = launches_++;
  bound_in_flight(index);
  b.launched = true;
  launched_in_backward_ += in_backward ? 1 : 0;
  // Every rank issues the same reduces in the same order (bucket, owner).
  std::vector<at::Tensor> grads(params_.size());
  for (int o = 0; o < comm_->world_size(); ++o) {
    std::vector<size_t> members;
    for (const size_t i : b.params) {
      if (owners_[i] != o || !params_[i].grad().defined()) continue;
      members.push_back(i);
      grads[i] = params_[i].grad();
    }
    if (members.empty()) continue;
    at::Tensor flat = flatten(members, grads);
    Work w = comm_->reduce_sum_async(flat, o);
    int64_t off = 0;
    for (const size_t i : members) {
      reduced_[i] = true;
      // The flat copy is what is sent (and, on the owner, where the sum
      // lands): the gradient itself goes now, on every rank.
      params_[i].mutable_grad() = at::Tensor();
      const int64_t n = grads[i].numel();
      if (o == comm_->rank()) {
        sums_[i] = flat.narrow(0, off, n).view(grads[i].sizes());
      }
      off += n;
    }
    in_flight_.push_back(InFlight{index, o, std::move(members), flat, w});
  }
}

void ZeroSharding::launch_late(size_t i) {
  c10::NoGradGuard no_grad;
  // .grad holds only what arrived since the bucket went out.
  at::Tensor part = params_[i].grad().contiguous().reshape({-1});
  params_[i].mutable_grad() = at::Tensor();
  const size_t index = launches_++;
  bound_in_flight(index);
  late_reduces_ += 1;
  Work w = comm_->reduce_sum_async(part, owners_[i]);
  in_flight_.push_back(InFlight{index, owners_[i], {i}, part, w, true});
}

// Before launch `newest`: launches older than the one before it are waited
// for, so at most two are in flight and the flat copies of other ranks'
// gradients do not pile up into a second set.
void ZeroSharding::bound_in_flight(size_t newest) {
  for (auto& f : in_flight_) {
    if (f.flat.defined() && f.bucket + 2 <= newest) finish(f);
  }
}

void ZeroSharding::finish(InFlight& f) {
  c10::NoGradGuard no_grad;
  f.work.wait();
  f.work = Work();  // it holds the flat too
  if (f.owner == comm_->rank()) {
    if (f.late) {
      at::Tensor& sum = sums_[f.params.front()];
      sum.add_(f.flat.view(sum.sizes()));
    }
    // A bucket's flat stays alive through the owner's views (sums_).
  }
  f.flat = at::Tensor();
}

void ZeroSharding::finish_all() {
  for (auto& f : in_flight_) {
    if (f.flat.defined()) finish(f);
  }
  in_flight_.clear();
}

int64_t ZeroSharding::foreign_grad_bytes() const {
  int64_t total = 0;
  for (size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& g = params_[i].grad();
    if (owners_[i] != comm_->rank() && g.defined()) total += nbytes(g);
  }
  return total;
}

int64_t ZeroSharding::bytes_owned_by(int rank) const {
  int64_t total = 0;
  for (size_t i = 0; i < params_.size(); ++i) {
    total += owners_[i] == rank ? nbytes(params_[i]) : 0;
  }
  return total;
}

namespace {

/// Every rank must have gradients for the same parameters: the masks are
/// all-gathered and compared, so a mismatch fails on every rank alike.
void check_same_mask(Communicator& comm, const std::vector<bool>& had) {
  auto mask = at::empty({static_cast<int64_t>(had.size())}, at::kInt);
  for (size_t i = 0; i < had.size(); ++i) {
    mask[static_cast<int64_t>(i)] = had[i] ? 1 : 0;
  }
  const auto all = comm.allgather(mask.to(at::Device(comm.options().device())));
  for (int r = 0; r < comm.world_size(); ++r) {
    const auto theirs = all[r].to(at::kCPU);
    if (at::equal(theirs, mask)) continue;
    const auto diff = at::nonzero(theirs != mask)[0][0].item<int64_t>();
    const bool mine = had[static_cast<size_t>(diff)];
    LOWMEM_CHECK(false, "[dist] ZeRO: parameter ", diff,
                 " has a gradient on rank ", mine ? comm.rank() : r,
                 " but not on rank ", mine ? r : comm.rank(),
                 "; every rank must compute gradients for the same "
                 "parameters");
  }
}

}  // namespace

void ZeroSharding::reduce_after_overlap(std::vector<at::Tensor>& grads) {
  for (size_t i = 0; i < params_.size(); ++i) {
    had_grad_[i] = reduced_[i] || params_[i].grad().defined();
  }
  check_same_mask(*comm_, had_grad_);
  // Buckets that did not complete during backward (a parameter without a
  // gradient this time), in the same order on every rank.
  for (; next_launch_ < buckets_.size(); ++next_launch_) {
    if (!buckets_[next_launch_].launched) {
      launch_bucket(buckets_[next_launch_], false);
    }
  }
  finish_all();
  grads.clear();
  for (size_t i = 0; i < params_.size(); ++i) {
    if (owners_[i] != comm_->rank() || !sums_[i].defined()) continue;
    params_[i].mutable_grad() = sums_[i].div_(comm_->world_size());
    sums_[i] = at::Tensor();
    grads.push_back(params_[i].grad());
  }
}

void ZeroSharding::reduce_gradients(std::vector<at::Tensor>& grads) {
  c10::NoGradGuard no_grad;
  foreign_bytes_after_backward_ = foreign_grad_bytes();
  const bool overlapped = armed_;
  armed_ = false;
  if (overlapped) {
    reduce_after_overlap(grads);
    return;
  }
  std::vector<size_t> with_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    had_grad_[i] = params_[i].grad().defined();
    if (had_grad_[i]) with_grad.push_back(i);
  }
  LOWMEM_CHECK(with_grad.size() == grads.size(), "[dist] ZeRO: ", grads.size(),
               " gradients given, but ", with_grad.size(),
               " parameters have one");
  if (comm_->world_size() == 1) return;
  check_same_mask(*comm_, had_grad_);
  if (options_.stage() == 1) {
    allreduce_mean_bucketed(*comm_, grads, options_.bucket_cap_mb());
  } else {
    // grads[k] is the gradient of parameter with_grad[k].
    const auto cap = static_cast<int64_t>(options_.bucket_cap_mb() * 1048576);
    std::vector<std::vector<size_t>> by_owner(comm_->world_size());
    for (size_t k = 0; k < grads.size(); ++k) {
      by_owner[owners_[with_grad[k]]].push_back(k);
    }
    struct Pending {
      std::vector<size_t> pack;
      at::Tensor flat;
      Work work;
    };
    // Every rank issues the same reduces in the same order (owner, bucket),
    // at most two in flight (their flat copies are the extra memory).
    std::vector<std::pair<int, Pending>> launched;
    auto finish_one = [&](std::pair<int, Pending>& l) {
      l.second.work.wait();
      if (l.first == comm_->rank()) {
        l.second.flat.div_(comm_->world_size());
        unflatten(l.second.flat, l.second.pack, grads);
      }
      l.second.flat = at::Tensor();
      l.second.work = Work();  // it holds the flat too
    };
    for (int o = 0; o < comm_->world_size(); ++o) {
      for (auto& pack : packs_of(by_owner[o], grads, cap)) {
        if (launched.size() >= 2) finish_one(launched[launched.size() - 2]);
        at::Tensor flat = flatten(pack, grads);
        Work w = comm_->reduce_sum_async(flat, o);
        launched.emplace_back(o, Pending{std::move(pack), flat, w});
      }
    }
    for (auto& l : launched) {
      if (l.second.flat.defined()) finish_one(l);
    }
  }
  std::vector<at::Tensor> own;
  for (size_t k = 0; k < grads.size(); ++k) {
    const size_t i = with_grad[k];
    if (owners_[i] == comm_->rank()) {
      own.push_back(grads[k]);
    } else {
      params_[i].mutable_grad() = at::Tensor();
    }
  }
  grads = std::move(own);
}

std::vector<at::Tensor> ZeroSharding::gather_norms(
    const std::vector<at::Tensor>& local) {
  std::vector<size_t> with_grad;
  std::vector<size_t> owned;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!had_grad_[i]) continue;
    with_grad.push_back(i);
    if (owners_[i] == comm_->rank() || comm_->world_size() == 1) {
      owned.push_back(with_grad.size() - 1);
    }
  }
  LOWMEM_CHECK(local.size() == owned.size(), "[dist] ZeRO: ", local.size(),
               " local norms given, this rank owns ", owned.size(),
               " gradients");
  if (comm_->world_size() == 1) return local;
  // Each norm comes from its owner; the others add exact zeros (float64
  // holds every float32 / float64 norm exactly).
  auto buf = at::zeros({static_cast<int64_t>(with_grad.size())}, at::kDouble);
  for (size_t k = 0; k < owned.size(); ++k) {
    buf[static_cast<int64_t>(owned[k])] = local[k].to(at::kDouble);
  }
  buf = buf.to(at::Device(comm_->options().device()));
  comm_->allreduce_sum({buf});
  buf = buf.to(at::kCPU);
  std::vector<at::Tensor> out;
  out.reserve(with_grad.size());
  for (size_t k = 0; k < with_grad.size(); ++k) {
    const auto dtype =
        at::promote_types(params_[with_grad[k]].scalar_type(), at::kFloat);
    out.push_back(buf[static_cast<int64_t>(k)].to(dtype).to(
        params_[with_grad[k]].device()));
  }
  return out;
}

void ZeroSharding::broadcast_parameters() {
  if (comm_->world_size() == 1) return;
  c10::NoGradGuard no_grad;
  const auto cap = static_cast<int64_t>(options_.bucket_cap_mb() * 1048576);
  for (int o = 0; o < comm_->world_size(); ++o) {
    std::vector<size_t> members;
    for (size_t i = 0; i < params_.size(); ++i) {
      if (had_grad_[i] && owners_[i] == o) members.push_back(i);
    }
    for (const auto& pack : packs_of(members, params_, cap)) {
      at::Tensor flat;
      if (o == comm_->rank()) {
        flat = flatten(pack, params_);
      } else {
        int64_t n = 0;
        for (const size_t i : pack) n += params_[i].numel();
        flat = at::empty({n},
                         params_[pack.front()].options().requires_grad(false));
      }
      comm_->broadcast(flat, o);
      if (o != comm_->rank()) unflatten(flat, pack, params_);
    }
  }
}

}  // namespace lowmem::dist
