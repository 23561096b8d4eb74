// Hugging Face model directories in and out (interop/hf_config.h,
// interop/hf_checkpoint.h): directories written by tests/models/hf_reference.py
// in HF's layout (F32, F16, BF16; single file and 2 shards with an index)
// load to the transcription's logits; lowmem's own saves load back to equal
// logits; every refusal is one error naming what is wrong.
#include "lowmem/interop/hf_checkpoint.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

#include "lowmem/core/json.h"
#include "lowmem/interop/hf_config.h"
#include "lowmem/io/atomic_file.h"
#include "lowmem/io/safetensors.h"
#include "testing/files.h"
#include "testing/golden.h"

namespace {

namespace fs = std::filesystem;
using namespace lowmem::interop;  // NOLINT
using lowmem::models::Llama;
using lowmem::models::LlamaConfig;
using lowmem::testing::closeness;
using lowmem::testing::fresh_temp_dir;

// The reference directories, written once per test process; "" when python3
// with torch is absent.
const fs::path& reference_dir() {
  static const fs::path dir = [] {
    if (std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") != 0)
      return fs::path();
    auto d = fresh_temp_dir("hf_dirs");
    const std::string cmd =
        "/usr/bin/python3 '" +
        lowmem::testing::source_path("tests/models/hf_reference.py") + "' '" +
        d.string() + "' --hf-dirs";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
    return d;
  }();
  return dir;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "(no error)";
}

#define EXPECT_ERROR(stmt, needle)                           \
  do {                                                       \
    const std::string msg_ = error_of([&] { stmt; });        \
    EXPECT_NE(msg_.find(needle), std::string::npos) << msg_; \
  } while (0)

class HfDirs : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (reference_dir().empty())
      GTEST_SKIP() << "no /usr/bin/python3 with torch (Debian python3-torch)";
  }
};

TEST_P(HfDirs, LoadsToTheTranscriptionsLogits) {
  const fs::path dir = reference_dir() / "hf" / GetParam();
  auto ref = lowmem::testing::load_tensor_dict(
      (reference_dir() / "hf" / (GetParam() + ".pt")).string());
  HfConfig cfg;
  auto m = load_hf_model(dir.string(), HfLoadOptions(), &cfg);
  for (const auto& kv : m->named_parameters())
    EXPECT_EQ(kv.value().scalar_type(), torch::kFloat) << kv.key();
  auto logits = m->forward(ref.at("idx"));
  EXPECT_LT(closeness(logits, ref.at("logits"), 1e-5, 1e-5), 1.0);
  // "auto": the stored dtype.
  auto native =
      load_hf_model(dir.string(), HfLoadOptions().dtype(c10::nullopt));
  EXPECT_EQ(native->embed_tokens.scalar_type(), cfg.torch_dtype);
  auto pf = m->named_parameters();
  for (const auto& kv : native->named_parameters())
    EXPECT_TRUE(torch::equal(kv.value().to(torch::kFloat), pf[kv.key()]))
        << kv.key();
}

TEST_P(HfDirs, SavedAgainLoadsToTheSameLogits) {
  const fs::path dir = reference_dir() / "hf" / GetParam();
  auto ref = lowmem::testing::load_tensor_dict(
      (reference_dir() / "hf" / (GetParam() + ".pt")).string());
  HfConfig cfg;
  auto m = load_hf_model(dir.string(), HfLoadOptions(), &cfg);
  const fs::path out = fresh_temp_dir("hf_resave") / "model";
  save_hf_checkpoint(*m, cfg, out.string(),
                     HfSaveOptions().dtype(cfg.torch_dtype));
  HfConfig again;
  auto back = load_hf_model(out.string(), HfLoadOptions(), &again);
  EXPECT_TRUE(
      torch::equal(back->forward(ref.at("idx")), m->forward(ref.at("idx"))));
  EXPECT_EQ(again.architecture, cfg.architecture);
  EXPECT_EQ(again.torch_dtype, cfg.torch_dtype);
  // Keys lowmem does not use survive.
  EXPECT_EQ(again.raw.at("bos_token_id"), 1);
  EXPECT_EQ(again.raw.at("eos_token_id"), 2);
}

INSTANTIATE_TEST_SUITE_P(
    Reference, HfDirs,
    ::testing::Values("llama_gqa_f32", "llama_head_dim_bias_f16",
                      "llama3_rope_tied_bf16", "qwen2_bias_tied_f32_sharded",
                      "qwen3_qk_norm_bf16_sharded", "mistral_window_f16"),
    [](const auto& info) { return info.param; });

TEST(HfConfigJson, ReadsEachArchitecture) {
  auto base = nlohmann::json{{"vocab_size", 100},
                             {"hidden_size", 32},
                             {"intermediate_size", 64},
                             {"num_hidden_layers", 2},
                             {"num_attention_heads", 4}};
  auto with = [&](nlohmann::json extra) {
    auto j = base;
    j.update(extra);
    return parse_hf_config(j, "config.json");
  };
  auto llama = with({{"architectures", {"LlamaForCausalLM"}}});
  EXPECT_EQ(llama.model_type, "llama");
  EXPECT_EQ(llama.llama.max_position_embeddings(), 2048);  // LlamaConfig's
  EXPECT_EQ(llama.torch_dtype, c10::kFloat);
  auto qwen3 = with({{"model_type", "qwen3"}, {"torch_dtype", "bfloat16"}});
  EXPECT_EQ(qwen3.architecture, "Qwen3ForCausalLM");
  EXPECT_TRUE(qwen3.llama.qk_norm());
  EXPECT_EQ(qwen3.llama.head_dim(), 128);  // Qwen3Config's default
  EXPECT_EQ(qwen3.torch_dtype, c10::kBFloat16);
  auto qwen2 = with(
      {{"architectures", {"Qwen2ForCausalLM"}}, {"num_key_value_heads", 2}});
  EXPECT_TRUE(qwen2.llama.qkv_bias());
  EXPECT_FALSE(qwen2.llama.attention_bias());
  EXPECT_EQ(qwen2.llama.num_key_value_heads(), 2);
  auto mistral = with(
      {{"architectures", {"MistralForCausalLM"}}, {"sliding_window", 4096}});
  EXPECT_EQ(mistral.llama.sliding_window(), 4096);
  auto null_window = with(
      {{"architectures", {"MistralForCausalLM"}}, {"sliding_window", nullptr}});
  EXPECT_EQ(null_window.llama.sliding_window(), 0);
  // Llama 3.1's rope_scaling, 4.x spelling; and 5.x's rope_parameters.
  auto l31 = with({{"architectures", {"LlamaForCausalLM"}},
                   {"rope_theta", 500000.0},
                   {"rope_scaling",
                    {{"rope_type", "llama3"},
                     {"factor", 8.0},
                     {"low_freq_factor", 1.0},
                     {"high_freq_factor", 4.0},
                     {"original_max_position_embeddings", 8192}}}});
  EXPECT_EQ(l31.llama.rope_scaling().rope_type(), "llama3");
  EXPECT_DOUBLE_EQ(l31.llama.rope_theta(), 500000.0);
  EXPECT_EQ(l31.llama.rope_scaling().original_max_position_embeddings(), 8192);
  auto v5 =
      with({{"architectures", {"LlamaForCausalLM"}},
            {"rope_parameters",
             {{"rope_type", "linear"}, {"factor", 2.0}, {"rope_theta", 1e6}}}});
  EXPECT_EQ(v5.llama.rope_scaling().rope_type(), "linear");
  EXPECT_DOUBLE_EQ(v5.llama.rope_theta(), 1e6);
  auto old_type =
      with({{"architectures", {"LlamaForCausalLM"}},
            {"rope_scaling", {{"type", "linear"}, {"factor", 4.0}}}});
  EXPECT_DOUBLE_EQ(old_type.llama.rope_scaling().factor(), 4.0);
  // Written back: the same configuration.
  auto j = hf_config_json(l31, c10::kBFloat16);
  EXPECT_EQ(j.at("torch_dtype"), "bfloat16");
  auto re = parse_hf_config(j, "again");
  EXPECT_EQ(re.llama.rope_scaling().factor(), 8.0);
  EXPECT_EQ(re.architecture, "LlamaForCausalLM");
}

TEST(HfConfigJson, RefusalsNameTheValue) {
  auto base = nlohmann::json{{"architectures", {"LlamaForCausalLM"}},
                             {"vocab_size", 100},
                             {"hidden_size", 32},
                             {"intermediate_size", 64},
                             {"num_hidden_layers", 2},
                             {"num_attention_heads", 4}};
  auto with = [&](nlohmann::json extra) {
    auto j = base;
    j.update(extra);
    return j;
  };
  EXPECT_ERROR(
      parse_hf_config(with({{"architectures", {"GPT2LMHeadModel"}}}), "c.json"),
      "[hf] c.json: unsupported architecture 'GPT2LMHeadModel' (supported: "
      "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, "
      "Qwen3ForCausalLM)");
  EXPECT_ERROR(
      parse_hf_config(
          with({{"rope_scaling", {{"rope_type", "yarn"}, {"factor", 4.0}}}}),
          "c.json"),
      "[hf] c.json: unsupported rope_scaling type 'yarn' (supported: default, "
      "linear, llama3)");
  EXPECT_ERROR(parse_hf_config(with({{"hidden_act", "gelu"}}), "c.json"),
               "[hf] c.json: hidden_act 'gelu' is not supported");
  EXPECT_ERROR(parse_hf_config(with({{"hidden_size", "32"}}), "c.json"),
               "[hf] c.json: \"hidden_size\" must be an integer, got \"32\"");
  auto missing = base;
  missing.erase("vocab_size");
  EXPECT_ERROR(parse_hf_config(missing, "c.json"),
               "[hf] c.json: missing \"vocab_size\"");
  EXPECT_ERROR(
      parse_hf_config(with({{"num_key_value_heads", 3}}), "c.json"),
      "num_attention_heads 4 is not a multiple of num_key_value_heads 3");
  EXPECT_ERROR(parse_hf_config(with({{"torch_dtype", "int8"}}), "c.json"),
               "[hf] c.json: unsupported torch_dtype 'int8'");
  EXPECT_ERROR(parse_hf_config(with({{"architectures", {"Qwen2ForCausalLM"}},
                                     {"use_sliding_window", true}}),
                               "c.json"),
               "use_sliding_window true is not supported");
  EXPECT_ERROR(
      parse_hf_config(
          with({{"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}}}}),
          "c.json"),
      "rope_scaling llama3 needs \"low_freq_factor\"");
}

// ---- lowmem's own saves ----

LlamaConfig small(int64_t vocab = 50) {
  return LlamaConfig()
      .vocab_size(vocab)
      .hidden_size(16)
      .intermediate_size(24)
      .num_hidden_layers(2)
      .num_attention_heads(4)
      .num_key_value_heads(2)
      .initializer_range(0.2);
}

TEST(HfCheckpoint, RoundTripSingleAndSharded) {
  const fs::path root = fresh_temp_dir("hf_roundtrip");
  int variant = 0;
  for (const auto& c :
       {small(), LlamaConfig(small()).qk_norm(true).head_dim(6),
        LlamaConfig(small()).qkv_bias(true).tie_word_embeddings(true),
        LlamaConfig(small()).sliding_window(3)}) {
    torch::manual_seed(0);
    Llama m(c);
    {
      torch::NoGradGuard g;
      for (auto& p : m.parameters())
        p.add_(torch::randn_like(p) * 0.1);  // norms and biases away from init
    }
    auto idx = torch::randint(0, 50, {2, 7}, torch::kLong);
    // The same directory twice: the sharded save removes model.safetensors.
    const fs::path dir = root / ("m" + std::to_string(variant++));
    for (int64_t shard : {int64_t{5'000'000'000}, int64_t{3000}}) {
      save_hf_checkpoint(m, dir.string(),
                         HfSaveOptions().max_shard_size(shard));
      const bool sharded = fs::exists(dir / "model.safetensors.index.json");
      EXPECT_EQ(sharded, shard == 3000);
      EXPECT_EQ(fs::exists(dir / "model.safetensors"),
                !sharded);  // stale removed
      HfConfig cfg;
      auto back = load_hf_model(dir.string(), HfLoadOptions(), &cfg);
      EXPECT_EQ(cfg.architecture, hf_config_for(c).architecture);
      EXPECT_TRUE(torch::equal(back->forward(idx), m.forward(idx)));
      if (sharded) {
        auto index = lowmem::read_json_file(
            (dir / "model.safetensors.index.json").string());
        int64_t total = 0;
        for (const auto& p : m.parameters()) total += p.numel() * 4;
        EXPECT_EQ(index.at("metadata").at("total_size"), total);
        std::set<std::string> files;
        for (const auto& kv : index.at("weight_map").items())
          files.insert(kv.value().get<std::string>());
        char last[32];
        std::snprintf(last, sizeof(last), "-of-%05zu.safetensors",
                      files.size());
        EXPECT_GT(files.size(), 1u);
        for (const auto& f : files) {
          EXPECT_TRUE(fs::exists(dir / f)) << f;
          EXPECT_NE(f.find(last), std::string::npos) << f;
        }
      }
    }
  }
}

TEST(HfCheckpoint, SavesInBFloat16AndLoadsIntoBFloat16Parameters) {
  torch::manual_seed(1);
  Llama m(small());
  const fs::path dir = fresh_temp_dir("hf_bf16") / "m";
  save_hf_checkpoint(m, dir.string(), HfSaveOptions().dtype(torch::kBFloat16));
  auto header =
      lowmem::io::read_safetensors_header((dir / "model.safetensors").string());
  for (const auto& e : header.entries)
    EXPECT_EQ(e.dtype, torch::kBFloat16) << e.name;
  EXPECT_EQ(header.metadata.at("format"), "pt");
  auto back = load_hf_model(dir.string(), HfLoadOptions().dtype(c10::nullopt));
  auto pm = m.named_parameters();
  for (const auto& kv : back->named_parameters()) {
    EXPECT_EQ(kv.value().scalar_type(), torch::kBFloat16);
    EXPECT_TRUE(torch::equal(kv.value(), pm[kv.key()].to(torch::kBFloat16)))
        << kv.key();
  }
}

// A saved directory whose weight file is replaced by `tensors`.
fs::path with_weights(
    const std::string& name,
    const std::function<void(std::map<std::string, at::Tensor>&)>& edit) {
  torch::manual_seed(2);
  Llama m(small());
  const fs::path dir = fresh_temp_dir(name) / "m";
  save_hf_checkpoint(m, dir.string());
  auto f = lowmem::io::load_safetensors((dir / "model.safetensors").string());
  edit(f.tensors);
  lowmem::io::save_safetensors((dir / "model.safetensors").string(), f.tensors);
  return dir;
}

TEST(HfCheckpoint, MissingUnexpectedAndMisshapenTensorsAreNamed) {
  auto missing = with_weights("hf_missing", [](auto& t) {
    t.erase("model.layers.1.mlp.up_proj.weight");
  });
  EXPECT_ERROR(
      load_hf_model(missing.string()),
      "[hf] tensor 'model.layers.1.mlp.up_proj.weight' is missing from " +
          missing.string());
  auto extra = with_weights("hf_extra", [](auto& t) {
    t["model.layers.0.self_attn.extra.weight"] = torch::zeros({2});
  });
  EXPECT_ERROR(
      load_hf_model(extra.string()),
      "[hf] unexpected tensor 'model.layers.0.self_attn.extra.weight' in " +
          extra.string() + "/model.safetensors");
  auto shape = with_weights(
      "hf_shape", [](auto& t) { t["model.norm.weight"] = torch::ones({17}); });
  EXPECT_ERROR(load_hf_model(shape.string()),
               "[hf] tensor 'model.norm.weight' in " + shape.string() +
                   "/model.safetensors has shape [17], the model expects [16]");
  auto ints = with_weights("hf_dtype", [](auto& t) {
    t["model.norm.weight"] = torch::ones({16}, torch::kInt);
  });
  EXPECT_ERROR(load_hf_model(ints.string()),
               "has dtype I32 (readable: F32, F16, BF16, F64)");
  // Ignored as transformers ignores them.
  auto inv_freq = with_weights("hf_inv_freq", [](auto& t) {
    t["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch::ones({2});
  });
  EXPECT_NO_THROW(load_hf_model(inv_freq.string()));
}

TEST(HfCheckpoint, DirectoryAndIndexProblemsAreNamed) {
  const fs::path empty = fresh_temp_dir("hf_empty");
  {
    std::ofstream(empty / "config.json")
        << hf_config_json(hf_config_for(small()), torch::kFloat);
  }
  EXPECT_ERROR(
      load_hf_model(empty.string()),
      "has neither model.safetensors nor model.safetensors.index.json");
  torch::manual_seed(3);
  Llama m(small());
  const fs::path dir = fresh_temp_dir("hf_index") / "m";
  save_hf_checkpoint(m, dir.string(), HfSaveOptions().max_shard_size(4000));
  auto index =
      lowmem::read_json_file((dir / "model.safetensors.index.json").string());
  auto bad = index;
  bad["weight_map"]["model.norm.weight"] = "../elsewhere.safetensors";
  lowmem::io::atomic_write_file((dir / "model.safetensors.index.json").string(),
                                bad.dump());
  EXPECT_ERROR(
      load_hf_model(dir.string()),
      "weight_map['model.norm.weight'] = '../elsewhere.safetensors' is not a "
      ".safetensors file name in the directory");
  auto moved = index;
  const std::string where = moved["weight_map"]["model.norm.weight"];
  for (const auto& kv : index.at("weight_map").items()) {
    if (kv.value() != where) {  // point it at a shard that lacks it
      moved["weight_map"]["model.norm.weight"] = kv.value();
      break;
    }
  }
  lowmem::io::atomic_write_file((dir / "model.safetensors.index.json").string(),
                                moved.dump());
  EXPECT_ERROR(load_hf_model(dir.string()), "tensor 'model.norm.weight' in ");
  // Tied: no lm_head.weight is written and none is needed.
  Llama tied(LlamaConfig(small()).tie_word_embeddings(true));
  const fs::path tdir = fresh_temp_dir("hf_tied") / "m";
  save_hf_checkpoint(tied, tdir.string());
  auto h = lowmem::io::read_safetensors_header(
      (tdir / "model.safetensors").string());
  for (const auto& e : h.entries) EXPECT_NE(e.name, "lm_head.weight");
  EXPECT_NO_THROW(load_hf_model(tdir.string()));
}

}  // namespace
