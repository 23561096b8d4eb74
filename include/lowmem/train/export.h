// `lowmem export`: a trained Llama-family model (a training run directory, a
// checkpoint, or `lowmem merge`'s output) written for other tools:
//   hf:   the merged model in transformers' save_pretrained layout
//         (interop/hf_checkpoint.h: config.json, model.safetensors or shards
//         with model.safetensors.index.json) plus the tokenizer files of the
//         source Hugging Face directory (tokenizer.json,
//         tokenizer_config.json, special_tokens_map.json, tokenizer.model,
//         generation_config.json, ... whichever exist);
//   peft: the adapter in PEFT's layout for the base model (interop/peft.h);
//   gguf: the merged model for llama.cpp (interop/gguf.h).
// The run's configuration (the checkpoint's info.txt) rebuilds the model:
// the base from hf.path (model hf) or the seed (model llama), the method's
// adapters injected as training injected them, then every tensor of the
// checkpoint loaded, so full fine-tunes, GaLore and adapter runs all export
// the weights they ended with. Outputs are written under a temporary name
// next to `out` and renamed into place; an existing `out` is refused unless
// `overwrite` (then replaced only once the new output is complete).
#pragma once

#include <torch/arg.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "lowmem/train/config.h"

namespace lowmem::models {
class Model;
}
namespace lowmem::adapters {
class AdapterModel;
}

namespace lowmem::train {

/// A trained model rebuilt from what a run left on disk.
struct TrainedModel {
  Config config;  // the run's, with device cpu
  std::shared_ptr<models::Model> model;
  /// lora, lotr, snell: the adapters, loaded and not merged (else nullptr).
  std::shared_ptr<adapters::AdapterModel> adapter;
  /// Where the weights came from (a checkpoint step directory, a merged
  /// model.safetensors).
  std::string weights;
};

/// Rebuilds the model of `source`: a run directory (out_dir: its
/// checkpoints/), a checkpoints root or step directory (manifest.json or
/// LATEST, with info.txt), or a `lowmem merge` output (config.yaml +
/// model.safetensors). ConfigError when `source` is none of these or its
/// method cannot be rebuilt (projected-adapter); c10::Error on bad files.
TrainedModel load_trained_model(const std::string& source);

struct ExportOptions {
  /// "hf", "peft" or "gguf".
  TORCH_ARG(std::string, format) = "hf";
  /// hf, peft: stored dtype: "auto" (hf: config.json's torch_dtype of the
  /// source directory when the model came from one, else the parameters'
  /// dtype; peft: the adapter's), "float32", "float16", "bfloat16".
  TORCH_ARG(std::string, dtype) = "auto";
  /// hf: save_pretrained's max_shard_size: bytes, or a number with KB, MB,
  /// GB (10^3k) or KiB, MiB, GiB (2^10k); default "5GB".
  TORCH_ARG(std::string, max_shard_size) = "5GB";
  /// gguf: f32, f16, bf16 or q8_0 (convert_hf_to_gguf.py's --outtype
  /// default f16).
  TORCH_ARG(std::string, type) = "f16";
  /// Tokenizer files (hf: copied; gguf: tokenizer.json read): a directory or
  /// file; "" = the source Hugging Face directory (hf.path), or
  /// jsonl.tokenizer.
  TORCH_ARG(std::string, tokenizer) = "";
  /// peft: base_model_name_or_path ("" = hf.path).
  TORCH_ARG(std::string, base_model) = "";
  /// Replace an existing output.
  TORCH_ARG(bool, overwrite) = false;
};

struct ExportResult {
  std::string out;
  std::string weights;             // TrainedModel::weights
  std::vector<std::string> files;  // written, relative to out (gguf: out)
};

/// save_pretrained's max_shard_size in bytes ("5GB" = 5e9, "200MiB",
/// "1000"); ConfigError naming the value.
int64_t parse_shard_size(const std::string& text);

/// Exports `source` (load_trained_model) to `out`. Usage problems (a bad
/// option value, an existing output without overwrite, peft for a run
/// without adapters) throw ConfigError naming the value.
ExportResult export_model(const std::string& source, const std::string& out,
                          const ExportOptions& options);

}  // namespace lowmem::train
