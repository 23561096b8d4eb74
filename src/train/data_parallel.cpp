#include "lowmem/train/data_parallel.h"

#include <torch/optim/optimizer.h>

#include "lowmem/core/check.h"
#include "lowmem/dist/consistency.h"
#include "lowmem/dist/grad_sync.h"
#include "lowmem/io/checkpoint.h"
#include "lowmem/optim/galore.h"
#include "lowmem/optim/galore_adapter.h"
#include "lowmem/optim/kfac.h"
#include "lowmem/optim/singd.h"

namespace lowmem::train {
namespace {

/// Why `opt` cannot be sharded by ZeroSharding, or "" if it can.
std::string unshardable(const torch::optim::Optimizer& opt) {
  if (dynamic_cast<const optim::SINGD*>(&opt) != nullptr ||
      dynamic_cast<const optim::KFAC*>(&opt) != nullptr) {
    return "it preconditions whole layers with factors built from every "
           "worker's own rows";
  }
  if (const auto* g = dynamic_cast<const optim::GaLore*>(&opt)) {
    if (g->options().layerwise() || g->options().accumulation_steps() > 1) {
      return "GaLore's layer-wise / accumulation mode steps inside backward, "
             "before any gradient is reduced";
    }
  }
  if (dynamic_cast<const optim::ProjectedAdapterOptimizer*>(&opt) != nullptr) {
    return "the projected adapter rebases every layer on its own schedule";
  }
  return "";
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
  if (zero_stage == 0) {
    trainer.set_grad_sync(dist::make_trainer_grad_sync(comm, bucket_cap_mb));
    trainer.set_save_hook([comm](const std::function<void()>& write) {
      dist::run_on_main(*comm, write, "write a checkpoint");
    });
    return nullptr;
  }
  for (const auto& slot : trainer.optimizers()) {
    const std::string why = unshardable(*slot.optimizer);
    LOWMEM_CHECK(why.empty(), "[dist] ZeRO stage ", zero_stage,
                 " cannot shard optimizer '", slot.name, "': ", why,
                 " (use dist.zero_stage 0)");
  }
  auto zero = std::make_shared<dist::ZeroSharding>(
      comm, trainer.parameters(),
      dist::ZeroOptions()
          .stage(static_cast<int>(zero_stage))
          .bucket_cap_mb(bucket_cap_mb)
          .overlap(zero_overlap));
  // The hooks share ownership: the sharding lives as long as the trainer.
  trainer.set_grad_sync([zero](std::vector<at::Tensor>& grads) {
    zero->reduce_gradients(grads);
  });
  trainer.set_norm_sync([zero](const std::vector<at::Tensor>& norms) {
    return zero->gather_norms(norms);
  });
  trainer.set_after_update([zero] { zero->broadcast_parameters(); });
  trainer.set_before_backward(
      [zero](bool last) { zero->before_backward(last); });
  trainer.set_optimizer_shards(
      {comm->rank(), comm->world_size(), zero->owners()});
  // Every rank writes its shard into the staging directory, then rank 0
  // commits the step (weights, manifest last, rename, LATEST).
  Trainer* t = &trainer;
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
