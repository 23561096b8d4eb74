// The training configuration: trainer settings (top-level keys) plus one
// option Section per model, data source, method and optimizer (keys
// "<section>.<field>"). Sources are applied in order: defaults, a YAML recipe,
// then `key=value` overrides (the CLI's flags). Every key, its type and its
// default come from for_each_field visitors; there is no second list.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "lowmem/train/fields.h"

namespace lowmem::train {

/// Largest recipe file read (a recipe is a few dozen lines).
inline constexpr uint64_t kMaxRecipeBytes = 1 << 20;
/// Most intra-op threads `threads` accepts (a huge value made torch's
/// thread pool hang instead of failing).
inline constexpr int64_t kMaxThreads = 1024;

struct Config {
  // What to train.
  std::string model = "gpt";          // gpt | vit | mlp
  std::string data = "text";          // text | fashion-mnist
  std::string method = "full";        // full | lora | lotr | snell | galore |
                                      // projected-adapter
  std::string optimizer = "adamw";    // adamw | sgd | came | adafactor |
                                      // singd | kfac
  std::string aux_optimizer = "adamw";  // for parameters the main optimizer
                                        // does not take (route)
  std::string route = "auto";  // auto | all | matrices (see training.md)
  std::string targets;         // adapter target modules ("" = method default)
  // Modules (or parameters, e.g. vit's cls_token) trained beside an
  // adapter, PEFT's modules_to_save ("" = the model's default: vit "head",
  // mlp its output layer).
  std::string modules_to_save;
  std::string init;            // initial weights: a checkpoint (root or
                               // step dir) or a .safetensors file
  std::string init_exclude;    // regex: model tensors not taken from init
  // Frozen base weights: "auto" (the model's dtype) or "nf4" (QLoRA's 4-bit
  // NormalFloat with double-quantized scales, nn/nf4.h: every linear layer
  // but the output head and modules_to_save, dequantized per layer in
  // forward and backward). nf4 needs an adapter method (lora, lotr, snell,
  // projected-adapter).
  std::string base_dtype = "auto";
  // Optimizer state width: 0 = each optimizer section's optim_bits; 8 or 32
  // sets optim_bits of the optimizer and aux_optimizer sections that have
  // one (adamw, galore_adamw, came; optim/quant8.h).
  int64_t optim_bits = 0;
  // How long and how.
  int64_t steps = 300;
  int64_t batch_size = 32;
  int64_t accum_steps = 1;
  int64_t warmup_steps = 30;
  double min_lr_ratio = 0.1;
  double clip_norm = 1.0;
  int64_t eval_every = 100;
  int64_t eval_batches = 16;
  int64_t max_skips = 10;
  int64_t seed = 0;
  // Where the model, batches, optimizer state and evaluation live: "cpu",
  // "cuda", "cuda:N" (whatever c10::Device parses and this build and machine
  // have; checked by validate()). Checkpoints load onto it whatever device
  // wrote them.
  std::string device = "cpu";
  int64_t threads = 0;  // intra-op threads; 0 = OMP_NUM_THREADS if set (the
                        // data-parallel launcher sets 1), else all cores
  // Data-parallel runs (WORLD_SIZE > 1): seconds the rendezvous and every
  // collective may wait for the other workers before failing
  // (dist::InitOptions::timeout_s default).
  double dist_timeout_s = 300.0;
  // Output.
  int64_t log_every = 10;
  int64_t save_every = 0;  // 0: a checkpoint at the end only (if out_dir)
  int64_t keep_checkpoints = 2;
  std::string out_dir;   // checkpoints (out_dir/checkpoints) + config.yaml
  std::string resume;    // "" | "auto" (latest in out_dir) | a path
  bool overwrite = false;  // a fresh run may replace the run in out_dir
                           // (its checkpoints, metrics, adapter, config)
  std::string metrics;   // JSON Lines file ("" = out_dir/metrics.jsonl if
                         // out_dir is set)

  /// Top-level keys.
  template <class V>
  void for_each_field(V&& v) {
    v("model", model);
    v("data", data);
    v("method", method);
    v("optimizer", optimizer);
    v("aux_optimizer", aux_optimizer);
    v("route", route);
    v("targets", targets);
    v("modules_to_save", modules_to_save);
    v("init", init);
    v("init_exclude", init_exclude);
    v("base_dtype", base_dtype);
    v("optim_bits", optim_bits);
    v("steps", steps);
    v("batch_size", batch_size);
    v("accum_steps", accum_steps);
    v("warmup_steps", warmup_steps);
    v("min_lr_ratio", min_lr_ratio);
    v("clip_norm", clip_norm);
    v("eval_every", eval_every);
    v("eval_batches", eval_batches);
    v("max_skips", max_skips);
    v("seed", seed);
    v("device", device);
    v("threads", threads);
    v("dist_timeout_s", dist_timeout_s);
    v("log_every", log_every);
    v("save_every", save_every);
    v("keep_checkpoints", keep_checkpoints);
    v("out_dir", out_dir);
    v("resume", resume);
    v("overwrite", overwrite);
    v("metrics", metrics);
  }

  /// Option sections of every known component, with their defaults.
  std::vector<Section> sections;

  Config();
  Config(const Config& other);
  Config& operator=(const Config& other);

  /// The top-level fields (bound to this object).
  std::vector<Field> top_fields();
  /// The top-level field called `key` alone (set/get: without building the
  /// others), or nothing.
  std::optional<Field> top_field(const std::string& key);
  const Section* section(const std::string& name) const;
  /// Sets "steps" or "came.beta3" from text; ConfigError on unknown keys or
  /// bad values.
  void set(const std::string& key, const std::string& value);
  std::string get(const std::string& key);
  /// Every key ("steps", ..., "came.beta3", ...).
  std::vector<std::string> keys();

  /// Applies a YAML recipe (top-level scalars and one map per section).
  /// ConfigError naming the file and the key on anything unknown or invalid.
  void apply_yaml_file(const std::string& path);
  void apply_yaml(const std::string& text, const std::string& source);

  /// Range and name checks of the top-level keys, and whether `device` exists
  /// here (train::resolve_device; a CUDA device initialises CUDA). ConfigError.
  void validate() const;

  /// A copy with `optim_bits` (when not 0) written into the optim_bits of
  /// the optimizer and aux_optimizer sections; ConfigError when the main
  /// optimizer has no optim_bits.
  Config with_optim_bits() const;
  /// Whether the main optimizer has an optim_bits option (adamw,
  /// galore_adamw, came): what a nonzero `optim_bits` needs.
  bool optimizer_has_optim_bits() const;

  /// The sections this configuration uses (model, data, method, optimizers).
  std::vector<std::string> active_sections() const;
  /// YAML of the top-level keys and the active sections (`all`: every
  /// section); apply_yaml(to_yaml()) reproduces the configuration.
  std::string to_yaml(bool all = false) const;
};

/// Names accepted for each top-level choice.
std::vector<std::string> known_models();
std::vector<std::string> known_data();
std::vector<std::string> known_methods();
std::vector<std::string> known_optimizers();

}  // namespace lowmem::train
