// The memory suite of `lowmem compare`: GaLore's LLaMA sizes x the methods,
// each planned by lowmem plan (train/plan.h) and, at the small sizes,
// measured over real training steps in a forked child (the tracked peak as
// run_method measures it). docs/compare.md, "Memory suite".
#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <sstream>

#include "internal.h"
#include "lowmem/core/check.h"
#include "lowmem/core/memory.h"
#include "lowmem/core/threads.h"
#include "lowmem/models/llama.h"
#include "lowmem/train/plan.h"
#include "lowmem/train/trainer.h"

namespace lowmem::compare {
namespace {

using Keys = std::vector<std::string>;

// GaLore's rank per model size (arXiv 2403.03507, Table 2: 128 for 60M, 256
// for 130M and 350M, 512 for 1B; §5.4: 1024 for 7B).
std::string galore_rank(const std::string& model) {
  if (model == "60m") return "128";
  if (model == "130m" || model == "350m") return "256";
  if (model == "1b") return "512";
  return "1024";
}

}  // namespace

namespace detail {

std::vector<MemoryMethod> memory_methods(const std::string& model) {
  const std::string all =
      "targets=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
  const std::string r = galore_rank(model);
  const Keys galore = {"method=galore",
                       "optimizer=galore_adamw",
                       "aux_optimizer=galore_adamw",
                       "galore.targets=(attn|mlp)",
                       "galore.rank=" + r,
                       "galore.scale=0.25"};
  Keys layerwise = galore;
  layerwise.push_back("galore.layerwise=true");
  Keys galore_came = galore;
  galore_came[1] = "optimizer=came";
  galore_came[2] = "aux_optimizer=came";
  return {
      {"AdamW", {"method=full", "optimizer=adamw"}},
      {"AdamW 8-bit", {"method=full", "optimizer=adamw", "adamw.optim_bits=8"}},
      {"Adafactor", {"method=full", "optimizer=adafactor"}},
      {"CAME", {"method=full", "optimizer=came"}},
      {"GaLore-AdamW", galore},
      {"GaLore-AdamW layer-wise", layerwise},
      {"GaLore-CAME", galore_came},
      {"Random-sketch adapter",
       {"method=projected-adapter", "optimizer=galore_adamw",
        "aux_optimizer=galore_adamw", "projected_adapter.rank=" + r,
        "projected_adapter.basis=orthogonal",
        "projected_adapter.cache_sketch=false",
        "projected_adapter.freeze_rest=false", all}},
      {"LoRA r16", {"method=lora", "optimizer=adamw", all, "lora.r=16"}},
      {"QLoRA r16 (NF4 base)",
       {"method=lora", "optimizer=adamw", all, "lora.r=16", "base_dtype=nf4"}},
      {"LoTR r16", {"method=lotr", "optimizer=adamw", all, "lotr.rank=16"}},
      {"SNELL r16", {"method=snell", "optimizer=adamw", all, "snell.r=16"}},
      {"SINGD", {"method=full", "optimizer=singd", "aux_optimizer=adamw"}},
  };
}

train::Config memory_config(const std::string& model, const Keys& keys,
                            const CompareOptions& o) {
  train::Config c;
  c.model = "llama";
  c.batch_size = o.memory_batch;
  c.clip_norm = 0;
  c.set("llama.preset", model);
  c.set("llama.context", std::to_string(o.memory_seq));
  for (const auto& kv : keys) {
    const auto eq = kv.find('=');
    c.set(kv.substr(0, eq), kv.substr(eq + 1));
  }
  return c;
}

c10::ScalarType memory_dtype(const CompareOptions& o) {
  if (o.memory_dtype == "fp32") return at::kFloat;
  if (o.memory_dtype == "bf16") return at::kBFloat16;
  throw ConfigError("--memory-dtype must be fp32 or bf16, got '" +
                    o.memory_dtype + "'");
}

MemoryRow plan_row(const std::string& model, const MemoryMethod& m,
                   const CompareOptions& o) {
  MemoryRow row;
  row.model = model;
  row.method = m.name;
  for (const auto& k : m.keys) row.keys += (row.keys.empty() ? "" : " ") + k;
  try {
    const train::Config c = memory_config(model, m.keys, o);
    const train::Plan p = train::plan(
        c, train::PlanOptions().dtype(memory_dtype(o)).seq_len(o.memory_seq));
    row.params = p.params;
    row.trainable_params = p.trainable_params;
    row.weights = p.weights;
    row.optimizer_state = p.optimizer_state;
    row.gradients = p.gradients;
    row.activations = p.activations;
    row.temporaries = p.transient;
    row.peak = p.peak;
    row.peak_at = p.peak_at;
  } catch (const ConfigError& e) {
    row.status = "not planned";
    row.reason = e.what();
  }
  return row;
}

namespace {

// Random token rows (the memory of a step does not depend on the text).
class RandomTokens final : public data::BatchSource {
 public:
  RandomTokens(int64_t batch, int64_t seq, int64_t vocab)
      : batch_(batch), seq_(seq), vocab_(vocab) {}
  data::Batch next() override {
    ++position_;
    at::Tensor s = at::randint(0, vocab_, {batch_, seq_ + 1}, at::kLong);
    return {s.narrow(1, 0, seq_).contiguous(),
            s.narrow(1, 1, seq_).contiguous()};
  }
  int64_t position() const override { return position_; }
  void seek(int64_t p) override { position_ = p; }
  std::string describe() const override { return "random tokens"; }

 private:
  int64_t batch_, seq_, vocab_, position_ = 0;
};

}  // namespace

std::string measure_memory(const std::string& model, const MemoryMethod& m,
                           const CompareOptions& o) {
  set_default_threads(o.threads);
  MemoryTracker::install();
  MemoryTracker tracker;
  MemoryScope setup_scope = tracker.scope();
  torch::manual_seed(o.seed);
  const train::Config c = memory_config(model, m.keys, o);
  auto net = train::build_model(c);
  net->to(memory_dtype(o));
  train::MethodSetup setup =
      train::setup_method(c, net, c10::Device(c10::kCPU));
  train::TrainerOptions t;
  t.max_steps = o.memory_steps;
  t.warmup_steps = 0;
  t.clip_norm = 0;
  t.eval_every = 0;
  t.log_every = o.memory_steps + 1;
  train::Trainer trainer(
      net, [net](const data::Batch& b) { return net->loss(b.input, b.target); },
      setup.optimizers, t);
  RandomTokens source(o.memory_batch, o.memory_seq,
                      models::llama_preset(model).vocab_size());
  std::vector<double> ms;
  MemoryScope train_scope = tracker.scope();
  for (int64_t s = 0; s < o.memory_steps; ++s) {
    const auto t0 = std::chrono::steady_clock::now();
    trainer.step(source);
    ms.push_back(std::chrono::duration<double, std::milli>(
                     std::chrono::steady_clock::now() - t0)
                     .count());
  }
  const int64_t peak = train_scope.peak_bytes() - setup_scope.start_bytes();
  // median of the steps after the first (which creates the state)
  std::vector<double> later(ms.begin() + (ms.size() > 1 ? 1 : 0), ms.end());
  std::sort(later.begin(), later.end());
  std::ostringstream out;
  out << peak << " " << MemoryTracker::peak_rss_bytes() << " "
      << later[later.size() / 2];
  return out.str();
}

}  // namespace detail
}  // namespace lowmem::compare
