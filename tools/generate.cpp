// `lowmem generate` and `lowmem eval`: a language model loaded as `lowmem
// train` builds it (--model hf --hf.path DIR, or --recipe RUN/config.yaml
// with --init for a full run's checkpoint or a merged model), optionally with
// an adapter (--adapter RUN/adapter), continues a prompt with text streamed as
// it comes (gen/generate.h), or reports the perplexity of a held-out text or
// JSONL file (gen/perplexity.h).
#include "lowmem/gen/generate.h"

#include <unistd.h>

#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>

#include "command.h"
#include "lowmem/adapters/adapter_file.h"
#include "lowmem/adapters/inject.h"
#include "lowmem/core/input.h"
#include "lowmem/data/jsonl.h"
#include "lowmem/gen/perplexity.h"
#include "lowmem/models/gpt.h"
#include "lowmem/models/llama.h"
#include "lowmem/text/chat_template.h"
#include "lowmem/text/tokenizer.h"
#include "lowmem/train/device.h"
#include "lowmem/train/run.h"

namespace lowmem::tools {
namespace {

namespace fs = std::filesystem;

struct Loaded {
  train::Config config;
  std::shared_ptr<models::Model> model;
  std::shared_ptr<adapters::AdapterModel> adapter;
};

Loaded load_model(const ConfigFlags& flags, const std::string& adapter_dir) {
  Loaded l;
  l.config = flags.resolve();
  if (l.config.model != "llama" && l.config.model != "gpt" &&
      l.config.model != "hf")
    throw train::ConfigError("model '" + l.config.model +
                             "' is not a language model (gpt, llama or hf)");
  const c10::Device device = train::resolve_device(l.config.device);
  l.model = train::build_model(l.config);
  if (!l.config.init.empty())
    train::load_weights(*l.model, l.config.init, l.config.init_exclude);
  l.model->to(device);
  if (!adapter_dir.empty()) {
    l.adapter = adapters::load_adapter(l.model, adapter_dir);
    l.model->to(device);
  }
  l.model->eval();
  return l;
}

// Byte ids 0..255 of `s` (char may be signed).
std::vector<int64_t> byte_ids(const std::string& s) {
  std::vector<int64_t> ids;
  for (unsigned char c : s) ids.push_back(c);
  return ids;
}

// What encodes and decodes text for the model: --tokenizer, else the HF
// directory's, else the JSONL data's; none (bytes) for byte-level models.
std::optional<text::Tokenizer> load_tokenizer(train::Config& c,
                                              const std::string& path) {
  std::string p = path;
  if (p.empty() && c.model == "hf") p = c.get("hf.path");
  if (p.empty() && c.data == "jsonl") p = c.get("jsonl.tokenizer");
  if (p.empty()) return std::nullopt;
  return text::Tokenizer::from_file(p);
}

struct GenerateArgs {
  std::string adapter, tokenizer, prompt, generation_config;
  bool chat = false, no_cache = false, quiet = false;
  int64_t max_new_tokens = -1, top_k = -1;
  double temperature = -1.0, top_p = -1.0;
  std::string do_sample;
  std::vector<std::string> stop;
  std::vector<int64_t> eos;
};

// generation_config.json of the HF directory (or --generation-config), then
// the flags given; the tokenizer's EOS when nothing names one.
gen::GenerateOptions generation_options(const GenerateArgs& a, train::Config& c,
                                        const text::Tokenizer* tok) {
  gen::GenerateOptions o;
  std::string file = a.generation_config;
  if (file.empty() && c.model == "hf") {
    const std::string candidate = c.get("hf.path") + "/generation_config.json";
    if (fs::exists(candidate)) file = candidate;
  }
  if (!file.empty()) o = gen::read_generation_config(file, o);
  if (a.max_new_tokens >= 0) o.max_new_tokens(a.max_new_tokens);
  if (a.do_sample == "true" || a.do_sample == "false")
    o.do_sample(a.do_sample == "true");
  else if (!a.do_sample.empty())
    throw train::ConfigError("--do-sample must be true or false, got '" +
                             a.do_sample + "'");
  if (a.temperature >= 0.0) o.temperature(a.temperature);
  if (a.top_k >= 0) o.top_k(a.top_k);
  if (a.top_p >= 0.0) o.top_p(a.top_p);
  o.seed(static_cast<uint64_t>(c.seed));
  o.stop_strings(a.stop).use_cache(!a.no_cache);
  if (!a.eos.empty()) o.eos_token_id(a.eos);
  if (o.eos_token_id().empty() && tok != nullptr && tok->eos_id())
    o.eos_token_id({*tok->eos_id()});
  return o;
}

std::vector<int64_t> encode_prompt(const GenerateArgs& a,
                                   const text::Tokenizer* tok) {
  if (tok == nullptr) {
    if (a.chat)
      throw train::ConfigError("--chat needs a tokenizer with a chat template");
    return byte_ids(a.prompt);
  }
  if (!a.chat) {
    auto ids = tok->encode(a.prompt, true);
    return std::vector<int64_t>(ids.begin(), ids.end());
  }
  const std::string source = tok->chat_template();
  if (source.empty())
    throw train::ConfigError("--chat: " + tok->path() +
                             " has no chat template");
  const text::ChatTemplate t(source);
  const auto messages = nlohmann::ordered_json::array(
      {{{"role", "user"}, {"content", a.prompt}}});
  const std::string text = text::render_chat(t, messages,
                                             text::ChatOptions()
                                                 .add_generation_prompt(true)
                                                 .bos_token(tok->bos_token())
                                                 .eos_token(tok->eos_token()));
  auto ids = tok->encode(text, false);
  return std::vector<int64_t>(ids.begin(), ids.end());
}

int run_generate(const ConfigFlags& flags, const GenerateArgs& a) {
  Loaded l = load_model(flags, a.adapter);
  const auto tok = load_tokenizer(l.config, a.tokenizer);
  const text::Tokenizer* t = tok ? &*tok : nullptr;
  const auto options = generation_options(a, l.config, t);
  const auto prompt = encode_prompt(a, t);
  gen::Decoder decode = [t](const std::vector<int64_t>& ids) {
    if (t == nullptr) return std::string(ids.begin(), ids.end());
    return t->decode(std::vector<text::TokenId>(ids.begin(), ids.end()), true);
  };
  if (!a.quiet) std::cout << (a.chat ? "" : a.prompt) << std::flush;
  const auto r = gen::generate(*l.model, prompt, options, decode,
                               [&](int64_t, const std::string& piece) {
                                 std::cout << piece << std::flush;
                               });
  std::cout << "\n" << std::flush;
  std::cerr << "# prompt " << r.prompt_tokens << " tokens ("
            << r.prompt_tokens_per_second() << " tokens/s); generated "
            << r.tokens.size() << " tokens (" << r.tokens_per_second()
            << " tokens/s" << (options.use_cache() ? "" : ", no KV cache")
            << "); stop: " << r.stop_reason << "\n";
  return kExitOk;
}

const RegisterCommand kGenerate{Command{
    "generate",
    "Continue a prompt with a language model (KV cache, greedy or "
    "temperature/top-k/top-p sampling), text streamed as it comes",
    [](CLI::App& sub) -> std::function<int()> {
      auto flags = std::make_shared<ConfigFlags>(sub);
      auto a = std::make_shared<GenerateArgs>();
      const char* g = "Generation";
      sub.add_option("--prompt", a->prompt, "Text to continue")
          ->required()
          ->group(g);
      sub.add_flag("--chat", a->chat,
                   "Send the prompt as a user message through the tokenizer's "
                   "chat template (add_generation_prompt)")
          ->group(g);
      sub.add_option("--adapter", a->adapter,
                     "Adapter directory (lowmem train writes OUT_DIR/adapter)")
          ->check(CLI::ExistingDirectory)
          ->group(g);
      sub.add_option("--tokenizer", a->tokenizer,
                     "tokenizer.json / tokenizer.model / folder (default: "
                     "hf.path's, else jsonl.tokenizer; none: bytes)")
          ->group(g);
      sub.add_option("--generation-config", a->generation_config,
                     "generation_config.json (default: hf.path's if present)")
          ->check(CLI::ExistingFile)
          ->group(g);
      sub.add_option("--max-new-tokens", a->max_new_tokens,
                     "Tokens to generate at most (default 20)")
          ->group(g);
      sub.add_option("--do-sample", a->do_sample,
                     "true: sample; false: greedy (default false)")
          ->group(g);
      sub.add_option("--temperature", a->temperature, "Default 1.0")->group(g);
      sub.add_option("--top-k", a->top_k, "Default 50; 0: off")->group(g);
      sub.add_option("--top-p", a->top_p, "Default 1.0 (off)")->group(g);
      sub.add_option("--stop", a->stop, "Stop string (repeatable)")->group(g);
      sub.add_option("--eos", a->eos,
                     "End-of-sequence id (repeatable; default: "
                     "generation_config.json's, else the tokenizer's)")
          ->group(g);
      sub.add_flag("--no-cache", a->no_cache,
                   "Re-run the whole sequence every step")
          ->group(g);
      sub.add_flag("--quiet", a->quiet, "Do not echo the prompt")->group(g);
      return [flags, a] { return run_generate(*flags, *a); };
    }}};

struct EvalArgs {
  std::string adapter, tokenizer, file;
  int64_t context = 0;
};

int64_t model_context(const models::Model& m) {
  if (auto* l = dynamic_cast<const models::Llama*>(&m))
    return std::min<int64_t>(l->config().max_position_embeddings(), 1024);
  if (auto* g = dynamic_cast<const models::GPT*>(&m))
    return g->config().block_size();
  return 1024;
}

int run_eval(const ConfigFlags& flags, const EvalArgs& a) {
  Loaded l = load_model(flags, a.adapter);
  const auto tok = load_tokenizer(l.config, a.tokenizer);
  const int64_t context = a.context > 0 ? a.context : model_context(*l.model);
  gen::PerplexityResult r;
  if (tok) {
    const data::JsonlDataset ds(
        a.file, *tok,
        data::JsonlOptions().context(int64_t{1} << 40).split(0).cache(false));
    r = gen::perplexity(*l.model, ds, context);
  } else {  // bytes: the whole file is one sample
    const std::string text =
        read_file_limited(a.file, uint64_t{1} << 32, "[eval] text file");
    gen::add_sample(*l.model, byte_ids(text), {}, context, r);
  }
  std::cout << "perplexity " << r.perplexity() << " (mean loss "
            << r.mean_loss() << " nats over " << r.tokens << " tokens, "
            << r.samples << " samples, " << r.windows
            << " windows of <= " << context << " tokens)\n";
  return kExitOk;
}

const RegisterCommand kEval{Command{
    "eval",
    "Perplexity of a language model (optionally with an adapter) on a "
    "held-out text or JSONL file",
    [](CLI::App& sub) -> std::function<int()> {
      auto flags = std::make_shared<ConfigFlags>(sub);
      auto a = std::make_shared<EvalArgs>();
      const char* g = "Evaluation";
      sub.add_option("--file", a->file,
                     "A .txt file (one sample), a .jsonl file (text, "
                     "prompt/completion or chat rows: the trained tokens "
                     "count) or a folder of them")
          ->required()
          ->check(CLI::ExistingPath)
          ->group(g);
      sub.add_option("--adapter", a->adapter, "Adapter directory")
          ->check(CLI::ExistingDirectory)
          ->group(g);
      sub.add_option("--tokenizer", a->tokenizer,
                     "As for generate (none: bytes)")
          ->group(g);
      sub.add_option("--context", a->context,
                     "Tokens per window (default: the model's, at most 1024)")
          ->group(g);
      return [flags, a] { return run_eval(*flags, *a); };
    }}};

}  // namespace
}  // namespace lowmem::tools
