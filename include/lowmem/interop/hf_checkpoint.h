// Hugging Face model directories, the weights: model.safetensors, or shards
// listed by model.safetensors.index.json (transformers' save_pretrained
// layout), loaded into models::Llama and saved from it.
//
// Loading is lazy: every file is memory-mapped, its header read through io's
// bounded parser, every name and shape checked against the model before
// anything is copied, then each tensor is converted (F32, F16, BF16, F64)
// straight into its parameter's dtype and device and its pages of the
// mapping released (madvise MADV_DONTNEED): no whole-file buffer, no fp32
// copy of the model; the resident extra is about one tensor. Ignored like
// transformers does: lm_head.weight when the embeddings are tied, and the
// rotary_emb.inv_freq buffers some older conversions carry. Little-endian
// hosts only (as the format).
//
// Saving writes what from_pretrained reads: config.json (hf_config.h),
// model.safetensors with {"format": "pt"} metadata, or above
// max_shard_size shards model-0000i-of-0000n.safetensors plus
// model.safetensors.index.json ({"metadata": {"total_size"}, "weight_map"}),
// split as huggingface_hub's split_torch_state_dict_into_shards does (in
// parameter order; a new shard when the next tensor would overflow the
// current one). Every file is written atomically (io/atomic_file.h), one
// tensor in memory at a time; weight files of an earlier save that the new
// one does not use are removed, as save_pretrained does.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/Optional.h>
#include <torch/arg.h>

#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lowmem/interop/hf_config.h"
#include "lowmem/models/llama.h"

namespace lowmem::interop {

struct HfLoadOptions {
  /// Parameter dtype; nullopt: config.json's torch_dtype ("auto" in
  /// from_pretrained). Default float32, as from_pretrained in 4.x.
  TORCH_ARG(c10::optional<c10::ScalarType>, dtype) = c10::kFloat;
  TORCH_ARG(c10::Device, device) = c10::Device(c10::kCPU);
  TORCH_ARG(bool, activation_checkpointing) = false;
};

/// One tensor of a directory's weight files.
struct HfTensorRef {
  std::string file;  // file name within the directory
  c10::ScalarType dtype = c10::kFloat;
  std::vector<int64_t> shape;
  uint64_t offset = 0;  // first byte within the file
  uint64_t bytes = 0;
};

/// model.safetensors.index.json's weight_map (`j`, named `source` in
/// errors): tensor name -> shard file name. Throws "[hf] <source>: ..."
/// when there is no weight_map object, or an entry is not a string naming a
/// .safetensors file inside the directory (letters, digits, '_', '.', '-',
/// no "..", at most 255 bytes). read_hf_weight_index reads the file with
/// read_json_file (16 MiB, nesting <= 128) and passes it here.
std::map<std::string, std::string> parse_hf_weight_map(
    const nlohmann::json& j, const std::string& source);

/// name -> where it is, from model.safetensors or the index (each listed
/// shard's header read and checked: the index and the files must agree).
/// Throws "[hf] ..." naming the file when neither exists, an index entry
/// names a file outside the directory, or a tensor is not where the index
/// says.
std::map<std::string, HfTensorRef> read_hf_weight_index(const std::string& dir);

/// Copies the directory's weights into `model` (its parameters keep their
/// dtype and device). Throws before copying anything, naming the tensor and
/// file, on a missing tensor, an unexpected one or a shape mismatch.
void load_hf_weights(models::Llama& model, const std::string& dir);

/// A model built from `dir`/config.json with `dir`'s weights. `config`, if
/// given, receives the parsed configuration.
std::shared_ptr<models::Llama> load_hf_model(const std::string& dir,
                                             const HfLoadOptions& options = {},
                                             HfConfig* config = nullptr);

struct HfSaveOptions {
  /// Largest shard in bytes (save_pretrained's max_shard_size, default
  /// "5GB" = 5e9 bytes); a tensor larger than this gets a shard of its own.
  TORCH_ARG(int64_t, max_shard_size) = 5'000'000'000;
  /// Stored dtype; nullopt: the parameters' own.
  TORCH_ARG(c10::optional<c10::ScalarType>, dtype) = c10::nullopt;
};

/// Writes `model` to `dir` (created if absent) with `config`'s architecture
/// and extra keys.
void save_hf_checkpoint(models::Llama& model, const HfConfig& config,
                        const std::string& dir,
                        const HfSaveOptions& options = {});
/// The same with the configuration hf_config_for(model.config()) infers.
void save_hf_checkpoint(models::Llama& model, const std::string& dir,
                        const HfSaveOptions& options = {});

}  // namespace lowmem::interop
