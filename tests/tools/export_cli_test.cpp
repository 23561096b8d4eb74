// Issue #15's round trip through the binaries, as README.md's "Fine-tune
// your own model" section writes it: every command of that section's shell
// block is run as written (only the training made shorter) on a tiny random
// Hugging Face directory with the real LLaMA-2 tokenizer.json: eval before,
// `lowmem train` LoRA (all-linear) on a small text file, eval and generate
// with the adapter, `lowmem merge`, `lowmem export` hf / peft / gguf (Q8_0),
// eval and generate on the export. Checked: the three evals after training
// agree and differ from the one before; the HF export reloads to the merged
// model's logits exactly (also sharded); llama.cpp continues the prompt of
// an F32 export with exactly the text `lowmem generate` prints for the HF
// export, its perplexity on the held-out file is `lowmem eval`'s, and the
// Q8_0 file's is within 2 % of it; the PEFT export has PEFT's names, shapes
// and config and reads back to the adapter model's logits. Skipped, saying
// why, without node-llama-cpp. Then `lowmem export`'s refusals.
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
#include "lowmem/adapters/inject.h"
#include "lowmem/data/jsonl.h"
#include "lowmem/interop/hf_checkpoint.h"
#include "lowmem/io/safetensors.h"
#include "lowmem/models/llama.h"
#include "lowmem/text/tokenizer.h"
#include "lowmem/train/export.h"
#include "testing/cli.h"
#include "testing/files.h"
#include "testing/golden.h"
#include "testing/llama_cpp.h"

namespace lowmem::testing {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

using Ran = CliRun;

Ran lowmem_cli(const fs::path& dir, const std::vector<std::string>& args) {
  return run_captured(LOWMEM_CLI_PATH, args, dir);
}

const char* const kPrompt = "Once upon a time";  // README's prompt

// A LLaMA (GQA: 2 query heads, 1 key/value head) with LLaMA-2's 32000-token
// vocabulary in HF layout, weights N(0, 0.1) so greedy choices are clear.
fs::path tiny_hf_dir(const fs::path& root) {
  torch::manual_seed(11);
  models::Llama m(models::LlamaConfig()
                      .vocab_size(32000)
                      .hidden_size(64)
                      .intermediate_size(128)
                      .num_hidden_layers(2)
                      .num_attention_heads(2)
                      .num_key_value_heads(1)
                      .max_position_embeddings(128)
                      .rms_norm_eps(1e-5)
                      .initializer_range(0.1));
  const fs::path dir = root / "tiny-llama";
  interop::save_hf_checkpoint(m, dir.string());
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
    fs::copy_file(fs::path(lenml_tokenizer("llama2")) / f, dir / f);
  }
  return dir;
}

// README's my_text.jsonl and held_out.txt, in `root`.
void write_data(const fs::path& root) {
  std::ofstream f(root / "my_text.jsonl");
  for (int i = 0; i < 24; ++i) {
    f << json{{"text", "Once upon a time, a small fox found " +
                           std::to_string(i) +
                           " red apples under the old oak tree."}}
             .dump()
      << "\n";
  }
  std::ofstream(root / "held_out.txt")
      << "It was the best of times, it was the worst of times; once upon a "
         "time a fox slept under the old tree and dreamt of apples.";
}

// The commands of the shell block in README.md's "Fine-tune your own model"
// section: continued lines joined, comments and variable assignments
// dropped.
std::vector<std::string> readme_commands() {
  const std::string readme = read_file(source_path("README.md"));
  const size_t section = readme.find("\n## Fine-tune your own model\n");
  EXPECT_NE(section, std::string::npos);
  const size_t begin = readme.find("```sh\n", section) + 6;
  const size_t end = readme.find("\n```", begin);
  std::istringstream lines(readme.substr(begin, end - begin));
  std::vector<std::string> out;
  std::string line, command;
  while (std::getline(lines, line)) {
    bool quoted = false;  // a '#' outside double quotes starts a comment
    for (size_t i = 0; i < line.size(); ++i) {
      if (line[i] == '"') quoted = !quoted;
      if (line[i] == '#' && !quoted) {
        line.resize(i);
        break;
      }
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    const bool continued = !line.empty() && line.back() == '\\';
    if (continued) line.pop_back();
    command += line;
    if (continued) continue;
    if (command.find("build/tools/lowmem ") == 0) out.push_back(command);
    command.clear();
  }
  return out;
}

// Replaces `from` (which must occur exactly once) by `to`.
void replace_once(std::string& s, const std::string& from,
                  const std::string& to) {
  const size_t at = s.find(from);
  ASSERT_NE(at, std::string::npos) << from << " not in: " << s;
  ASSERT_EQ(s.find(from, at + 1), std::string::npos) << from;
  s.replace(at, from.size(), to);
}

// Runs README's commands in `root` with M = `hf`; the training shortened.
// Keyed by the command as README writes it.
std::map<std::string, Ran> run_readme(const fs::path& root,
                                      const fs::path& hf) {
  std::map<std::string, Ran> runs;
  const auto commands = readme_commands();
  EXPECT_GE(commands.size(), 11u);
  for (const std::string& readme : commands) {
    std::string cmd = readme;
    replace_once(cmd, "build/tools/lowmem", shell_quote(LOWMEM_CLI_PATH));
    if (cmd.find(" train ") != std::string::npos) {
      replace_once(cmd, "--hf.context 256", "--hf.context 32");
      replace_once(cmd, "--steps 200",
                   "--steps 4 --warmup_steps 1 --batch_size 2 --adamw.lr "
                   "0.02 --eval_every 4 --eval_batches 1");
    }
    const std::string shell =
        "cd " + shell_quote(root.string()) +
        " && export OMP_NUM_THREADS=2 M=" + shell_quote(hf.string()) + " && " +
        cmd + " > .out 2> .err";
    const int status = std::system(shell.c_str());
    Ran r;
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.out = read_file(root / ".out");
    r.err = read_file(root / ".err");
    EXPECT_EQ(r.code, 0) << readme << "\n" << r.err;
    runs[readme] = r;
  }
  return runs;
}

// The output of the one README command that contains `needle`.
const Ran& output_of(const std::map<std::string, Ran>& runs,
                     const std::string& needle) {
  const Ran* found = nullptr;
  for (const auto& [cmd, r] : runs) {
    if (cmd.find(needle) == std::string::npos) continue;
    EXPECT_EQ(found, nullptr) << "two README commands contain " << needle;
    found = &r;
  }
  static const Ran none;
  EXPECT_NE(found, nullptr) << "no README command contains " << needle;
  return found ? *found : none;
}

// The figure `lowmem eval` prints first: "perplexity X (...".
double perplexity_of(const Ran& r) {
  const std::string key = "perplexity ";
  EXPECT_EQ(r.out.rfind(key, 0), 0u) << r.out;
  return r.out.rfind(key, 0) == 0 ? std::stod(r.out.substr(key.size())) : 0;
}

double llama_cpp_perplexity(const std::vector<double>& probs) {
  double nll = 0;
  for (double p : probs) nll -= std::log(p);
  return std::exp(nll / static_cast<double>(probs.size()));
}

at::Tensor logits(models::Model& m, const std::vector<int64_t>& ids) {
  torch::NoGradGuard g;
  return m.forward(torch::tensor(ids).unsqueeze(0));
}

// The HF export reloads to the merged model's logits, single-file and
// sharded (exported again with --overwrite).
void check_hf_export(const fs::path& root, const fs::path& hf,
                     const fs::path& run) {
  const std::vector<int64_t> ids = {1, 9038, 2501, 263, 931, 29892};
  // The merged model in memory: the run rebuilt, its LoRA folded in.
  train::TrainedModel t = train::load_trained_model(run.string());
  ASSERT_TRUE(t.adapter);
  t.adapter->merge_and_unload();
  const at::Tensor merged = logits(*t.model, ids);
  auto base = interop::load_hf_model(hf.string());
  EXPECT_GT((logits(*base, ids) - merged).abs().max().item<double>(), 1e-4)
      << "training left the model unchanged";
  const fs::path hf_out = root / "out/ft-hf";
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json",
                        "tokenizer_config.json"}) {
    EXPECT_TRUE(fs::is_regular_file(hf_out / f)) << f;
  }
  EXPECT_TRUE(torch::equal(
      logits(*interop::load_hf_model(hf_out.string()), ids), merged));

  // The same directory again, sharded at 1 MB (--overwrite): an index and
  // several shards replace model.safetensors; the same logits.
  Ran r = lowmem_cli(root, {"export", run.string(), "--out", hf_out.string(),
                            "--max-shard-size", "1MB"});
  EXPECT_EQ(r.code, 2) << "an existing output was replaced";
  r = lowmem_cli(root, {"export", run.string(), "--out", hf_out.string(),
                        "--max-shard-size", "1MB", "--overwrite"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(hf_out / "model.safetensors.index.json"));
  int shards = 0;  // embeddings and lm_head (8 MB each) get their own
  for (const auto& e : fs::directory_iterator(hf_out))
    shards += e.path().filename().string().rfind("model-0000", 0) == 0;
  EXPECT_GE(shards, 3);
  EXPECT_FALSE(fs::exists(hf_out / "model.safetensors"));
  EXPECT_TRUE(fs::exists(hf_out / "tokenizer.json"));
  EXPECT_TRUE(torch::equal(
      logits(*interop::load_hf_model(hf_out.string()), ids), merged));
}

// llama.cpp on an F32 export continues README's prompt with the text
// `lowmem generate` printed for the HF export; its perplexity on
// held_out.txt is `lowmem eval`'s, and README's Q8_0 file's within 2 %.
void check_gguf(const fs::path& root, const fs::path& run,
                const std::map<std::string, Ran>& runs) {
  const auto tok = text::Tokenizer::from_file((root / "out/ft-hf").string());
  const fs::path f32 = root / "f32.gguf", q8 = root / "out/ft.gguf";
  Ran r = lowmem_cli(root, {"export", run.string(), "--format", "gguf",
                            "--type", "f32", "--out", f32.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto prompt_i32 = tok.encode(kPrompt);
  const std::vector<int64_t> prompt(prompt_i32.begin(), prompt_i32.end());
  const int n = 32;  // README's --max-new-tokens
  auto refs = run_llama_cpp({f32}, kPrompt, prompt, n);
  ASSERT_EQ(refs.size(), 1u);
  std::vector<text::TokenId> continuation;
  for (int64_t id : refs[0].generated) {
    continuation.push_back(static_cast<text::TokenId>(id));
    if (id == *tok.eos_id()) break;  // lowmem generate stops there
  }
  EXPECT_GT(
      std::set<text::TokenId>(continuation.begin(), continuation.end()).size(),
      2u)
      << "a degenerate continuation tests little";
  const Ran& generated =
      output_of(runs, "generate --model hf --hf.path out/ft-hf");
  EXPECT_EQ(generated.out,
            std::string(kPrompt) + tok.decode(continuation, true) + "\n");
  // The adapter before merging continues the same way (20 tokens).
  const Ran& adapter = output_of(runs, "generate --model hf --hf.path $M");
  EXPECT_EQ(
      generated.out.rfind(adapter.out.substr(0, adapter.out.size() - 1), 0), 0u)
      << adapter.out << " is no prefix of " << generated.out;

  // held_out.txt as lowmem eval reads it: BOS, the text, EOS.
  const data::JsonlDataset ds(
      (root / "held_out.txt").string(), tok,
      data::JsonlOptions().context(int64_t{1} << 40).split(0).cache(false));
  const auto [p, len] = ds.tokens(0);
  const std::vector<int64_t> held(p, p + len);
  refs = run_llama_cpp({f32, q8}, "", held, 0);
  ASSERT_EQ(refs.size(), 2u);
  EXPECT_LT(fs::file_size(q8), fs::file_size(f32) * 0.3);
  const double ours =
      perplexity_of(output_of(runs, "eval --model hf --hf.path out/ft-hf"));
  const double f32_ppl = llama_cpp_perplexity(refs[0].next_probs);
  EXPECT_NEAR(f32_ppl, ours, 1e-4 * ours);
  EXPECT_NEAR(llama_cpp_perplexity(refs[1].next_probs), f32_ppl,
              0.02 * f32_ppl);
}

// The four evals: training changed the perplexity; the adapter, lowmem
// merge's output and the HF export agree.
void check_evals(const std::map<std::string, Ran>& runs) {
  const double before =
      perplexity_of(output_of(runs, "eval --model hf --hf.path $M --file"));
  const double adapter =
      perplexity_of(output_of(runs, "eval --model hf --hf.path $M --adapter"));
  const double merged =
      perplexity_of(output_of(runs, "eval --recipe out/ft-merged/config.yaml"));
  const double exported =
      perplexity_of(output_of(runs, "eval --model hf --hf.path out/ft-hf"));
  EXPECT_GT(std::abs(before - adapter), 1e-3 * before);
  EXPECT_NEAR(merged, adapter, 1e-5 * adapter);
  EXPECT_NEAR(exported, adapter, 1e-5 * adapter);
}

// PEFT export of `run`: PEFT's names, shapes and config; read back.
void check_peft(const fs::path& root, const fs::path& hf, const fs::path& run) {
  const fs::path out = root / "out/ft-lora";
  const json cfg = json::parse(read_file(out / "adapter_config.json"));
  EXPECT_EQ(cfg["peft_type"], "LORA");
  EXPECT_EQ(cfg["task_type"], "CAUSAL_LM");
  EXPECT_EQ(cfg["r"], 16);
  EXPECT_EQ(cfg["base_model_name_or_path"], hf.string());
  EXPECT_EQ(cfg["target_modules"],
            json({"down_proj", "gate_proj", "k_proj", "o_proj", "q_proj",
                  "up_proj", "v_proj"}));
  const auto file =
      io::load_safetensors((out / "adapter_model.safetensors").string());
  EXPECT_EQ(file.tensors.size(), 2u * 7u * 2u);
  const std::string p = "base_model.model.model.layers.1.";
  EXPECT_EQ(file.tensors.at(p + "self_attn.q_proj.lora_A.weight").sizes(),
            (std::vector<int64_t>{16, 64}));
  EXPECT_EQ(file.tensors.at(p + "self_attn.k_proj.lora_B.weight").sizes(),
            (std::vector<int64_t>{32, 16}));  // 1 kv head of 32
  EXPECT_EQ(file.tensors.at(p + "mlp.down_proj.lora_A.weight").sizes(),
            (std::vector<int64_t>{16, 128}));
  // lowmem reads its PEFT export onto the base to the run's logits.
  const std::vector<int64_t> ids = {1, 9038, 2501, 263, 931};
  train::TrainedModel t = train::load_trained_model(run.string());
  auto base = interop::load_hf_model(hf.string());
  auto adapter = adapters::load_adapter(base, out.string());
  EXPECT_EQ(adapter->peft_type(), "LORA");
  EXPECT_TRUE(torch::equal(logits(*base, ids), logits(*t.model, ids)));
}

TEST(ExportRoundTrip, SlowE2eReadmeFineTuneCommandsFromHfDirectoryToLlamaCpp) {
  SKIP_WITHOUT_LLAMA_CPP();
  const fs::path root = fresh_temp_dir("export_cli");
  const fs::path hf = tiny_hf_dir(root);
  write_data(root);
  const auto runs = run_readme(root, hf);
  const fs::path run = root / "runs/ft";
  ASSERT_TRUE(fs::is_directory(run / "checkpoints"));
  check_evals(runs);
  check_hf_export(root, hf, run);
  check_gguf(root, run, runs);
  check_peft(root, hf, run);
  // lowmem merge wants the base model, not the adapter run's checkpoint.
  const Ran r = lowmem_cli(
      root, {"merge", "--base", (run / "checkpoints").string(), "--adapter",
             (run / "adapter").string(), "--out", (root / "refused").string()});
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("is a checkpoint of a lora run, not a base model"),
            std::string::npos)
      << r.err;
  EXPECT_FALSE(fs::exists(root / "refused"));
  fs::remove_all(root);
}

// Option values and the output are checked before the source is read.
TEST(ExportCli, RefusesBadValuesAndExistingOutputs) {
  const fs::path root = fresh_temp_dir("export_cli_refusals");
  const fs::path out = root / "refused", source = root / "source";
  fs::create_directories(source);
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"--format", "onnx"}, "--format must be hf, peft or gguf, got 'onnx'"},
      {{"--format", "gguf", "--type", "q4_k"}, "q4_k"},
      {{"--max-shard-size", "5XB"}, "got '5XB'"},
      {{"--dtype", "int8"}, "int8"},
      {{}, "holds no checkpoint"},
  };
  for (const auto& c : cases) {
    std::vector<std::string> a = {"export", source.string(), "--out",
                                  out.string()};
    a.insert(a.end(), c.args.begin(), c.args.end());
    const Ran r = lowmem_cli(root, a);
    EXPECT_EQ(r.code, 2) << c.message;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(out));
  }
  fs::create_directories(out);
  std::ofstream(out / "keep.txt") << "x";
  Ran r = lowmem_cli(root, {"export", source.string(), "--out", out.string()});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("exists; pass --overwrite"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::exists(out / "keep.txt"));
  r = lowmem_cli(root, {"export", source.string(), "--out", out.string(),
                        "--format", "gguf", "--overwrite"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("is a directory; --format gguf writes a file"),
            std::string::npos)
      << r.err;
  r = lowmem_cli(root, {"export", (root / "nothing").string(), "--out",
                        (root / "x").string()});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("is not a directory"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::exists(out / "keep.txt"));
  fs::remove_all(root);
}

}  // namespace
}  // namespace lowmem::testing
