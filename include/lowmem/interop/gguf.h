// A lowmem Llama and its tokenizer as a GGUF file that llama.cpp runs
// (architecture "llama"), following llama.cpp's convert_hf_to_gguf.py
// (LlamaModel) and gguf-py/gguf/constants.py for the key and tensor names:
// token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm,
// ffn_gate, ffn_up, ffn_down}, output_norm, output. q_proj and k_proj rows are
// permuted from Hugging Face's rotate-half layout to llama.cpp's interleaved
// rope pairs (convert_hf_to_gguf.py's LlamaModel.permute). 1-D tensors stay
// F32 whatever the type asked for, and a matrix whose rows are not a multiple
// of 32 falls back from Q8_0 to F16, as the converter does.
// Qwen2 (q/k/v biases: attn_{q,k,v}.bias) is written as architecture
// "qwen2" and Qwen3 (q/k norms: attn_q_norm, attn_k_norm) as "qwen3", after
// the converter's Qwen2Model/Qwen3Model: their rope is llama.cpp's NEOX kind,
// Hugging Face's rotate-half layout, so q/k are not permuted. llama3 rope
// scaling is the rope_freqs.weight tensor (LlamaModel.generate_extra_tensors);
// linear scaling the <arch>.rope.scaling.* keys.
// Tokenizer metadata (tokenizer.ggml.*): byte-level BPE tokenizers (LLaMA-3,
// Qwen2/3) as model "gpt2" with the pre-tokenizer named from its split
// pattern ("llama-bpe", "qwen2", "gpt-2"), merges and token types;
// sentencepiece-style BPE in tokenizer.json (LLaMA-2, Mistral, TinyLlama:
// metaspace or Prepend/Replace normalizers, byte fallback) as model "llama".
// Deviations: for "llama" the scores are -(rank + 1) of the merge that makes
// each token (0 for tokens no merge makes), so llama.cpp's score-ordered
// merging follows the BPE merges; convert_hf_to_gguf's LlamaHfVocab writes
// -1000 for every token. A sentencepiece tokenizer.model is not exported yet
// (its scores are not exposed by text::Tokenizer): an error says so.
#pragma once

#include <torch/arg.h>

#include <cstdint>
#include <string>
#include <vector>

#include "lowmem/io/gguf.h"

namespace lowmem::models {
class Llama;
struct LlamaConfig;
}  // namespace lowmem::models
namespace lowmem::text {
class Tokenizer;
}

namespace lowmem::interop {

struct GgufExportOptions {
  /// Type of the matrices (F32, F16, BF16, Q8_0); norms stay F32.
  TORCH_ARG(io::GgmlType, type) = io::GgmlType::kF32;
  /// general.name.
  TORCH_ARG(std::string, name) = "lowmem";
  /// tokenizer.ggml.pre for a byte-level tokenizer whose split pattern is not
  /// one of the known ones ("" = detect, else used as given).
  TORCH_ARG(std::string, pre) = "";
};

/// general.file_type of llama.cpp's llama_ftype for a tensor type
/// (ALL_F32 0, MOSTLY_F16 1, MOSTLY_Q8_0 7, MOSTLY_BF16 32).
uint32_t gguf_file_type(io::GgmlType type);

/// Rows of a q_proj/k_proj weight [n_head * head_dim, in] reordered from
/// rotate-half pairs (i, i + head_dim/2) to adjacent pairs (2i, 2i + 1).
at::Tensor permute_for_gguf_rope(const at::Tensor& weight, int64_t n_head);

/// The tokenizer.ggml.* and tokenizer.chat_template metadata of `tokenizer`
/// for a model with `vocab_size` embedding rows (>= the tokenizer's ids; the
/// rows beyond get "[PAD<i>]" tokens of type UNUSED, as convert_hf_to_gguf).
io::GgufMetadata gguf_tokenizer_metadata(const text::Tokenizer& tokenizer,
                                         int64_t vocab_size,
                                         const GgufExportOptions& options = {});

/// llama.cpp's architecture for `c`: "qwen3" with q/k norms, "qwen2" with
/// q/k/v biases (qkv_bias), else "llama" (which also takes attention_bias,
/// q/k/v/o biases, and mlp_bias). Throws naming the combinations none of them
/// has (biases with q/k norms; qkv_bias with attention_bias or mlp_bias).
std::string gguf_architecture(const models::LlamaConfig& c);

/// llama3 rope scaling as llama.cpp reads it: the tensor rope_freqs.weight,
/// [head_dim / 2] F32 factors dividing each rotary frequency (the default
/// inverse frequencies over the scaled ones, which is what
/// convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors computes).
at::Tensor gguf_rope_freqs(const models::LlamaConfig& c);

/// The general.* and <architecture>.* metadata and the tensors of `model` (on
/// any device and dtype), weights converted to options.type. Throws
/// "[interop] ..." naming a parameter that has no llama.cpp name (adapters
/// must be merged first: `lowmem merge`).
io::GgufMetadata gguf_llama_metadata(models::Llama& model,
                                     const GgufExportOptions& options = {});
std::vector<io::GgufTensor> gguf_llama_tensors(
    models::Llama& model, const GgufExportOptions& options = {});

/// Writes `model` with `tokenizer`'s vocabulary to `path` atomically.
void export_gguf(const std::string& path, models::Llama& model,
                 const text::Tokenizer& tokenizer,
                 const GgufExportOptions& options = {});

}  // namespace lowmem::interop
