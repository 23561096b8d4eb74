// Memory relations of the GaLore forms on a tiny GPT (exact MemoryTracker
// bytes; bench/galore_memory.cpp measures the same on a larger GPT): the
// adapter form's step peak is below the GaLore form's (it never forms full
// weight gradients), the layer-wise form never holds more gradient bytes than
// its largest parameter's, and the optimizer state is ordered
// adapter (uncached sketch) < GaLore < full AdamW. One sequence of 8 tokens,
// so that weights and gradients, not activations, set the step's peak (the
// regime GaLore is for); gradients are dropped between steps with
// clear_grads(), as the trainer does, so the result is the same on LibTorch
// 1.x (whose zero_grad() keeps zeroed gradients) and 2.x.
#include "galore_test_util.h"
#include "lowmem/core/memory.h"
#include "lowmem/models/gpt.h"
#include "lowmem/optim/extras.h"

using namespace galore_test;
namespace lp = lowmem::projection;

namespace {

enum class Form { kAdamW, kGaLore, kLayerwise, kAdapter };

struct Measured {
  int64_t state = 0, peak = 0, live_grads = 0, largest_param = 0;
  int64_t full_grads_seen = 0;  // slot base weights with a .grad after backward
};

std::vector<at::Tensor> trainable(torch::nn::Module& m) {
  std::vector<at::Tensor> out;
  for (auto& p : m.parameters())
    if (p.requires_grad()) out.push_back(p);
  return out;
}

Measured measure(Form form) {
  lowmem::MemoryTracker tracker;
  const int64_t base = tracker.current_bytes();
  torch::manual_seed(0);
  auto net = std::make_shared<lowmem::models::GPT>(
      lowmem::models::GPTConfig().n_layer(2).n_embd(64).n_head(4).block_size(32));
  auto idx = torch::randint(256, {1, 8}, torch::kLong);
  auto target = torch::randint(256, {1, 8}, torch::kLong);
  auto po = lp::ProjectorOptions().rank(16).update_proj_gap(50);
  Measured out;
  for (auto& p : net->parameters())
    out.largest_param = std::max(out.largest_param, lowmem::storage_bytes({p}));
  std::unique_ptr<torch::optim::Optimizer> opt;
  std::vector<std::shared_ptr<lpj::ProjectedLinear>> layers;
  if (form == Form::kAdamW) {
    opt = std::make_unique<torch::optim::AdamW>(
        trainable(*net), torch::optim::AdamWOptions(1e-3).weight_decay(0.0));
  } else if (form == Form::kAdapter) {
    layers =
        lpj::inject_projected(*net, po.basis("orthogonal").cache_sketch(false));
    opt = std::make_unique<lo::ProjectedAdapterOptimizer>(
        layers, plain_params(*net, layers), adamw(1e-3));
  } else {
    auto [proj, plain] = lo::GaLore::route(*net);
    opt = std::make_unique<lo::GaLore>(
        proj, plain, adamw(1e-3),
        lo::GaLoreOptions().projector(po).layerwise(form == Form::kLayerwise));
  }
  auto params = trainable(*net);
  for (int t = 0; t < 3; ++t) {
    auto scope = tracker.scope();
    lowmem::optim::before_forward(*opt);
    lowmem::optim::clear_grads(*opt);
    // At each gradient's arrival: every .grad alive plus the incoming one.
    std::vector<unsigned> hooks;
    for (auto& p : params)
      hooks.push_back(p.register_hook([&](const at::Tensor& g) {
        std::vector<at::Tensor> live{g};
        for (auto& q : params) live.push_back(q.grad());
        if (t > 0) out.live_grads = std::max(out.live_grads, lowmem::storage_bytes(live));
      }));
    net->loss(idx, target).backward();
    for (size_t i = 0; i < params.size(); ++i) params[i].remove_hook(hooks[i]);
    for (auto& l : layers) out.full_grads_seen += l->base_weight().grad().defined();
    opt->step();
    // Step 0 builds the optimizer state and the bases; measure steps 1, 2.
    if (t > 0) out.peak = std::max(out.peak, scope.peak_bytes() - base);
  }
  out.state = lowmem::optim::state_bytes(*opt);
  return out;
}

}  // namespace

TEST(GaLoreMemory, TinyGptFormsKeepTheirMemoryRelations) {
  const auto adamw_ = measure(Form::kAdamW), galore = measure(Form::kGaLore),
             layerwise = measure(Form::kLayerwise), adapter = measure(Form::kAdapter);
  EXPECT_LT(adapter.peak, galore.peak);
  EXPECT_LT(galore.peak, adamw_.peak);
  EXPECT_LE(layerwise.live_grads, layerwise.largest_param);
  EXPECT_GT(layerwise.live_grads, 0);
  // Without the per-layer freeing every gradient is alive at once.
  EXPECT_GT(galore.live_grads, 4 * galore.largest_param);
  EXPECT_LT(layerwise.peak, galore.peak);
  EXPECT_EQ(adapter.full_grads_seen, 0);
  EXPECT_LT(adapter.state, galore.state);
  EXPECT_LT(galore.state, adamw_.state);
}
