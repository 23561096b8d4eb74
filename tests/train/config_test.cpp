#include "lowmem/train/config.h"

#include <gtest/gtest.h>

#include <array>
#include <filesystem>
#include <fstream>

#include "lowmem/models/layers.h"
#include "lowmem/nn/slot_module.h"
#include "lowmem/optim/came.h"
#include "lowmem/train/run.h"
#include "testing/errors.h"
#include "testing/golden.h"

namespace lowmem::train {
namespace {

using lowmem::testing::expect_config_error;
using lowmem::testing::expect_config_error_is;

// c.validate() must fail with `needle` in its message.
void expect_invalid(const Config& c, const std::string& needle) {
  expect_config_error([&] { c.validate(); }, needle);
}

TEST(Config, KeysComeFromTheVisitors) {
  Config c;
  const auto keys = c.keys();
  auto has = [&](const std::string& k) {
    return std::find(keys.begin(), keys.end(), k) != keys.end();
  };
  EXPECT_TRUE(has("steps"));
  EXPECT_TRUE(has("came.beta3"));
  EXPECT_TRUE(has("adafactor.beta1"));
  EXPECT_TRUE(has("gpt.n_embd"));
  EXPECT_TRUE(has("galore.rank"));
  EXPECT_FALSE(has("galore.accumulation_steps"));  // follows accum_steps
  // Every key round-trips through set/get.
  for (const auto& k : keys) {
    const std::string v = c.get(k);
    EXPECT_NO_THROW(c.set(k, v)) << k << " = " << v;
    EXPECT_EQ(c.get(k), v) << k;
  }
}

TEST(Config, SetParsesAndRejects) {
  Config c;
  c.set("steps", "42");
  EXPECT_EQ(c.steps, 42);
  c.set("came.beta3", "0.5");
  EXPECT_EQ(std::get<2>(c.section("came")->get<optim::CameOptions>().betas()),
            0.5);
  c.set("adafactor.lr", "0.01");
  EXPECT_EQ(c.get("adafactor.lr"), "0.01");
  c.set("adafactor.lr", "none");
  EXPECT_EQ(c.get("adafactor.lr"), "none");
  c.set("gpt.bias", "false");
  EXPECT_EQ(c.get("gpt.bias"), "false");
  // {key, value, the whole message}
  const std::vector<std::array<std::string, 3>> bad = {
      {"stepz", "1", "unknown key 'stepz'"},
      {"came.beta9", "1", "unknown key 'came.beta9'"},
      {"steps", "ten", "bad value 'ten' for steps: expected an integer"},
      {"steps", "1.5", "bad value '1.5' for steps: expected an integer"},
      {"came.lr", "fast", "bad value 'fast' for came.lr: expected a number"},
      {"gpt.bias", "maybe",
       "bad value 'maybe' for gpt.bias: expected true or false"},
      {"steps", "99999999999999999999",
       "value 99999999999999999999 for steps is out of range"},
  };
  for (const auto& [key, value, message] : bad) {
    expect_config_error_is([&] { c.set(key, value); }, message);
  }
}

TEST(Config, ValidateNamesAndRanges) {
  Config c;
  c.validate();
  c.optimizer = "adam";
  expect_invalid(c, "unknown optimizer 'adam'");
  c = Config();
  c.steps = 0;
  expect_config_error_is([&] { c.validate(); }, "steps must be >= 1, got 0");
  c = Config();
  c.warmup_steps = c.steps + 1;
  expect_invalid(c, "warmup_steps must be in");
  c = Config();
  c.min_lr_ratio = 2;
  expect_invalid(c, "min_lr_ratio");
  c = Config();
  c.resume = "auto";
  expect_invalid(c, "out_dir");
}

TEST(Config, YamlRecipeThenOverrides) {
  Config c;
  c.apply_yaml(
      "steps: 50\noptimizer: came\ncame:\n  beta3: 0.99\n  lr: 1e-3\n"
      "gpt:\n  n_layer: 2\n",
      "r.yaml");
  EXPECT_EQ(c.steps, 50);
  EXPECT_EQ(c.optimizer, "came");
  EXPECT_EQ(c.get("came.beta3"), "0.99");
  EXPECT_EQ(c.get("gpt.n_layer"), "2");
  c.set("came.beta3", "0.9");  // a flag overrides the recipe
  EXPECT_EQ(c.get("came.beta3"), "0.9");
  // {recipe, the whole message}
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"stepz: 1\n", "r.yaml: unknown key 'stepz'"},
      {"came:\n  nope: 1\n", "r.yaml: unknown key 'came.nope'"},
      {"nope:\n  a: 1\n", "r.yaml: unknown section 'nope'"},
      {"steps: [1, 2]\n", "r.yaml: key 'steps' must be a single value"},
  };
  for (const auto& [yaml, message] : bad) {
    expect_config_error_is([&] { c.apply_yaml(yaml, "r.yaml"); }, message);
  }
  expect_config_error([&] { c.apply_yaml("steps: : :\n", "r.yaml"); },
                      "r.yaml: invalid YAML");
}

TEST(Config, ToYamlRoundTrips) {
  Config c;
  c.set("optimizer", "came");
  c.set("came.eps1", "1e-30");
  c.set("targets", "");
  c.set("out_dir", "runs/a b");
  const std::string y = c.to_yaml();
  EXPECT_NE(y.find("came:"), std::string::npos);
  EXPECT_EQ(y.find("adafactor:"), std::string::npos);  // inactive section
  Config d;
  d.apply_yaml(y, "printed");
  EXPECT_EQ(d.to_yaml(/*all=*/true), c.to_yaml(/*all=*/true));
}

TEST(Config, EveryShippedRecipeLoadsAndValidates) {
  namespace fs = std::filesystem;
  int n = 0;
  for (const auto& e :
       fs::directory_iterator(lowmem::testing::source_path("recipes"))) {
    if (e.path().extension() != ".yaml") {
      continue;
    }
    Config c;
    EXPECT_NO_THROW(c.apply_yaml_file(e.path().string())) << e.path();
    EXPECT_NO_THROW(c.validate()) << e.path();
    ++n;
  }
  EXPECT_GE(n, 1);
  Config d;
  d.apply_yaml_file(lowmem::testing::source_path("recipes/gpt-fortunes.yaml"));
  EXPECT_EQ(d.model, "gpt");
  EXPECT_EQ(d.data, "text");
  EXPECT_EQ(d.optimizer, "adamw");
}

}  // namespace
}  // namespace lowmem::train

// build_model(config): the model alone, sized from the data section without
// reading any data (generate/eval/export load weights into it).
TEST(Config, BuildModelNeedsNoData) {
  lowmem::train::Config c;
  c.set("model", "vit");
  c.set("data", "fashion-mnist");
  c.set("fashion_mnist.root", "/nonexistent/fashion");
  c.set("fashion_mnist.classes", "5,6,7");
  auto m = lowmem::train::build_model(c);
  EXPECT_EQ(m->named_parameters()["head.weight"].size(0), 3);
  c.set("model", "gpt");
  c.set("data", "text");
  c.set("text.path", "/nonexistent/corpus.txt");
  c.set("gpt.n_embd", "32");
  EXPECT_EQ(
      lowmem::train::build_model(c)->named_parameters()["wte.weight"].size(1),
      32);
}

// SNELL's official layout through lowmem train keys: vit.fused_qkv=false
// gives separate q, k, v slots the targets reach one by one, and
// modules_to_save may name a parameter (the ViT's cls_token, which belongs
// to no submodule): it trains beside the head, the rest stays frozen.
TEST(Config, SeparateQkvTargetsAndAParameterInModulesToSave) {
  lowmem::train::Config c;
  c.set("model", "vit");
  c.set("data", "fashion-mnist");
  c.set("fashion_mnist.root", "/nonexistent/fashion");
  c.set("vit.n_layer", "1");
  c.set("vit.n_embd", "16");
  c.set("vit.n_head", "2");
  c.set("vit.fused_qkv", "false");
  c.set("method", "snell");
  c.set("targets", "q,k,v");
  c.set("modules_to_save", "head,cls_token");
  auto model = lowmem::train::build_model(c);
  lowmem::train::setup_method(c, model, c10::Device(c10::kCPU));
  std::vector<std::string> trainable;
  for (const auto& p : model->named_parameters())
    if (p.value().requires_grad()) trainable.push_back(p.key());
  for (const char* want :
       {"cls_token", "head.weight", "head.bias", "h.0.attn.q.snell_A",
        "h.0.attn.k.snell_B", "h.0.attn.v.snell_A"})
    EXPECT_NE(std::find(trainable.begin(), trainable.end(), want),
              trainable.end())
        << want;
  for (const auto& name : trainable)
    EXPECT_TRUE(name == "cls_token" || name.rfind("head.", 0) == 0 ||
                name.find(".snell_") != std::string::npos)
        << name;
  // Without the key: the ViT's default (the head only).
  c.set("modules_to_save", "");
  model = lowmem::train::build_model(c);
  lowmem::train::setup_method(c, model, c10::Device(c10::kCPU));
  EXPECT_FALSE(model->named_parameters()["cls_token"].requires_grad());
  EXPECT_TRUE(model->named_parameters()["head.weight"].requires_grad());
}

namespace lowmem::train {
namespace {

TEST(Config, BaseDtypeAndOptimBits) {
  Config c;
  c.method = "lora";
  c.set("base_dtype", "nf4");
  EXPECT_NO_THROW(c.validate());
  c.method = "full";
  expect_invalid(c, "base_dtype nf4 keeps the base weights frozen");
  c.method = "lora";
  c.set("base_dtype", "int4");
  expect_invalid(c, "base_dtype");
  c.set("base_dtype", "auto");
  // optim_bits writes the optimizers' own optim_bits.
  c.set("optim_bits", "8");
  c.optimizer = "came";
  Config e = c.with_optim_bits();
  EXPECT_EQ(e.get("came.optim_bits"), "8");
  EXPECT_EQ(e.get("adamw.optim_bits"), "8");  // the aux optimizer
  EXPECT_EQ(c.get("came.optim_bits"), "32");  // c itself unchanged
  c.optimizer = "sgd";
  expect_invalid(c, "optimizer sgd has no 8-bit");
  c.optimizer = "adamw";
  c.set("optim_bits", "4");
  expect_invalid(c, "optim_bits must be");
}

TEST(Config, Nf4BaseQuantizesTheFrozenLinearLayers) {
  Config c;
  c.model = "llama";
  c.method = "lora";
  c.base_dtype = "nf4";
  c.targets = "q_proj,v_proj";
  c.set("llama.num_hidden_layers", "1");
  auto model = build_model(c);
  const MethodSetup m = setup_method(c, model, c10::Device(c10::kCPU));
  int64_t quantized = 0, slots = 0;
  for (const auto& ref : nn::find_slots(*model)) {
    ++slots;
    quantized += ref.layer()->is_quantized() ? 1 : 0;
  }
  // Every projection of the layer (7), the adapted ones under LoRA.
  EXPECT_EQ(slots, 7);
  EXPECT_EQ(quantized, 7);
  // Only LoRA's factors train.
  for (const auto& r : m.routes)
    for (const auto& n : r.names) EXPECT_NE(n.find("lora_"), std::string::npos);
}

}  // namespace
}  // namespace lowmem::train
