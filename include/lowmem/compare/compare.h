// `lowmem compare`: trains the same model with every method lowmem offers and
// measures, side by side, what each costs (parameters, optimizer state, peak
// tensor bytes, peak RSS, step time) and what it reaches (loss / accuracy).
// Each method runs in its own forked child process, so RSS peaks are per
// method and a crash or Ctrl-C loses only that method. See docs/compare.md.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace lowmem::compare {

/// Version of the results.json / results.csv schema (docs/compare.md).
inline constexpr int kSchemaVersion = 1;

/// Everything a compare run needs. Sizes default to the 5-minute budget on a
/// 2-core machine; `full()` selects the longer, more conclusive run.
struct CompareOptions {
  // --- what to run
  // "memory" is the memory suite (LLaMA sizes x methods, planned and
  // measured); the others train methods side by side.
  std::vector<std::string> suites = {"memory", "pretrain", "finetune", "lm"};
  std::vector<std::string> methods;  // empty: all of the selected suites
  std::string out_dir = "runs/compare";
  std::string cache_dir;  // base-model cache; "" = <out_dir>/cache
  // The first seed; every method runs `seeds` times, with seeds seed,
  // seed + 1, ... (initial weights, adapter and head initialisation, batch
  // order, sketches). The finetune base model and the data subsets use
  // `seed` itself, so every run adapts the same base model.
  uint64_t seed = 0;
  int64_t seeds = 3;
  // Which of the seeds a run is (its seed is seed + seed_index); set by
  // run_compare for each run, not a flag.
  int64_t seed_index = 0;
  // Method runs at the same time (each its own child process with `threads`
  // torch threads); 0: the machine's cores / threads, at most 4. The
  // memory suite's measured steps run this many at once too.
  int64_t jobs = 0;
  // torch threads per method (<= 0: all cores). 1 by default: the default
  // models are tiny (width 64), and the measured default run took 3 min with
  // one thread, while two threads spun in libgomp under any other load
  // (docs/benchmarks/compare.md).
  int threads = 1;
  bool isolate = true;  // fork one child per method
  // Where each method trains: "cpu" or "cuda[:N]" (train::resolve_device,
  // checked before any work, in a child when isolating so that the parent
  // never initialises CUDA before fork()). Models, batches, evaluation and
  // optimizer state live there; the byte columns then are the CUDA caching
  // allocator's allocated bytes (peak RSS stays the host's). The finetune
  // base model is always trained on the CPU (one cache for every device).
  std::string device = "cpu";
  const std::atomic<bool>* stop = nullptr;  // set (e.g. by SIGINT) to stop

  // --- pretrain suite: byte-level GPT trained from scratch on text
  std::string text_path = "/usr/share/games/fortunes";
  int64_t gpt_width = 64;
  int64_t gpt_layers = 2;
  int64_t gpt_heads = 4;
  int64_t gpt_context = 64;
  int64_t gpt_batch = 16;
  // 200 (250 until the default run had to fit issue 19's ~6 minutes; the
  // learning-rate sweep of docs/benchmarks/compare.md ran at 250).
  int64_t pretrain_steps = 200;

  // --- finetune suite: ViT pretrained on Fashion-MNIST classes 0-4 (cached),
  // adapted on `finetune_examples` examples of classes 5-9
  std::string fashion_mnist_dir = "/usr/share/datasets/fashion-mnist";
  int64_t vit_width = 64;
  int64_t vit_layers = 2;
  int64_t vit_heads = 4;
  int64_t vit_patch = 7;
  int64_t vit_batch = 32;
  int64_t base_steps = 400;
  int64_t finetune_examples = 1000;
  int64_t finetune_steps = 120;  // 150 before, as pretrain_steps
  int64_t finetune_eval_examples =
      2000;  // test images of classes 5-9 (0: all 5000)

  // --- lm suite: a LLaMA with the pretrain GPT's width, layers, heads,
  // context and batch, on subword tokens, pretrained for lm_base_steps on the
  // files of text_path outside lm_domain (cached), fine-tuned for lm_steps on
  // the files named in lm_domain (comma-separated file names: fortune
  // categories), evaluated on their validation split (a domain shift)
  std::string lm_domain = "computers,debian,linux,linuxcookie,perl";
  int64_t lm_base_steps = 400;
  // 80 (was 150) keeps the default run near issue 19's ~6 minutes.
  int64_t lm_steps = 80;
  // The lm suite's tokenizer: "spm" trains a sentencepiece BPE model of
  // lm_vocab pieces (LLaMA's kind: byte fallback, digits split; text/
  // sentencepiece_trainer.h) on the lines of the base files' train split
  // only, so the held-out domain is new to the tokenizer too; cached beside
  // the base model. "bytes": byte-level (vocabulary 256, the suite before
  // the tokenizer landed). Anything else: a tokenizer.json / tokenizer.model
  // file or a folder holding one, used as is (its whole vocabulary).
  std::string lm_tokenizer = "spm";
  // 2048: about 3.3 bytes a token on fortunes, while the output layer of the
  // width-64 model stays cheap beside its blocks.
  int64_t lm_vocab = 2048;

  // --- memory suite: GaLore's LLaMA sizes x methods, planned by lowmem plan
  // (comma-separated presets), the sizes in memory_measure also trained for
  // memory_steps steps on random tokens and measured
  std::string memory_models = "60m,130m,350m,1b,7b";
  std::string memory_measure = "60m";  // 130m: 2.5x the time
  // the rows (method names as the table prints them, comma-separated) the
  // suite plans and measures; "": all of them
  std::string memory_methods;
  int64_t memory_batch = 1;
  int64_t memory_seq = 256;  // GaLore's sequence length
  std::string memory_dtype =
      "fp32";  // fp32 | bf16 (weights; activations follow)
  // 2: the first creates the state, the second is the steady-state peak.
  int64_t memory_steps = 2;
  std::string memory_budgets = "8GiB,24GiB,80GiB";

  // --- toy suite (tests and smoke checks only): MLP on synthetic regression
  int64_t toy_steps = 30;

  // --- shared
  int64_t eval_every = 0;       // 0: 5 evaluations per run
  int64_t eval_batches = 8;     // validation batches for the language model
  int64_t rank = 8;             // LoRA, LoTR, SNELL, projected adapter
  int64_t projection_rank = 0;  // GaLore, random sketch; 0: model width / 4
  // Peak learning rate of every optimizer (every param group) of every method
  // of the run; 0: each method's tuned default (src/compare/methods.cpp).
  // For learning-rate sweeps (docs/benchmarks/compare.md).
  double lr = 0;
  // Option overrides "section.field=value" (`--set`), applied in order (the
  // last of a key wins). The keys are `lowmem train`'s option-section keys
  // (came.beta3, adafactor.clip_threshold, adamw.beta2, ...): each changes
  // that one field of the method's own options, in every method that builds
  // that component (docs/compare.md, "Overrides"); compare's other defaults
  // stay. `lr` above applies after them (it sets every optimizer's rate).
  std::vector<std::string> overrides;
  // lowmem train's base_dtype and optim_bits for every method they apply to:
  // "nf4" puts the adapter methods (LoRA, LoTR, SNELL, projected adapter) on
  // a 4-bit NF4 base; 8 gives every method whose optimizer has 8-bit state
  // (adamw, galore_adamw, came) that state. Other methods run unchanged.
  std::string base_dtype = "auto";
  int64_t optim_bits = 0;
  // Global gradient-norm clipping before every optimizer step (torch's
  // clip_grad_norm_ over the trainable parameters); 0: off (the default, as
  // the learning rates were tuned).
  double clip_norm = 0;

  // --- outputs
  std::string gnuplot = "gnuplot";  // "" or not found: plots skipped
  bool python_baseline = false;
  std::string python = "/usr/bin/python3";
  std::string command_line;  // recorded in results and report

  /// Sets the longer run: 4-5x the steps (pretrain 1000, finetune 500, lm
  /// 400) and 4x the validation batches, same models.
  CompareOptions& full();

  /// Every option once, as v(key, field, flag, help): `key` names it in
  /// results.json ("gpt.width" nests as {"gpt": {"width": ...}}; "" = not
  /// recorded), `flag` is its `lowmem compare` flag ("" = set otherwise, e.g.
  /// --suite fills `suites`), `help` its flag's help. The CLI flags and the
  /// JSON reader and writer are generated from this list.
  template <class V>
  void for_each_field(V&& v) {
    v("suites", suites, "", "");
    v("methods", methods, "", "");
    v("", out_dir, "--out", "output directory");
    v("", cache_dir, "--cache", "base-model cache (default <out>/cache)");
    v("seed", seed, "--seed", "first seed (runs use seed, seed + 1, ...)");
    v("seeds", seeds, "--seeds",
      "runs per method, one per seed; claims need >= 2 for a verdict");
    v("", seed_index, "", "");
    v("jobs", jobs, "--jobs",
      "method runs at the same time (0: cores / threads, at most 4)");
    v("threads", threads, "--threads",
      "torch threads per method (0: all cores; default 1)");
    v("isolate", isolate, "", "");
    v("device", device, "--device",
      "where each method trains: cpu, cuda, cuda:N (memory columns: CUDA "
      "allocated bytes there)");
    v("text_path", text_path, "--text",
      "text file or folder (pretrain corpus)");
    v("gpt.width", gpt_width, "--gpt-width", "");
    v("gpt.layers", gpt_layers, "--gpt-layers", "");
    v("gpt.heads", gpt_heads, "--gpt-heads", "");
    v("gpt.context", gpt_context, "--gpt-context", "");
    v("gpt.batch", gpt_batch, "--gpt-batch", "");
    v("pretrain_steps", pretrain_steps, "--pretrain-steps", "");
    v("fashion_mnist_dir", fashion_mnist_dir, "--fashion-mnist", "");
    v("vit.width", vit_width, "--vit-width", "");
    v("vit.layers", vit_layers, "--vit-layers", "");
    v("vit.heads", vit_heads, "--vit-heads", "");
    v("vit.patch", vit_patch, "", "");
    v("vit.batch", vit_batch, "--vit-batch", "");
    v("base_steps", base_steps, "--base-steps",
      "steps of the finetune suite's base model (cached)");
    v("finetune_examples", finetune_examples, "--finetune-examples", "");
    v("finetune_steps", finetune_steps, "--finetune-steps", "");
    v("finetune_eval_examples", finetune_eval_examples,
      "--finetune-eval-examples",
      "test images of classes 5-9 to evaluate on (0: all 5000)");
    v("lm.domain", lm_domain, "--lm-domain",
      "files of --text held out as the lm suite's new domain");
    v("lm.base_steps", lm_base_steps, "--lm-base-steps",
      "steps of the lm suite's base model (cached)");
    v("lm.steps", lm_steps, "--lm-steps", "");
    v("lm.tokenizer", lm_tokenizer, "--lm-tokenizer",
      "spm (train a sentencepiece BPE on the base files, default), bytes, or "
      "a tokenizer file or folder");
    v("lm.vocab", lm_vocab, "--lm-vocab",
      "pieces of the trained sentencepiece tokenizer");
    v("memory.models", memory_models, "--memory-models",
      "LLaMA presets the memory suite plans (comma-separated)");
    v("memory.measure", memory_measure, "--memory-measure",
      "presets whose steps are also measured (\"\": none)");
    v("memory.methods", memory_methods, "--memory-methods",
      "rows of the memory suite, by the table's method names "
      "(comma-separated, e.g. \"LoRA r16,SINGD\"; \"\": all)");
    v("memory.batch", memory_batch, "--memory-batch", "");
    v("memory.seq", memory_seq, "--memory-seq", "tokens per row");
    v("memory.dtype", memory_dtype, "--memory-dtype", "fp32 or bf16");
    v("memory.steps", memory_steps, "--memory-steps",
      "measured training steps (the first creates the state)");
    v("memory.budgets", memory_budgets, "--memory-budgets",
      "budgets the summary reports (comma-separated, e.g. 24GiB)");
    v("toy_steps", toy_steps, "--toy-steps", "");
    v("eval_every", eval_every, "--eval-every", "0: five evaluations per run");
    v("eval_batches", eval_batches, "", "");
    v("rank", rank, "--rank",
      "rank of LoRA, LoTR, SNELL, the projected adapter");
    v("projection_rank", projection_rank, "--projection-rank",
      "rank of GaLore and the random sketch (0: width / 4)");
    v("lr", lr, "--lr",
      "peak learning rate of every method's optimizers (0: each method's "
      "tuned default; for sweeps)");
    v("overrides", overrides, "--set",
      "KEY=VALUE, repeatable: an option of `lowmem train`'s sections "
      "(came.beta3=0.999, adafactor.clip_threshold=1e9, adamw.beta2=0.95, "
      "galore.rank=8, ...) for every method that builds that component; "
      "compare's other settings stay (docs/compare.md)");
    v("base_dtype", base_dtype, "--base-dtype",
      "auto or nf4: the adapter methods on a 4-bit NF4 base (nn/nf4.h)");
    v("optim_bits", optim_bits, "--optim-bits",
      "0 (each optimizer's own), 8 or 32: 8-bit state for the methods whose "
      "optimizer has it (adamw, galore_adamw, came)");
    v("clip_norm", clip_norm, "--clip-norm",
      "clip the global gradient norm of the trainable parameters before "
      "every step (0: off)");
    v("gnuplot", gnuplot, "--gnuplot", "gnuplot executable (\"\": no plots)");
    v("python_baseline", python_baseline, "--python-baseline",
      "also train the pretrain GPT with Debian's python3-torch");
    v("python", python, "--python", "");
  }
};

/// One method as the registry knows it.
struct MethodInfo {
  std::string suite;        // "pretrain", "finetune", "toy"
  std::string name;         // "came", "galore-adamw", ...
  std::string label;        // "CAME"
  std::string paper;        // "CAME (arXiv 2307.02047)" or "" for baselines
  std::string description;  // one line: what is trained and how
  std::string unavailable;  // "" if it can run here, else why not
  /// The fields results.json records, v(key, field).
  template <class V>
  void for_each_field(V&& v) {
    v("suite", suite);
    v("name", name);
    v("label", label);
    v("paper", paper);
    v("description", description);
  }
};

/// Registry of the methods of `suites` (all known suites if empty), with
/// their availability under `options` (missing data, missing build pieces).
std::vector<MethodInfo> list_methods(
    const CompareOptions& options, const std::vector<std::string>& suites = {});

/// Checks `--set` overrides ("section.field=value") before any work:
/// train::ConfigError naming the key on a missing '=', an unknown key, a
/// value that does not parse, or a section no compare method builds. Range
/// checks (e.g. a beta outside [0, 1)) are the optimizers' own: a method
/// whose options they reject fails with that message.
void validate_overrides(const std::vector<std::string>& overrides);

/// Checks `options.device` before any work: train::ConfigError naming it when
/// it does not parse, is not cpu or cuda[:N], or this build or machine lacks
/// it. With `isolate`, a CUDA device is checked in a forked child.
void check_device(const CompareOptions& options);

/// The option sections `--set` reaches (those of the components compare's
/// methods build).
std::vector<std::string> override_sections();

/// One point of a training curve.
struct CurvePoint {
  int64_t step = 0;
  double wall_s = 0;      // training time so far (evaluation excluded)
  double train_loss = 0;  // loss of this step's batch
  std::optional<double> val_loss;
  std::optional<double> val_accuracy;
  template <class V>
  void for_each_field(V&& v) {
    v("step", step);
    v("wall_s", wall_s);
    v("train_loss", train_loss);
    v("val_loss", val_loss);
    v("val_accuracy", val_accuracy);
  }
};

/// One seed's run of a method: what varies between seeds.
struct SeedRun {
  uint64_t seed = 0;
  std::string status = "ok";  // ok | diverged | failed | skipped | interrupted
  std::string reason;
  int64_t steps = 0;
  double step_time_ms = 0;
  double final_train_loss = 0;
  std::optional<double> val_loss;
  std::optional<double> val_accuracy;
  std::vector<CurvePoint> curve;
  template <class V>
  void for_each_field(V&& v) {
    v("seed", seed);
    v("status", status);
    v("reason", reason);
    v("steps", steps);
    v("step_time_ms", step_time_ms);
    v("final_train_loss", final_train_loss);
    v("val_loss", val_loss);
    v("val_accuracy", val_accuracy);
    v("curve", curve);
  }
};

/// What one method cost and reached. Byte figures are exact tensor-storage
/// bytes (MemoryTracker) except the RSS figures.
struct MethodResult {
  MethodInfo info;
  std::string status = "ok";  // ok | diverged | failed | skipped | interrupted
  std::string reason;         // for anything but ok
  std::string detail;         // method settings ("rank 8, refresh 50")
  std::vector<std::string> overrides;  // the --set "key=value"s it applied
  std::string task;                    // "gpt 64x2 ctx 64 on fortunes"
  int64_t total_params = 0;
  int64_t trainable_params = 0;
  int64_t steps = 0;  // steps completed
  // memory, bytes
  int64_t optimizer_state_bytes = 0;
  int64_t frozen_weight_bytes = 0;
  int64_t trainable_weight_bytes = 0;
  int64_t gradient_bytes = 0;
  int64_t peak_tensor_bytes =
      0;  // peak live tensor bytes of the training steps
  int64_t eval_peak_tensor_bytes =
      0;                         // peak during evaluations (not in the above)
  int64_t activation_bytes = 0;  // peak - weights - gradients - state (>= 0)
  int64_t peak_rss_bytes = 0;    // child process peak RSS
  int64_t start_rss_bytes = 0;   // RSS when the method started
  // time
  double step_time_ms = 0;      // median over steps after warm-up
  double throughput = 0;        // items / s at the median step time
  std::string throughput_unit;  // "tokens/s" | "samples/s"
  double train_time_s = 0;      // training time (evaluation excluded)
  double wall_s = 0;            // whole child, model set-up included
  // quality: with several seeds, the mean over the seeds that finished
  // (status ok) and the sample standard deviation (n - 1; unset below 2)
  double final_train_loss = 0;  // mean of the last 10% of steps
  std::optional<double> val_loss;
  std::optional<double> val_accuracy;
  std::optional<double> val_loss_std;
  std::optional<double> val_accuracy_std;
  int64_t seeds_ok = 0;           // seeds whose run finished (status ok)
  std::vector<CurvePoint> curve;  // the first reported seed's curve
  /// Every seed's run, in seed order (empty for a result that was never
  /// merged, e.g. a single in-process run_method).
  std::vector<SeedRun> seed_runs;

  /// Every field once, v(key, field), `key` its results.json path
  /// ("memory.peak_tensor_bytes" nests); `info` is written apart (its fields
  /// sit at the top of the method's object).
  template <class V>
  void for_each_field(V&& v) {
    v("status", status);
    v("reason", reason);
    v("detail", detail);
    v("overrides", overrides);
    v("task", task);
    v("total_params", total_params);
    v("trainable_params", trainable_params);
    v("steps", steps);
    v("memory.optimizer_state_bytes", optimizer_state_bytes);
    v("memory.frozen_weight_bytes", frozen_weight_bytes);
    v("memory.trainable_weight_bytes", trainable_weight_bytes);
    v("memory.gradient_bytes", gradient_bytes);
    v("memory.activation_bytes", activation_bytes);
    v("memory.peak_tensor_bytes", peak_tensor_bytes);
    v("memory.eval_peak_tensor_bytes", eval_peak_tensor_bytes);
    v("memory.peak_rss_bytes", peak_rss_bytes);
    v("memory.start_rss_bytes", start_rss_bytes);
    v("time.step_time_ms", step_time_ms);
    v("time.throughput", throughput);
    v("time.throughput_unit", throughput_unit);
    v("time.train_time_s", train_time_s);
    v("time.wall_s", wall_s);
    v("quality.final_train_loss", final_train_loss);
    v("quality.val_loss", val_loss);
    v("quality.val_accuracy", val_accuracy);
    v("quality.val_loss_std", val_loss_std);
    v("quality.val_accuracy_std", val_accuracy_std);
    v("quality.seeds_ok", seeds_ok);
    v("curve", curve);
    v("seed_runs", seed_runs);
  }
};

/// Merges the runs of one method (one per seed, in seed order) into one
/// result: memory, time and curve from the first run that finished (else
/// the first), quality as mean and standard deviation over the finished
/// seeds, `seed_runs` listing each; the status is ok when every seed
/// finished, else the first of interrupted, failed, diverged (its reason
/// names the seed).
MethodResult merge_seeds(const std::vector<MethodResult>& runs);

/// The Python (Debian python3-torch) run of the pretrain GPT with AdamW.
struct PythonBaseline {
  std::string status = "skipped";  // ok | failed | skipped
  std::string reason;
  std::string torch_version;
  double step_time_ms = 0;
  double throughput = 0;  // tokens/s
  int64_t peak_rss_bytes = 0;
  int64_t total_params = 0;
  double final_train_loss = 0;
  double val_loss = 0;
  int64_t steps = 0;

  template <class V>
  void for_each_field(V&& v) {
    v("status", status);
    v("reason", reason);
    v("torch_version", torch_version);
    v("step_time_ms", step_time_ms);
    v("throughput", throughput);
    v("peak_rss_bytes", peak_rss_bytes);
    v("total_params", total_params);
    v("final_train_loss", final_train_loss);
    v("val_loss", val_loss);
    v("steps", steps);
  }
};

struct PlotSet {
  std::string status = "skipped";  // ok | skipped | failed
  std::string reason;
  std::vector<std::string> files;  // relative to out_dir
  template <class V>
  void for_each_field(V&& v) {
    v("status", status);
    v("reason", reason);
    v("files", files);
  }
};

/// A seed paper's headline claim, checked against this run's numbers.
struct ClaimCheck {
  std::string id;     // "came-vs-adafactor"
  std::string paper;  // "CAME (arXiv 2307.02047)"
  std::string claim;  // what the paper says, in one sentence
  // held | not held | inconclusive | not tested (docs/compare.md, "Paper
  // claims": the rule over the seeds)
  std::string status;
  std::string evidence;  // the numbers behind the verdict
  int64_t seeds = 0;     // paired seeds the verdict used
  template <class V>
  void for_each_field(V&& v) {
    v("id", id);
    v("paper", paper);
    v("claim", claim);
    v("status", status);
    v("evidence", evidence);
    v("seeds", seeds);
  }
};

/// One model size x method of the memory suite: lowmem plan's prediction of
/// a training step's peak and its parts (train/plan.h) and, at the sizes
/// measured, the tracked peak of real training steps (docs/compare.md,
/// "Memory suite").
struct MemoryRow {
  std::string model;          // LLaMA preset: "60m", ..., "7b"
  std::string method;         // "GaLore-AdamW"
  std::string keys;           // the lowmem train keys, space-separated
  std::string status = "ok";  // ok | not planned (plan cannot size it)
  std::string reason;
  int64_t params = 0, trainable_params = 0;
  // planned bytes at the peak (Plan): weights, optimizer state, gradients,
  // activations, temporaries (the batch included); their sum
  int64_t weights = 0, optimizer_state = 0, gradients = 0, activations = 0,
          temporaries = 0, peak = 0;
  std::string peak_at;  // the step's event of the peak
  // measured (only at the sizes in memory_measure): "" not measured | ok |
  // failed (measured_reason)
  std::string measured;
  std::string measured_reason;
  int64_t measured_peak = 0;    // tracked peak over the steps, bytes
  int64_t measured_rss = 0;     // the child's peak RSS
  double measured_step_ms = 0;  // median step time
  template <class V>
  void for_each_field(V&& v) {
    v("model", model);
    v("method", method);
    v("keys", keys);
    v("status", status);
    v("reason", reason);
    v("params", params);
    v("trainable_params", trainable_params);
    v("planned.weights", weights);
    v("planned.optimizer_state", optimizer_state);
    v("planned.gradients", gradients);
    v("planned.activations", activations);
    v("planned.temporaries", temporaries);
    v("planned.peak", peak);
    v("planned.peak_at", peak_at);
    v("measured.status", measured);
    v("measured.reason", measured_reason);
    v("measured.peak", measured_peak);
    v("measured.peak_rss", measured_rss);
    v("measured.step_ms", measured_step_ms);
  }
};

/// The memory suite of a run: LLaMA sizes x methods (docs/compare.md).
struct MemorySuite {
  std::string status = "skipped";  // ok | skipped | interrupted
  std::string reason;
  std::string dtype;  // weights' dtype of every row ("fp32", "bf16")
  int64_t batch_size = 0, seq_len = 0;
  int64_t measured_steps = 0;
  std::vector<int64_t> budgets;  // the budgets the summary reports, bytes
  std::vector<MemoryRow> rows;
  template <class V>
  void for_each_field(V&& v) {
    v("status", status);
    v("reason", reason);
    v("dtype", dtype);
    v("batch_size", batch_size);
    v("seq_len", seq_len);
    v("measured_steps", measured_steps);
    v("budgets", budgets);
    v("rows", rows);
  }
};

struct CompareResults {
  int schema_version = kSchemaVersion;
  std::string created;  // ISO 8601 UTC
  std::string command_line;
  std::string machine;  // "2 cores, Linux 6.1, libtorch 1.13.1"
  bool interrupted = false;
  double wall_s = 0;
  CompareOptions options;
  std::vector<std::string> notes;  // base-model training, cache reuse, ...
  std::vector<MethodResult> methods;
  std::vector<ClaimCheck> claims;
  PythonBaseline python;
  MemorySuite memory;
  PlotSet plots;

  /// The results.json fields (`methods`, whose entries flatten their
  /// MethodInfo, is written apart).
  template <class V>
  void for_each_field(V&& v) {
    v("schema_version", schema_version);
    v("created", created);
    v("command_line", command_line);
    v("machine", machine);
    v("interrupted", interrupted);
    v("wall_s", wall_s);
    v("options", options);
    v("notes", notes);
    v("claims", claims);
    v("python_baseline", python);
    v("memory", memory);
    v("plots", plots);
  }
};

/// Progress reports (the library never prints; tools/ renders these).
struct CompareCallbacks {
  /// A method starts (index counts from 0 over the whole plan).
  std::function<void(const MethodInfo&, int index, int count)> on_start;
  /// A training step of the running method finished.
  std::function<void(const MethodInfo&, int64_t step, int64_t steps,
                     double loss)>
      on_step;
  /// A method finished, was skipped, failed or was interrupted.
  std::function<void(const MethodResult&)> on_result;
  /// Free-form notes ("base model cached at ...").
  std::function<void(const std::string&)> on_note;
};

/// Runs the selected suites and methods and writes results.json,
/// results.csv, curves.csv, plots/ and report.md into options.out_dir
/// (rewritten after every method, so an interruption keeps what finished).
/// With `isolate`, call this before the process runs any parallel torch op
/// (libgomp does not survive fork() once its thread pool exists).
CompareResults run_compare(const CompareOptions& options,
                           const CompareCallbacks& callbacks = {});

/// Runs one method in the current process (what each child does).
MethodResult run_method(const MethodInfo& method, const CompareOptions& options,
                        const CompareCallbacks& callbacks = {});

/// The verdict over paired seeds. margins[i] is how far seed i's numbers are
/// on the claim's side of its threshold (>= 0: the claim holds on that
/// seed); m and s are their mean and sample standard deviation (n - 1).
/// "held" when m > s, "not held" when m < -s, else "inconclusive" (the mean
/// lies within one standard deviation of the threshold); fewer than 2 seeds
/// are "inconclusive" (no spread to judge by). docs/compare.md, "Paper
/// claims".
struct SeedVerdict {
  std::string status;  // held | not held | inconclusive
  double mean = 0, std = 0;
  int64_t n = 0;
};
SeedVerdict judge_margins(const std::vector<double>& margins);

/// One setting of a method next to its official code's or paper's value.
struct OfficialSetting {
  std::string suite, method;
  std::string key;        // lowmem train key: "snell.sparsity"
  std::string official;   // the official value: "0"
  std::string used;       // what this run's method row uses: "0.5"
  std::string source;     // where the official value comes from
  bool deviates = false;  // used != official
  std::string note;       // why it deviates ("" when it does not)
  template <class V>
  void for_each_field(V&& v) {
    v("suite", suite);
    v("method", method);
    v("key", key);
    v("official", official);
    v("used", used);
    v("source", source);
    v("deviates", deviates);
    v("note", note);
  }
};

/// The recorded official settings (src/compare/methods.cpp, docs/compare.md
/// "Official settings") with what `options`' method rows use (overrides
/// included), each method's "-tuned" row after its official one; the
/// report lists every deviation with its note.
std::vector<OfficialSetting> official_settings(const CompareOptions& options);

/// Paper claims computed from `methods` (never hard-coded verdicts).
std::vector<ClaimCheck> check_claims(const std::vector<MethodResult>& methods);

/// Writers (also used by run_compare). Paths are files, not directories.
std::string results_to_json(const CompareResults& results);
CompareResults results_from_json(const std::string& json);
void write_results_json(const CompareResults& results, const std::string& path);
void write_results_csv(const CompareResults& results, const std::string& path);
void write_curves_csv(const CompareResults& results, const std::string& path);
void write_report(const CompareResults& results, const std::string& path);
/// Writes the gnuplot scripts and data under <out_dir>/plots and runs
/// `gnuplot` (if it can be executed) to draw PNG and SVG files.
PlotSet make_plots(const CompareResults& results, const std::string& out_dir,
                   const std::string& gnuplot);

/// The methods of `suite` on the quality-vs-peak-memory frontier, cheapest
/// first: a finished method (a quality from at least one seed) is on it when
/// every method with a lower or equal peak tensor memory has a worse mean
/// quality (higher validation loss, or lower accuracy where the suite has
/// one). docs/compare.md, "Summary".
std::vector<const MethodResult*> quality_frontier(
    const std::vector<MethodResult>& methods, const std::string& suite);

/// The largest model of the memory suite whose planned peak for `method` is
/// at most `budget` bytes ("" if none, in the order of the rows).
std::string largest_fitting(const MemorySuite& memory,
                            const std::string& method, int64_t budget);

/// The one-screen summary the report and the CLI lead with: which methods
/// fit which budget at which size (memory suite), the frontier of each
/// training suite (best quality per peak memory) and the claims' verdicts.
std::string format_summary(const CompareResults& results, bool markdown);

/// The memory suite as a table: per model and method the planned parts,
/// the planned peak and, where measured, the measured peak.
std::string format_memory_table(const MemorySuite& memory, bool markdown);

/// The per-suite results table (plain text aligned for terminals, or
/// Markdown).
std::string format_table(const std::vector<MethodResult>& methods,
                         const std::string& suite, bool markdown);

/// The CSV header (column names, in order) of results.csv.
std::vector<std::string> csv_columns();

}  // namespace lowmem::compare
