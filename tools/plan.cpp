// `lowmem plan`: the predicted peak memory of a training step and its parts
// (train/plan.h), for the configuration the train flags or a recipe give;
// --budget says which methods fit and the largest batch that does; --table
// prints every LLaMA preset x method.
#include "lowmem/train/plan.h"

#include <cstdio>
#include <iostream>
#include <sstream>

#include "command.h"
#include "lowmem/core/dtype.h"
#include "lowmem/core/memory.h"
#include "lowmem/models/llama.h"

namespace lowmem::tools {
namespace {

struct PlanArgs {
  std::string dtype;  // "": the configuration's (llama.dtype)
  int64_t seq = 0;
  int64_t workers = 1;
  std::string budget;
  bool table = false;
};

c10::optional<c10::ScalarType> parse_dtype(const std::string& s) {
  if (s.empty()) return c10::nullopt;
  const auto t = dtype_from_name(s);
  if (t.has_value() && *t != at::kDouble) return *t;
  throw train::ConfigError("--dtype must be fp32, bf16 or fp16, got '" + s +
                           "'");
}

std::string gib(int64_t b) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f", static_cast<double>(b) / (1 << 30));
  return buf;
}

train::Config with_method(train::Config c, const train::PlanMethod& m) {
  for (const auto& kv : m.keys) {
    const auto eq = kv.find('=');
    c.set(kv.substr(0, eq), kv.substr(eq + 1));
  }
  return c;
}

// One row per method: the parts in GiB, the peak and, with a budget,
// whether it fits and the largest batch that does.
void print_methods(const train::Config& base, const train::PlanOptions& o,
                   int64_t budget) {
  std::printf("%-20s %8s %8s %8s %8s %8s %8s%s\n", "method (GiB)", "weights",
              "grads", "state", "activ.", "temp.", "peak",
              budget > 0 ? "  fits  max batch" : "");
  for (const auto& m : train::plan_methods()) {
    const train::Config c = with_method(base, m);
    const train::Plan p = train::plan(c, o);
    std::printf("%-20s %8s %8s %8s %8s %8s %8s", m.name.c_str(),
                gib(p.weights).c_str(), gib(p.gradients).c_str(),
                gib(p.optimizer_state).c_str(), gib(p.activations).c_str(),
                gib(p.transient).c_str(), gib(p.peak).c_str());
    if (budget > 0) {
      std::printf("  %-4s  %9lld", p.peak <= budget ? "yes" : "no",
                  static_cast<long long>(train::largest_batch(c, o, budget)));
    }
    std::printf("\n");
  }
  std::fflush(stdout);
}

int run_plan(const ConfigFlags& flags, const PlanArgs& a) {
  train::Config config = flags.resolve();
  if (a.workers < 1) {
    throw train::ConfigError("--workers must be >= 1, got " +
                             std::to_string(a.workers));
  }
  const auto o = train::PlanOptions()
                     .dtype(parse_dtype(a.dtype))
                     .seq_len(a.seq)
                     .workers(a.workers);
  const int64_t budget = a.budget.empty() ? 0 : train::parse_bytes(a.budget);
  const std::string dtype = !a.dtype.empty() ? a.dtype
                            : config.model == "llama"
                                ? config.get("llama.dtype")
                                : "float32";
  if (a.table) {
    for (const auto& preset : models::llama_preset_names()) {
      train::Config c = config;
      c.model = "llama";
      c.set("llama.preset", preset);
      std::cout << "\nLLaMA " << preset << " (" << dtype << ", batch "
                << c.batch_size << ")\n";
      print_methods(c, o, budget);
    }
    return kExitOk;
  }
  const train::Plan p = train::plan(config, o);
  std::cout << "model " << config.model << ", method " << config.method
            << ", optimizer " << config.optimizer << ", " << dtype
            << " weights\n"
            << p.to_string();
  if (budget > 0) {
    std::cout << "\nbudget " << format_bytes(budget) << ": this configuration "
              << (p.peak <= budget ? "fits" : "does not fit")
              << "; largest batch that fits: "
              << train::largest_batch(config, o, budget) << "\n\n";
    print_methods(config, o, budget);
  }
  return kExitOk;
}

const RegisterCommand kPlan{Command{
    "plan",
    "Predict the peak memory of a training step and its parts without "
    "building the model (train/plan.h); --budget: which methods fit",
    [](CLI::App& sub) -> std::function<int()> {
      auto flags = std::make_shared<ConfigFlags>(sub);
      auto a = std::make_shared<PlanArgs>();
      sub.add_option("--dtype", a->dtype,
                     "Weights' dtype: fp32, bf16, fp16 (default: the "
                     "configuration's, llama.dtype)")
          ->group("Plan");
      sub.add_option("--seq", a->seq,
                     "Tokens per row (0: the model's context, llama.context)")
          ->group("Plan");
      sub.add_option("--workers", a->workers,
                     "Data-parallel workers: with --zero 1|2 the optimizer "
                     "state is planned per worker (default 1)")
          ->group("Plan");
      sub.add_option("--budget", a->budget,
                     "Memory budget (24GiB, 512MiB, 1.5GB): which methods "
                     "fit and the largest batch that does")
          ->group("Plan");
      sub.add_flag("--table", a->table, "Every LLaMA preset (60m..7b) x method")
          ->group("Plan");
      return [flags, a] { return run_plan(*flags, *a); };
    }}};

}  // namespace
}  // namespace lowmem::tools
