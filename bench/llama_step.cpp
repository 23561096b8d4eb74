// LLaMA training steps in GaLore's memory recipe (arXiv 2403.03507 §4/§5: a
// 7B model on one 24 GB GPU): bf16 weights, activation checkpointing per
// decoder layer, GaLore layer-wise (each weight updated inside backward and
// its gradient freed at once), GaLoreAdamW with fp32 state, projection rank
// 128 on the attention / MLP matrices and full AdamW on embed_tokens, the
// norms and lm_head. Deviation from the paper's 7B run: the projection basis
// is a seeded Gaussian sketch regenerated from its seed on every use (never
// stored) instead of an SVD of the gradient, because a 4096 x 11008 SVD per
// matrix (224 of them) takes minutes on two cores; the paper also used 8-bit
// Adam and rank 1024 there.
//
//   build/bench/llama_step --preset 60m --steps 3            (seconds)
//   build/bench/llama_step --preset 7b --steps 2 --threads 2  (~17 GiB)
//
// Prints, per step: wall and CPU seconds, loss, the step's tracked peak above
// what was live before it, peak RSS; then the tracked breakdown (weights /
// optimizer state / gradients alive / activation + temporaries peak) next to
// the analytic bytes full AdamW would need for the same model.
#include "lowmem/core/memory.h"
#include "lowmem/core/threads.h"
#include "lowmem/data/text.h"
#include "lowmem/models/llama.h"
#include "lowmem/optim/galore.h"
#include "lowmem/optim/galore_adamw.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace {

namespace lm = lowmem::models;
namespace lo = lowmem::optim;

double cpu_s() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
      .count();
}

double gib(int64_t b) {
  return static_cast<double>(b) / (1024.0 * 1024.0 * 1024.0);
}

struct Args {
  std::string preset = "60m";
  int steps = 2;
  int64_t seq = 256;
  int64_t batch = 1;
  int64_t rank = 128;
  int threads = 2;
  double lr = 1e-3;
  std::string data = "random";  // random | fortunes
  bool checkpointing = true;
};

[[noreturn]] void usage() {
  std::fprintf(
      stderr,
      "usage: llama_step [--preset 60m|130m|350m|1b|7b] [--steps N]"
      " [--seq T] [--batch B] [--rank R] [--threads N] [--lr LR]"
      " [--data random|fortunes] [--no-checkpointing]\n"
      "  LLAMA_STEP_PRESET in the environment sets the default preset.\n");
  std::exit(2);
}

Args parse(int argc, char** argv) {
  Args a;
  if (const char* env = std::getenv("LLAMA_STEP_PRESET"))
    a.preset = env;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc)
        usage();
      return argv[++i];
    };
    if (k == "--preset") {
      a.preset = value();
    } else if (k == "--steps") {
      a.steps = std::atoi(value().c_str());
    } else if (k == "--seq") {
      a.seq = std::atoll(value().c_str());
    } else if (k == "--batch") {
      a.batch = std::atoll(value().c_str());
    } else if (k == "--rank") {
      a.rank = std::atoll(value().c_str());
    } else if (k == "--threads") {
      a.threads = std::atoi(value().c_str());
    } else if (k == "--lr") {
      a.lr = std::atof(value().c_str());
    } else if (k == "--data") {
      a.data = value();
    } else if (k == "--no-checkpointing") {
      a.checkpointing = false;
    } else {
      usage();
    }
  }
  if (a.steps < 1 || a.seq < 1 || a.batch < 1 || a.rank < 1 ||
      (a.data != "random" && a.data != "fortunes"))
    usage();
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  lowmem::keep_freed_cpu_memory();
  lowmem::MemoryTracker tracker;  // before anything is allocated
  lowmem::set_default_threads(args.threads);
  at::manual_seed(0);

  auto cfg = lm::llama_preset(args.preset)
                 .dtype(at::kBFloat16)
                 .activation_checkpointing(args.checkpointing);
  const int64_t n_params = lm::llama_parameter_count(cfg);
  std::printf(
      "preset %s: hidden %lld, intermediate %lld, layers %lld, heads %lld, "
      "vocab %lld, %lld parameters; bf16 weights, checkpointing %s, batch "
      "%lld x %lld tokens (%s), GaLore layer-wise rank %lld (gaussian sketch, "
      "not stored), GaLoreAdamW fp32 state, lr %g, %d threads\n",
      args.preset.c_str(),
      static_cast<long long>(cfg.hidden_size()),
      static_cast<long long>(cfg.intermediate_size()),
      static_cast<long long>(cfg.num_hidden_layers()),
      static_cast<long long>(cfg.num_attention_heads()),
      static_cast<long long>(cfg.vocab_size()),
      static_cast<long long>(n_params),
      args.checkpointing ? "on" : "off",
      static_cast<long long>(args.batch),
      static_cast<long long>(args.seq),
      args.data.c_str(),
      static_cast<long long>(args.rank),
      args.lr,
      at::get_num_threads());
  std::fflush(stdout);

  auto t_build = std::chrono::steady_clock::now();
  auto model = std::make_shared<lm::Llama>(cfg);
  model->train();
  std::printf(
      "built in %.1f s; weights %.2f GiB tracked, RSS %.2f GiB\n",
      since(t_build),
      gib(lowmem::storage_bytes(model->parameters())),
      gib(lowmem::MemoryTracker::current_rss_bytes()));
  std::fflush(stdout);

  auto [projected, plain] = lo::GaLore::route(*model);
  const double lr = args.lr;
  lo::GaLore opt(
      projected,
      plain,
      [lr](std::vector<torch::optim::OptimizerParamGroup> g) {
        return std::make_unique<lo::GaLoreAdamW>(
            std::move(g), lo::GaLoreAdamWOptions(lr));
      },
      lo::GaLoreOptions()
          .projector(lowmem::projection::ProjectorOptions()
                         .rank(args.rank)
                         .update_proj_gap(200)  // GaLore's T
                         .scale(0.25)           // GaLore's alpha
                         .basis("gaussian")
                         .cache_sketch(false)
                         .seed(0))
          .layerwise(true));

  // Tokens: uniform over the vocabulary, or byte windows of the fortunes
  // corpus (ids < 256 of the 32000-entry vocabulary).
  std::optional<lowmem::data::TextBatches> text;
  if (args.data == "fortunes") {
    lowmem::data::TextCorpus corpus;
    text.emplace(
        corpus.train(),
        lowmem::data::TextBatchOptions().context(args.seq).batch_size(
            args.batch));
  }

  const auto params = model->parameters();
  const int64_t weight_bytes = lowmem::storage_bytes(params);
  int64_t first_step_peak = 0, later_step_peak = 0;
  double last_loss = 0.0;
  for (int s = 0; s < args.steps; ++s) {
    at::Tensor x, y;
    if (text) {
      auto b = text->next();
      x = b.input;
      y = b.target;
    } else {
      auto seq = at::randint(
          0, cfg.vocab_size(), {args.batch, args.seq + 1}, at::kLong);
      x = seq.narrow(1, 0, args.seq).contiguous();
      y = seq.narrow(1, 1, args.seq).contiguous();
    }
    auto scope = tracker.scope();
    const auto t0 = std::chrono::steady_clock::now();
    const double c0 = cpu_s();
    opt.zero_grad();
    at::Tensor loss = model->loss(x, y);
    const double t_fwd = since(t0);
    loss.backward();  // every weight is updated here, layer by layer
    opt.step();       // no-op in layer-wise mode
    last_loss = loss.item<double>();
    const double wall = since(t0), cpu = cpu_s() - c0;
    // The first step also creates the optimizer state; later ones only hold
    // activations, recomputation, one full gradient and temporaries.
    if (s == 0)
      first_step_peak = scope.peak_delta();
    else
      later_step_peak = std::max(later_step_peak, scope.peak_delta());
    std::printf(
        "step %d: %.1f s wall (forward %.1f s), %.1f s CPU, loss %.4f, step "
        "peak +%.2f GiB over %.2f GiB live, peak RSS %.2f GiB\n",
        s + 1,
        wall,
        t_fwd,
        cpu,
        last_loss,
        gib(scope.peak_delta()),
        gib(scope.start_bytes()),
        gib(lowmem::MemoryTracker::peak_rss_bytes()));
    std::fflush(stdout);
  }

  // Gradients still alive (layer-wise: none) and the tracked breakdown.
  std::vector<at::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined())
      grads.push_back(p.grad());
  const int64_t state_bytes = lowmem::storage_bytes(opt.state_tensors());
  int64_t plain_elems = 0;
  for (const auto& p : plain)
    plain_elems += p.numel();
  // Full AdamW on the same model: bf16 weights and gradients, fp32 m and v
  // (2 + 2 + 8 bytes per parameter; mixed precision with an fp32 master copy
  // would add 4 more).
  const int64_t adamw_bytes = 12 * n_params;
  std::printf(
      "\nmemory (tracked tensor bytes; MemoryTracker):\n"
      "  weights (bf16)                 %8.2f GiB\n"
      "  optimizer state (fp32)         %8.2f GiB  (AdamW on %lld embedding/"
      "norm/head params: %.2f GiB; GaLore moments: %.2f GiB)\n"
      "  gradients alive after the step %8.2f GiB\n"
      "  step 1 peak above weights      %8.2f GiB  (creates the state)\n"
      "  later steps: peak above weights+state %5.2f GiB  (activations, "
      "recompute, one full gradient at a time, temporaries; -1: one step)\n"
      "  tracked peak                   %8.2f GiB\n"
      "  peak RSS                       %8.2f GiB\n"
      "  full AdamW, same model         %8.2f GiB  (bf16 weights + bf16 "
      "grads + fp32 m, v: 12 B/param; before activations)\n"
      "  max full weight gradients alive at once: %lld\n"
      "final loss %.4f\n",
      gib(weight_bytes),
      gib(state_bytes),
      static_cast<long long>(plain_elems),
      gib(8 * plain_elems),
      gib(state_bytes - 8 * plain_elems),
      gib(lowmem::storage_bytes(grads)),
      gib(first_step_peak),
      args.steps > 1 ? gib(later_step_peak) : -1.0,
      gib(tracker.peak_bytes()),
      gib(lowmem::MemoryTracker::peak_rss_bytes()),
      gib(adamw_bytes),
      static_cast<long long>(opt.max_live_full_grads()),
      last_loss);
  return 0;
}
