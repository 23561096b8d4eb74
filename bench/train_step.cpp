// One full GPT training step (forward, loss, backward, AdamW update) at the
// two reference sizes of issue 3, timed as a plain program so that the same
// measurement can be repeated by bench/train_step.py under Python and both
// run side by side by bench/run_train_step.sh.
//
//   build/bench/train_step --size small --optim torch --steps 10
//
// Prints one JSON object: ms per step (median), tokens/s, achieved GFLOP/s
// (6 x matrix params x tokens + attention, see GPT::flops_per_token), peak
// tensor bytes (MemoryTracker, installed before the model is built) and peak
// RSS. Run one configuration per process: peak RSS is a process lifetime max.
#include "lowmem/core/memory.h"
#include "lowmem/core/threads.h"
#include "lowmem/models/gpt.h"
#include "lowmem/optim/adamw.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/optim/adamw.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace {

// Process CPU time (all threads), ms: robust to other load on a shared
// machine, unlike wall time; with --threads 1 it is the step's work.
double cpu_ms() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e3 +
         static_cast<double>(ts.tv_nsec) / 1e6;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Args {
  std::string size = "small";
  std::string optim = "torch";  // torch | lowmem
  int steps = 10;
  int warmup = 2;
  int threads = 0;
  bool checkpointing = false;
  bool tracker = true;
  bool keep_freed = true;
};

[[noreturn]] void usage() {
  std::fprintf(
      stderr,
      "usage: train_step [--size small|large] [--optim torch|lowmem]"
      " [--steps N] [--warmup N] [--threads N] [--checkpointing]"
      " [--no-tracker] [--no-keep-freed]\n");
  std::exit(2);
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc)
        usage();
      return argv[++i];
    };
    if (k == "--size") {
      a.size = value();
    } else if (k == "--optim") {
      a.optim = value();
    } else if (k == "--steps") {
      a.steps = std::atoi(value().c_str());
    } else if (k == "--warmup") {
      a.warmup = std::atoi(value().c_str());
    } else if (k == "--threads") {
      a.threads = std::atoi(value().c_str());
    } else if (k == "--no-tracker") {
      a.tracker = false;
    } else if (k == "--no-keep-freed") {
      a.keep_freed = false;  // glibc's default malloc policy
    } else if (k == "--checkpointing") {
      a.checkpointing = true;
    } else {
      usage();
    }
  }
  if ((a.size != "small" && a.size != "large") ||
      (a.optim != "torch" && a.optim != "lowmem") || a.steps < 1 ||
      a.warmup < 0) {
    usage();
  }
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  Args args = parse(argc, argv);
  if (args.keep_freed) lowmem::keep_freed_cpu_memory();
  // Installs the counting allocator before anything is allocated.
  std::optional<lowmem::MemoryTracker> tracker;
  if (args.tracker)
    tracker.emplace();
  lowmem::set_default_threads(args.threads);
  at::manual_seed(0);

  // Issue 3's sizes: (256, 4 layers, 4 heads, ctx 128, batch 16) and
  // (512, 8, 8, 256, batch 8).
  const bool small = args.size == "small";
  auto cfg = lowmem::models::GPTConfig()
                 .n_embd(small ? 256 : 512)
                 .n_layer(small ? 4 : 8)
                 .n_head(small ? 4 : 8)
                 .block_size(small ? 128 : 256)
                 .activation_checkpointing(args.checkpointing);
  const int64_t B = small ? 16 : 8, T = cfg.block_size();
  lowmem::models::GPT model(cfg);
  model.train();

  std::vector<at::Tensor> params = model.parameters();
  std::unique_ptr<torch::optim::Optimizer> opt;
  if (args.optim == "torch") {
    opt = std::make_unique<torch::optim::AdamW>(
        params, torch::optim::AdamWOptions(3e-4).weight_decay(0.1));
  } else {
    opt = std::make_unique<lowmem::optim::AdamW>(
        params, lowmem::optim::AdamWOptions(3e-4).weight_decay(0.1));
  }

  // A few fixed random byte batches, made before timing.
  std::vector<at::Tensor> xs, ys;
  for (int i = 0; i < 4; ++i) {
    at::Tensor seq = at::randint(0, 256, {B, T + 1}, at::kLong);
    xs.push_back(seq.narrow(1, 0, T).contiguous());
    ys.push_back(seq.narrow(1, 1, T).contiguous());
  }

  std::vector<double> ms, cpu, cpu_fwd, cpu_bwd, cpu_opt;
  double last_loss = 0.0;
  for (int s = 0; s < args.warmup + args.steps; ++s) {
    auto t0 = std::chrono::steady_clock::now();
    const double c0 = cpu_ms();
    for (auto& p : params)
      p.mutable_grad().reset();  // set_to_none
    at::Tensor loss = model.loss(xs[s % 4], ys[s % 4]);
    const double c1 = cpu_ms();
    loss.backward();
    const double c2 = cpu_ms();
    opt->step();
    last_loss = loss.item<double>();
    const double c3 = cpu_ms();
    auto t1 = std::chrono::steady_clock::now();
    if (s >= args.warmup) {
      ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      cpu.push_back(c3 - c0);
      cpu_fwd.push_back(c1 - c0);
      cpu_bwd.push_back(c2 - c1);
      cpu_opt.push_back(c3 - c2);
    }
  }
  const double wall = median(ms);
  const double tokens = static_cast<double>(B * T);
  const double flops = model.flops_per_token(T) * tokens;
  std::printf(
      "{\"impl\": \"cpp\", \"size\": \"%s\", \"optim\": \"%s\", "
      "\"checkpointing\": %s, \"threads\": %d, \"params\": %lld, "
      "\"ms_per_step\": %.1f, \"min_ms\": %.1f, \"cpu_ms_per_step\": %.1f, "
      "\"cpu_ms_fwd\": %.1f, \"cpu_ms_bwd\": %.1f, \"cpu_ms_opt\": %.1f, "
      "\"tokens_per_s\": %.0f, \"gflops\": %.1f, \"peak_tensor_bytes\": %lld, "
      "\"peak_rss_bytes\": %lld, \"final_loss\": %.4f}\n",
      args.size.c_str(),
      args.optim.c_str(),
      args.checkpointing ? "true" : "false",
      at::get_num_threads(),
      static_cast<long long>(lowmem::models::count_parameters(model)),
      wall,
      *std::min_element(ms.begin(), ms.end()),
      median(cpu),
      median(cpu_fwd),
      median(cpu_bwd),
      median(cpu_opt),
      tokens / (wall / 1e3),
      flops / (wall / 1e3) / 1e9,
      static_cast<long long>(tracker ? tracker->peak_bytes() : -1),
      static_cast<long long>(lowmem::MemoryTracker::peak_rss_bytes()),
      last_loss);
  return 0;
}
