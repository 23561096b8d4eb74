#include "lowmem/train/data_parallel.h"

#include <torch/optim/optimizer.h>

#include <algorithm>
#include <unordered_map>

#include "lowmem/core/check.h"
#include "lowmem/dist/consistency.h"
#include "lowmem/dist/grad_sync.h"
#include "lowmem/io/checkpoint.h"
#include "lowmem/optim/extras.h"
#include "lowmem/optim/kronecker.h"

namespace lowmem::train {
namespace {

/// ZeRO groups (dist::partition_grouped) of the trainer's parameters: a
/// SINGD/KFAC layer's bias goes with its weight (one natural gradient
/// covers both); every other parameter stands alone.
std::vector<size_t> zero_groups(Trainer& trainer) {
  const std::vector<at::Tensor> params = trainer.parameters();
  std::vector<size_t> groups(params.size());
  for (size_t i = 0; i < params.size(); ++i) groups[i] = i;
  std::unordered_map<const void*, size_t> index;
  for (size_t i = 0; i < params.size(); ++i) {
    index.emplace(params[i].unsafeGetTensorImpl(), i);
  }
  auto index_of = [&](const at::Tensor& t) {
    const auto it = index.find(t.unsafeGetTensorImpl());
    return it == index.end() ? params.size() : it->second;
  };
  for (const auto& slot : trainer.optimizers()) {
    const auto* k =
        dynamic_cast<const optim::KroneckerOptimizer*>(slot.optimizer.get());
    if (k == nullptr) continue;
    for (const auto& l : k->layers()) {
      if (!l.bias.defined()) continue;
      const size_t w = index_of(l.weight), b = index_of(l.bias);
      if (w < params.size() && b < params.size()) {
        groups[std::max(w, b)] = std::min(w, b);
      }
    }
  }
  return groups;
}

}  // namespace

std::shared_ptr<dist::ZeroSharding> attach_data_parallel(
    Trainer& trainer, std::shared_ptr<dist::Communicator> comm,
    int64_t zero_stage, double bucket_cap_mb, bool zero_overlap) {
  LOWMEM_CHECK(comm != nullptr,
               "[dist] attach_data_parallel needs a "
               "communicator");
  LOWMEM_CHECK(zero_stage >= 0 && zero_stage <= 2,
               "[dist] ZeRO stage must be 0, 1 or 2, got ", zero_stage);
  // What optimizers compute from a worker's own rows outside the gradient
  // sync (SINGD/KFAC's curvature, GaLore's hook gradients, the projected
  // adapter's svd refresh gradient) is averaged over the workers.
  const optim::StatisticsSync statistics =
      dist::make_statistics_sync(comm, bucket_cap_mb);
  for (const auto& slot : trainer.optimizers()) {
    optim::set_statistics_sync(*slot.optimizer, statistics);
  }
  if (zero_stage == 0) {
    trainer.set_grad_sync(dist::make_trainer_grad_sync(comm, bucket_cap_mb));
    trainer.set_save_hook([comm](const std::function<void()>& write) {
      dist::run_on_main(*comm, write, "write a checkpoint");
    });
    return nullptr;
  }
  const std::vector<at::Tensor> params = trainer.parameters();
  auto zero = std::make_shared<dist::ZeroSharding>(
      comm, params,
      dist::ZeroOptions()
          .stage(static_cast<int>(zero_stage))
          .bucket_cap_mb(bucket_cap_mb)
          .overlap(zero_overlap),
      zero_groups(trainer));
  // Parameter -> index in the sharding (the trainer's parameter order).
  auto index = std::make_shared<std::unordered_map<const void*, size_t>>();
  for (size_t i = 0; i < params.size(); ++i) {
    index->emplace(params[i].unsafeGetTensorImpl(), i);
  }
  // Optimizers that take gradients the sync never sees step only their own
  // parameters (a tensor outside the trainer's list is every worker's).
  const optim::Ownership owns = [index, owners = zero->owners(),
                                 rank = comm->rank()](const at::Tensor& p) {
    const auto it = index->find(p.unsafeGetTensorImpl());
    return it == index->end() || owners[it->second] == rank;
  };
  for (const auto& slot : trainer.optimizers()) {
    optim::set_ownership(*slot.optimizer, owns);
  }
  // The hooks share ownership: the sharding lives as long as the trainer.
  trainer.set_grad_sync([zero](std::vector<at::Tensor>& grads) {
    zero->reduce_gradients(grads);
  });
  trainer.set_norm_sync([zero](const std::vector<at::Tensor>& norms) {
    return zero->gather_norms(norms);
  });
  // The owners broadcast what they updated (with a gradient in the sync, or
  // without: GaLore's hook modes, the projected adapter's svd refreshes);
  // then each optimizer hears of the steps other workers took on its
  // parameters (the projected adapter's rebases).
  Trainer* t = &trainer;
  trainer.set_after_update([zero, t, index] {
    for (const auto& slot : t->optimizers()) {
      for (const auto& p : optim::updated_outside_sync(*slot.optimizer)) {
        const auto it = index->find(p.unsafeGetTensorImpl());
        if (it != index->end()) zero->mark_updated(it->second);
      }
    }
    zero->broadcast_parameters();
    size_t k = 0;
    for (const auto& slot : t->optimizers()) {
      for (auto& group : slot.optimizer->param_groups()) {
        for (auto& p : group.params()) {
          if (zero->had_gradient(k) && !zero->owns(k)) {
            optim::stepped_elsewhere(*slot.optimizer, p);
          }
          ++k;
        }
      }
    }
  });
  trainer.set_before_backward(
      [zero](bool last) { zero->before_backward(last); });
  trainer.set_optimizer_shards(
      {comm->rank(), comm->world_size(), zero->owners()});
  // Every rank writes its shard into the staging directory, then rank 0
  // commits the step (weights, manifest last, rename, LATEST).
  trainer.set_save_hook([comm, t](const std::function<void()>& write) {
    const std::string& root = t->options().checkpoint_dir;
    const int64_t step = t->steps_done();
    dist::run_on_main(
        *comm, [&] { io::prepare_sharded_staging(root, step); },
        "prepare the sharded checkpoint of step " + std::to_string(step));
    dist::run_on_every_rank(
        *comm, [t] { t->save_optimizer_shard(); },
        "write its optimizer shard of step " + std::to_string(step));
    dist::run_on_main(*comm, write, "write a checkpoint");
  });
  return zero;
}

}  // namespace lowmem::train
