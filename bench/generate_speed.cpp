// Generation throughput of gen::generate on a random LLaMA (GaLore's llama_130m
// sizes by default: 134M parameters, vocab 32000), greedy, with and without
// the KV cache, in float32 and bfloat16:
//
//   build/bench/generate_speed [preset=130m] [prompt=32] [new=32] [threads=2]
//
// Prints, per dtype and mode, the prompt tokens/s (prefill) and the decode
// tokens/s (every token after the first), and checks that the cached and
// uncached runs produce the same tokens (float32: exit 1 if not; bfloat16:
// reported).
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <cstdio>
#include <string>

#include "lowmem/gen/generate.h"
#include "lowmem/models/llama.h"

int main(int argc, char** argv) {
  const std::string preset = argc > 1 ? argv[1] : "130m";
  const int64_t prompt_len = argc > 2 ? std::stoll(argv[2]) : 32;
  const int64_t new_tokens = argc > 3 ? std::stoll(argv[3]) : 32;
  const int threads = argc > 4 ? std::stoi(argv[4]) : 2;
  at::set_num_threads(threads);
  try {
    for (auto dtype : {c10::kFloat, c10::kBFloat16}) {
      torch::manual_seed(0);
      lowmem::models::Llama model(
          lowmem::models::llama_preset(preset).dtype(dtype));
      std::vector<int64_t> prompt;
      for (int64_t i = 0; i < prompt_len; ++i)
        prompt.push_back((i * 7919) % 32000);
      std::vector<int64_t> cached_tokens;
      for (bool cache : {true, false}) {
        auto o = lowmem::gen::GenerateOptions()
                     .max_new_tokens(new_tokens)
                     .use_cache(cache);
        const auto r = lowmem::gen::generate(model, prompt, o);
        std::printf(
            "%s %s %s: %lld params, prompt %lld tokens %.1f tokens/s, "
            "generated %zu tokens %.2f tokens/s (decode %.2f s)\n",
            preset.c_str(), dtype == c10::kFloat ? "float32" : "bfloat16",
            cache ? "kv-cache" : "no-cache",
            static_cast<long long>(
                lowmem::models::llama_parameter_count(model.config())),
            static_cast<long long>(prompt_len), r.prompt_tokens_per_second(),
            r.tokens.size(), r.tokens_per_second(), r.decode_seconds);
        std::fflush(stdout);
        if (cache) {
          cached_tokens = r.tokens;
        } else if (r.tokens != cached_tokens) {
          // bf16 rounds differently along the two paths; f32 must agree.
          std::printf("cached and uncached tokens differ\n");
          if (dtype == c10::kFloat) return 1;
        }
      }
    }
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "%s\n", e.what_without_backtrace());
    return 1;
  }
  return 0;
}
