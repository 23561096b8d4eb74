// `lowmem train --model hf --hf.path DIR`: a Hugging Face directory trained
// with LoRA on the attention projections (HF module names) and with GaLore,
// through the same session builder as the CLI; every registered method and
// optimizer, layer-wise GaLore, activation checkpointing, bf16 weights and an
// NF4 base train it (HfTrainEvery); recipes/finetune-hf.yaml parses and names
// a real section.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <utility>
#include <vector>

#include "lowmem/interop/hf_checkpoint.h"
#include "lowmem/models/llama.h"
#include "lowmem/train/config.h"
#include "lowmem/train/run.h"
#include "testing/files.h"
#include "testing/golden.h"

namespace {

namespace fs = std::filesystem;
using lowmem::train::Config;

// A tiny Qwen2-style model (GQA, q/k/v biases, tied) in HF layout, byte vocab.
fs::path tiny_hf_dir(const fs::path& root) {
  torch::manual_seed(0);
  lowmem::models::Llama m(lowmem::models::LlamaConfig()
                              .vocab_size(256)
                              .hidden_size(16)
                              .intermediate_size(24)
                              .num_hidden_layers(2)
                              .num_attention_heads(4)
                              .num_key_value_heads(2)
                              .qkv_bias(true)
                              .tie_word_embeddings(true)
                              .max_position_embeddings(64));
  const fs::path dir = root / "tiny-qwen2";
  lowmem::interop::save_hf_checkpoint(m, dir.string());
  return dir;
}

std::string corpus(const fs::path& root) {
  const fs::path p = root / "corpus.txt";
  std::ofstream f(p);
  for (int i = 0; i < 300; ++i)
    f << "line " << i << ": pack my box with five dozen liquor jugs\n";
  return p.string();
}

Config hf_config(const fs::path& root, const std::string& method) {
  Config c;
  c.set("model", "hf");
  c.set("hf.path", tiny_hf_dir(root).string());
  c.set("hf.context", "16");
  c.set("data", "text");
  c.set("text.path", corpus(root));
  c.set("method", method);
  c.steps = 3;
  c.batch_size = 2;
  c.warmup_steps = 1;
  c.eval_every = 3;
  c.eval_batches = 1;
  c.threads = 1;
  c.out_dir = (root / "run").string();
  return c;
}

TEST(HfTrain, LoraOnHfModuleNames) {
  const fs::path root = lowmem::testing::fresh_temp_dir("hf_train_lora");
  Config c = hf_config(root, "lora");
  c.targets = "q_proj,k_proj,v_proj,o_proj";
  auto session = lowmem::train::build_session(c);
  auto* llama = dynamic_cast<lowmem::models::Llama*>(session->model.get());
  ASSERT_NE(llama, nullptr);
  EXPECT_TRUE(llama->config().qkv_bias());
  int64_t lora = 0;
  for (const auto& kv : session->model->named_parameters()) {
    const bool is_lora = kv.key().find("lora_") != std::string::npos;
    lora += is_lora;
    EXPECT_EQ(kv.value().requires_grad(), is_lora) << kv.key();
  }
  EXPECT_EQ(lora, 2 * 2 * 4);  // A and B on 4 projections of 2 layers
  const auto r = lowmem::train::run(c);
  EXPECT_EQ(r.steps, 3);
  EXPECT_TRUE(std::isfinite(r.eval_loss));
}

TEST(HfTrain, GaLoreAndAllLinear) {
  const fs::path root = lowmem::testing::fresh_temp_dir("hf_train_galore");
  Config c = hf_config(root, "galore");
  c.set("galore.rank", "4");
  const auto r = lowmem::train::run(c);
  EXPECT_EQ(r.steps, 3);
  EXPECT_TRUE(std::isfinite(r.eval_loss));
  Config all =
      hf_config(lowmem::testing::fresh_temp_dir("hf_train_all"), "lora");
  all.targets = "all-linear";
  auto session = lowmem::train::build_session(all);
  int64_t adapted = 0;
  for (const auto& kv : session->model->named_parameters())
    adapted += kv.key().find("lora_A") != std::string::npos;
  EXPECT_EQ(adapted, 2 * 7);  // every projection; no lm_head (tied, a lookup)
}

// One way of training the loaded model: the method, the optimizer and any
// further keys.
struct HfCase {
  std::string label, method, optimizer;
  std::vector<std::pair<std::string, std::string>> keys;
};

std::ostream& operator<<(std::ostream& os, const HfCase& c) {
  return os << c.label;
}

// Every method with the default optimizer, every optimizer under full
// fine-tuning (from the registries, so a new row is covered), then the
// modes that change how a step runs.
std::vector<HfCase> hf_cases() {
  std::vector<HfCase> out;
  for (const auto& m : lowmem::train::known_methods()) {
    HfCase c{"method_" + m, m, "adamw", {}};
    if (m == "galore") c.keys = {{"galore.rank", "4"}};
    if (m == "projected-adapter") c.keys = {{"projected_adapter.rank", "4"}};
    out.push_back(c);
  }
  for (const auto& o : lowmem::train::known_optimizers()) {
    if (o != "adamw") out.push_back({"optimizer_" + o, "full", o, {}});
  }
  out.push_back({"galore_layerwise",
                 "galore",
                 "adamw",
                 {{"galore.rank", "4"}, {"galore.layerwise", "true"}}});
  out.push_back({"lora_checkpointing",
                 "lora",
                 "adamw",
                 {{"hf.activation_checkpointing", "true"}}});
  out.push_back({"full_checkpointing_came",
                 "full",
                 "came",
                 {{"hf.activation_checkpointing", "true"}}});
  out.push_back({"lora_bf16", "lora", "adamw", {{"hf.dtype", "bfloat16"}}});
  out.push_back({"full_bf16", "full", "adamw", {{"hf.dtype", "bfloat16"}}});
  out.push_back({"lora_nf4", "lora", "adamw", {{"base_dtype", "nf4"}}});
  out.push_back({"galore_8bit",
                 "galore",
                 "adamw",
                 {{"galore.rank", "4"}, {"optim_bits", "8"}}});
  return out;
}

std::string case_name(const testing::TestParamInfo<HfCase>& info) {
  std::string s = info.param.label;
  for (char& ch : s)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return s;
}

class HfTrainEvery : public testing::TestWithParam<HfCase> {};

// The case trains the loaded model for 3 steps to a finite loss; some
// trainable tensor moves and every frozen one stays bit-identical.
TEST_P(HfTrainEvery, TrainsTheLoadedModel) {
  const HfCase& hc = GetParam();
  const fs::path root =
      lowmem::testing::fresh_temp_dir("hf_every_" + case_name({GetParam(), 0}));
  Config c = hf_config(root, hc.method);
  c.optimizer = hc.optimizer;
  for (const auto& kv : hc.keys) c.set(kv.first, kv.second);
  std::shared_ptr<lowmem::models::Model> model;
  std::map<std::string, torch::Tensor> before;
  std::map<std::string, bool> trainable;
  const auto r = lowmem::train::run(c, {}, [&](lowmem::train::Session& s) {
    model = s.model;
    ASSERT_NE(dynamic_cast<lowmem::models::Llama*>(model.get()), nullptr);
    for (const auto& kv : model->named_parameters()) {
      before[kv.key()] = kv.value().detach().clone();
      trainable[kv.key()] = kv.value().requires_grad();
    }
  });
  ASSERT_TRUE(model);
  EXPECT_EQ(r.steps, 3);
  EXPECT_EQ(r.skipped, 0);
  EXPECT_TRUE(std::isfinite(r.eval_loss)) << r.eval_loss;
  int64_t moved = 0, n_trainable = 0;
  for (const auto& kv : model->named_parameters()) {
    const auto& old = before.at(kv.key());
    const bool same = torch::equal(old, kv.value().detach());
    if (trainable.at(kv.key())) {
      ++n_trainable;
      moved += !same;
    } else {
      EXPECT_TRUE(same) << kv.key() << " is frozen but changed";
    }
  }
  EXPECT_GT(n_trainable, 0);
  EXPECT_GT(moved, 0) << "no trainable tensor moved";
  if (hc.label.find("bf16") != std::string::npos) {
    bool any_bf16 = false;
    for (const auto& kv : before)
      any_bf16 |= kv.second.scalar_type() == torch::kBFloat16;
    EXPECT_TRUE(any_bf16) << "hf.dtype bfloat16 left no bf16 weight";
  }
}

INSTANTIATE_TEST_SUITE_P(AllMethods, HfTrainEvery,
                         testing::ValuesIn(hf_cases()), case_name);

TEST(HfTrain, InfoAndErrors) {
  const fs::path root = lowmem::testing::fresh_temp_dir("hf_train_info");
  Config c = hf_config(root, "full");
  const auto info = lowmem::train::info(c);
  auto m = lowmem::interop::load_hf_model(c.get("hf.path"));
  EXPECT_EQ(info.total_params, lowmem::models::count_parameters(*m));
  // The step's measurements: the weights were live before it, its peak came
  // on top, the process's RSS holds both; the step and the build took time.
  EXPECT_GE(info.live_before_step_bytes,
            info.frozen_bytes + info.trainable_bytes);
  EXPECT_GE(info.peak_step_bytes,
            info.gradient_bytes);  // full: every weight's gradient
  EXPECT_GE(info.peak_rss_bytes,
            info.live_before_step_bytes + info.peak_step_bytes);
  EXPECT_TRUE(std::isfinite(info.step_loss));
  EXPECT_GT(info.step_seconds, 0.0);
  EXPECT_GT(info.step_cpu_seconds, 0.0);
  EXPECT_GT(info.build_seconds, 0.0);
  const std::string text = info.to_string();
  for (const char* line :
       {"tracked peak:", "peak RSS", "s wall,", "s CPU (build"})
    EXPECT_NE(text.find(line), std::string::npos) << line << "\n" << text;
  Config none = c;
  none.set("hf.path", "");
  EXPECT_THROW(lowmem::train::build_session(none), lowmem::train::ConfigError);
  Config longer = c;
  longer.set("hf.context", "65");
  try {
    lowmem::train::build_session(longer);
    ADD_FAILURE() << "context above max_position_embeddings was accepted";
  } catch (const lowmem::train::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(
                  "hf.context 65 exceeds max_position_embeddings 64"),
              std::string::npos)
        << e.what();
  }
}

TEST(HfTrain, RecipeParses) {
  Config c;
  c.apply_yaml_file(lowmem::testing::source_path("recipes/finetune-hf.yaml"));
  EXPECT_EQ(c.model, "hf");
  EXPECT_EQ(c.method, "lora");
  EXPECT_EQ(c.targets, "q_proj,k_proj,v_proj,o_proj");
}

}  // namespace
