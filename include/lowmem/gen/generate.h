// Text generation with a language model: greedy decoding or sampling with
// temperature, top-k and top-p, stopped by an end-of-sequence id, a stop
// string or a token budget, with a per-token callback for streaming and the
// throughput measured. Follows Hugging Face transformers' GenerationMixin
// (generation/utils.py: _get_logits_processor adds, when do_sample, the
// TemperatureLogitsWarper, then TopKLogitsWarper, then TopPLogitsWarper;
// _sample draws with torch.multinomial from the softmax, greedy takes the
// argmax), generation/logits_process.py for the three warpers and
// generation/configuration_utils.py (GenerationConfig) for the option names
// and defaults; read on transformers' main branch in 2025. A models::Llama
// decodes with its KV cache (models/llama.h), a models::GPT with its own
// (models/gpt.h) while the sequence fits block_size; beyond, a GPT re-runs its
// forward on the last block_size tokens every step (as nanoGPT's generate
// crops; HF's GPT-2 stops at n_positions). Deviations: one sequence at a
// time (no batching, no beam search); max_new_tokens replaces HF's
// max_length; sampling draws on the CPU from a generator seeded with `seed`
// (the logits of the last position are copied to the CPU in fp32), so a seed
// gives the same tokens on every device for the same logits; stop strings
// are matched on the decoded text of the new tokens (HF's StopStringCriteria
// matches token strings; both stop once the text contains the string, which
// is kept in the output).
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace lowmem::models {
class Model;
}

namespace lowmem::gen {

/// GenerationConfig's names and defaults.
struct GenerateOptions {
  /// Tokens to generate at most (HF max_new_tokens; HF's default is
  /// max_length 20 counting the prompt, here 20 new tokens).
  TORCH_ARG(int64_t, max_new_tokens) = 20;
  /// false: greedy (argmax; temperature, top_k and top_p unused), as HF.
  TORCH_ARG(bool, do_sample) = false;
  /// Logits divided by it before top-k/top-p (HF default 1.0: unchanged).
  TORCH_ARG(double, temperature) = 1.0;
  /// Keep the k most likely tokens (ties at the k-th kept; HF default 50;
  /// 0: off).
  TORCH_ARG(int64_t, top_k) = 50;
  /// Keep the smallest set of most likely tokens whose probability reaches
  /// top_p (HF default 1.0: off).
  TORCH_ARG(double, top_p) = 1.0;
  /// Seeds the sampling generator (HF: transformers.set_seed).
  TORCH_ARG(uint64_t, seed) = 0;
  /// Ids that end generation (HF eos_token_id, an int or a list); the id
  /// itself is part of the output tokens but not of the text.
  TORCH_ARG(std::vector<int64_t>, eos_token_id) = {};
  /// Strings that end generation once the new text contains one (HF
  /// stop_strings); needs a decoder.
  TORCH_ARG(std::vector<std::string>, stop_strings) = {};
  /// false: no KV cache, the whole sequence is re-run every step (HF
  /// use_cache; the reference the cache is tested against).
  TORCH_ARG(bool, use_cache) = true;
};

/// Throws "[generate] ..." naming the bad value: max_new_tokens < 1,
/// temperature <= 0 (when sampling), top_k < 0, top_p outside (0, 1], an
/// empty stop string.
void validate(const GenerateOptions& o);

/// `base` with the fields a generation_config.json sets: eos_token_id (an
/// int or a list), do_sample, temperature, top_k, top_p, max_new_tokens
/// (null values are skipped; other keys ignored). Throws "[generate] <path>:
/// ..." on a wrong-typed field.
GenerateOptions read_generation_config(const std::string& path,
                                       GenerateOptions base = {});

/// HF TemperatureLogitsWarper: logits / temperature (unchanged at 1.0).
at::Tensor temperature_warp(const at::Tensor& logits, double temperature);
/// HF TopKLogitsWarper (min_tokens_to_keep 1): logits below the k-th largest
/// of their row become -inf (ties with it are kept); k = 0 or k >= vocab:
/// unchanged. logits [..., V].
at::Tensor top_k_filter(const at::Tensor& logits, int64_t k);
/// HF TopPLogitsWarper (min_tokens_to_keep 1): sort ascending, cumulative
/// softmax; tokens whose cumulative probability is <= 1 - top_p become -inf,
/// the most likely one always kept. top_p = 1: unchanged.
at::Tensor top_p_filter(const at::Tensor& logits, double top_p);
/// The three in HF's order (temperature, top-k, top-p), as sampling uses
/// them.
at::Tensor warp_logits(const at::Tensor& logits, const GenerateOptions& o);

/// Text of a token sequence (text::Tokenizer::decode, bytes for a byte-level
/// model).
using Decoder = std::function<std::string(const std::vector<int64_t>&)>;

/// Incremental decoding for streaming: push() returns the text the new token
/// completes. The new tokens are decoded as a whole each time (so merges
/// across tokens and leading-space rules stay right) and text is held back
/// while it ends in an incomplete UTF-8 sequence or in U+FFFD (what a lossy
/// decoder makes of a multi-byte character split across tokens); finish()
/// returns what is still held back.
class TextStream {
 public:
  explicit TextStream(Decoder decode);
  std::string push(int64_t token);
  std::string finish();
  /// The decoded text of every token pushed.
  const std::string& text() const { return text_; }

 private:
  Decoder decode_;
  std::vector<int64_t> tokens_;
  std::string text_;
  size_t emitted_ = 0;
};

/// Called once per new token with the text it completes ("" while held back;
/// the held-back rest arrives with the last token).
using TokenCallback =
    std::function<void(int64_t token, const std::string& text_piece)>;

struct GenerateResult {
  std::vector<int64_t> tokens;  // the new tokens (EOS included when it ended)
  std::string text;             // their text ("" without a decoder; EOS not
                                // decoded)
  /// "eos", "stop_string", "length" (max_new_tokens) or "context" (the
  /// model's maximum sequence length reached).
  std::string stop_reason;
  int64_t prompt_tokens = 0;
  /// The prompt's forward and the first token's choice.
  double prefill_seconds = 0.0;
  /// Every later token.
  double decode_seconds = 0.0;
  /// prompt_tokens / prefill_seconds.
  double prompt_tokens_per_second() const;
  /// (tokens - 1) / decode_seconds: the steady generation rate (0 when
  /// fewer than two tokens).
  double tokens_per_second() const;
};

/// Continues `prompt` (token ids, at least one) with `model` under no_grad,
/// on the device of its parameters. `decode` is needed for stop strings and
/// for the text (result.text, the callback's pieces).
GenerateResult generate(models::Model& model,
                        const std::vector<int64_t>& prompt,
                        const GenerateOptions& options,
                        const Decoder& decode = {},
                        const TokenCallback& on_token = {});

}  // namespace lowmem::gen
