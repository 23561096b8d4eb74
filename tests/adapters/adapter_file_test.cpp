#include "lowmem/adapters/adapter_file.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <nlohmann/json.hpp>

#include "adapters/tiny_model.h"
#include "lowmem/adapters/lora.h"
#include "lowmem/adapters/lotr.h"
#include "lowmem/adapters/snell.h"
#include "lowmem/io/atomic_file.h"
#include "lowmem/io/safetensors.h"
#include "testing/errors.h"

namespace {

using namespace lowmem::adapters;
using lowmem::testing::error_of;
using lowmem::testing::snapshot;
using lowmem::testing::TinyModel;

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/lowmem_adapter_XXXXXX";
    char* d = ::mkdtemp(tmpl);
    path_ = d ? d : "/tmp";
  }
  ~TempDir() { std::system(("rm -rf '" + path_ + "'").c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Randomises every adapter tensor so a round trip is not trivially zero.
void randomize(const AdapterModel& a) {
  torch::NoGradGuard g;
  for (auto& kv : a.state_tensors()) kv.second.normal_(0, 0.3);
}

// Two models with identical base weights.
std::pair<std::shared_ptr<TinyModel>, std::shared_ptr<TinyModel>> twin_models(int64_t d = 8) {
  torch::manual_seed(10);
  auto a = std::make_shared<TinyModel>(d);
  torch::manual_seed(10);
  auto b = std::make_shared<TinyModel>(d);
  return {a, b};
}

TEST(AdapterFile, LoraUsesThePeftLayout) {
  auto [model, unused] = twin_models();
  auto lora = inject_lora(model, TargetOptions({"q", "v"}), LoraOptions(4).lora_alpha(16));
  lora->base_model_name_or_path = "tiny";
  TempDir dir;
  save_adapter(*lora, dir.path());
  auto f = lowmem::io::load_safetensors(dir.path() + "/adapter_model.safetensors");
  EXPECT_EQ(f.metadata.at("format"), "pt");
  ASSERT_EQ(f.tensors.size(), 8u);
  EXPECT_EQ(f.tensors.at("base_model.model.blocks.0.q.lora_A.weight").sizes(),
            (std::vector<int64_t>{4, 8}));
  EXPECT_EQ(f.tensors.at("base_model.model.blocks.1.v.lora_B.weight").sizes(),
            (std::vector<int64_t>{8, 4}));
  auto cfg = nlohmann::json::parse(lowmem::io::read_file(dir.path() + "/adapter_config.json"));
  EXPECT_EQ(cfg["peft_type"], "LORA");
  EXPECT_EQ(cfg["r"], 4);
  EXPECT_EQ(cfg["lora_alpha"], 16);
  EXPECT_EQ(cfg["target_modules"], nlohmann::json({"q", "v"}));
  EXPECT_EQ(cfg["lora_dropout"], 0.0);
  EXPECT_EQ(cfg["bias"], "none");
  EXPECT_EQ(cfg["use_rslora"], false);
  EXPECT_EQ(cfg["fan_in_fan_out"], false);
  EXPECT_EQ(cfg["init_lora_weights"], true);
  EXPECT_EQ(cfg["base_model_name_or_path"], "tiny");
  EXPECT_TRUE(cfg.contains("task_type"));
}

// save -> load into a fresh copy of the base model gives the same outputs.
template <class Inject>
void round_trip(Inject inject) {
  auto [src, dst] = twin_models();
  auto a = inject(src);
  randomize(*a);
  TempDir dir;
  save_adapter(*a, dir.path());
  auto b = load_adapter(dst, dir.path());
  EXPECT_EQ(b->peft_type(), a->peft_type());
  src->eval();
  dst->eval();
  at::Tensor x = torch::randn({4, 8});
  EXPECT_TRUE(torch::equal(src->forward(x), dst->forward(x)));
  EXPECT_EQ(b->num_trainable_parameters(), a->num_trainable_parameters());
  for (const auto& kv : a->state_tensors())
    EXPECT_TRUE(torch::equal(kv.second, b->state_tensors().at(kv.first))) << kv.first;
  // Loading into an existing adapter works too.
  auto c = inject(std::make_shared<TinyModel>(8));
  load_adapter(*c, dir.path());
  for (const auto& kv : a->state_tensors())
    EXPECT_TRUE(torch::equal(kv.second, c->state_tensors().at(kv.first))) << kv.first;
}

TEST(AdapterFile, RoundTripLora) {
  round_trip([](std::shared_ptr<TinyModel> m) {
    return inject_lora(m, TargetOptions({"q", "up"}).modules_to_save({"head"}),
                       LoraOptions(3).use_rslora(true));
  });
}

TEST(AdapterFile, RoundTripLotr) {
  round_trip([](std::shared_ptr<TinyModel> m) {
    return inject_lotr(m, TargetOptions({"q", "v"}), LotrOptions(3).grouping("shared"));
  });
}

TEST(AdapterFile, RoundTripSnell) {
  round_trip([](std::shared_ptr<TinyModel> m) {
    return inject_snell(m, TargetOptions({"q", "down"}), SnellOptions(4).sparsity(0.5));
  });
}

// Issue 20: a deeply nested adapter_config.json crashed `merge` and
// `load_adapter`; values were echoed whole. Every read is now bounded and the
// model untouched.
TEST(AdapterFile, HostileConfigsGiveOneShortError) {
  using lowmem::testing::expect_short_error;
  auto [m, other] = twin_models();
  auto a = inject_lora(m, TargetOptions({"q"}), LoraOptions(2));
  TempDir dir;
  save_adapter(*a, dir.path());
  const std::string cfg = dir.path() + "/" + kAdapterConfigFile;
  const auto before = snapshot(*other);
  auto with = [&](const std::string& text) {
    lowmem::io::atomic_write_file(cfg, text);
  };
  for (auto load_into_fresh : {false, true}) {
    auto load = [&] {
      if (load_into_fresh) {
        load_adapter(other, dir.path());
      } else {
        load_adapter(*a, dir.path());
      }
    };
    with(lowmem::testing::deep_json(300000));
    expect_short_error(load, "nesting deeper than the limit of 128 levels");
    with("{\"peft_type\": \"" + std::string(20 << 20, 'x') + "\"}");
    expect_short_error(load, "exceed the limit of 16777216 bytes");
    with("{\"peft_type\": \"" + std::string(10 << 20, 'x') + "\"}");
    expect_short_error(load, "(10485760 bytes)");
    with(
        "{\"peft_type\": \"LORA\", \"target_modules\": [\"q\"], "
        "\"rank_pattern\": {\"a\": \"" +
        std::string(10 << 20, 'x') + "\"}}");
    expect_short_error(load, "rank_pattern is not supported, got {\"a\":");
  }
  EXPECT_EQ(snapshot(*other).size(), before.size());  // no adapter left in
}

// A failed load leaves the model exactly as it was: same slots, same
// parameters, same values, same requires_grad flags.
void expect_untouched(TinyModel& m, const std::map<std::string, at::Tensor>& before) {
  auto names = m.named_parameters();
  EXPECT_EQ(names.size(), before.size());
  for (const auto& p : names) {
    ASSERT_TRUE(before.count(p.key())) << p.key();
    EXPECT_TRUE(torch::equal(p.value(), before.at(p.key()))) << p.key();
    EXPECT_TRUE(p.value().requires_grad()) << p.key();
  }
  for (const auto& s : lowmem::nn::find_slots(m))
    EXPECT_NE(dynamic_cast<lowmem::nn::Linear*>(s.layer().get()), nullptr)
        << s.path;
}

TEST(AdapterFile, ShapeMismatchFailsCleanly) {
  torch::manual_seed(11);
  auto src = std::make_shared<TinyModel>(8);
  TempDir dir;
  save_adapter(*inject_lora(src, TargetOptions({"q"}), LoraOptions(2)), dir.path());
  auto other = std::make_shared<TinyModel>(6);  // different width
  auto before = snapshot(*other);
  auto msg = error_of([&] { load_adapter(other, dir.path()); });
  EXPECT_NE(msg.find("blocks.0.q.lora_A.weight' has shape [2, 8] but the model needs [2, 6]"),
            std::string::npos)
      << msg;
  expect_untouched(*other, before);
}

TEST(AdapterFile, ModuleMismatchFailsCleanly) {
  torch::manual_seed(12);
  auto src = std::make_shared<TinyModel>(8, /*blocks=*/3);
  TempDir dir;
  save_adapter(*inject_lora(src, TargetOptions({"q"}), LoraOptions(2)), dir.path());
  auto fewer = std::make_shared<TinyModel>(8, /*blocks=*/2);
  auto before = snapshot(*fewer);
  auto msg = error_of([&] { load_adapter(fewer, dir.path()); });
  EXPECT_NE(msg.find("unexpected tensors {base_model.model.blocks.2.q.lora_A.weight"),
            std::string::npos)
      << msg;
  expect_untouched(*fewer, before);
  // A target the model lacks entirely.
  auto cfg = nlohmann::json::parse(lowmem::io::read_file(dir.path() + "/adapter_config.json"));
  cfg["target_modules"] = {"k_proj"};
  lowmem::io::atomic_write_file(dir.path() + "/adapter_config.json", cfg.dump());
  msg = error_of([&] { load_adapter(fewer, dir.path()); });
  EXPECT_NE(msg.find("k_proj"), std::string::npos) << msg;
  expect_untouched(*fewer, before);
}

TEST(AdapterFile, LoadIntoExistingAdapterChecksBeforeCopying) {
  auto [a, b] = twin_models();
  auto src = inject_lora(a, TargetOptions({"q", "v"}), LoraOptions(2));
  randomize(*src);
  TempDir dir;
  save_adapter(*src, dir.path());
  // Other rank: config check fails, nothing copied.
  auto dst = inject_lora(b, TargetOptions({"q", "v"}), LoraOptions(4));
  auto keep = dst->state_tensors();
  std::map<std::string, at::Tensor> copies;
  for (auto& kv : keep) copies[kv.first] = kv.second.clone();
  auto msg = error_of([&] { load_adapter(*dst, dir.path()); });
  EXPECT_NE(msg.find("saved r 2 != the model's r 4"), std::string::npos) << msg;
  // A file missing one tensor: nothing copied either.
  auto t = lowmem::io::load_safetensors(dir.path() + "/adapter_model.safetensors").tensors;
  t.erase("base_model.model.blocks.1.v.lora_B.weight");
  lowmem::io::save_safetensors(dir.path() + "/adapter_model.safetensors", t);
  auto dst2 = inject_lora(std::make_shared<TinyModel>(8), TargetOptions({"q", "v"}),
                          LoraOptions(2));
  auto keep2 = dst2->state_tensors();
  std::map<std::string, at::Tensor> copies2;
  for (auto& kv : keep2) copies2[kv.first] = kv.second.clone();
  msg = error_of([&] { load_adapter(*dst2, dir.path()); });
  EXPECT_NE(msg.find("missing tensors {base_model.model.blocks.1.v.lora_B.weight}"),
            std::string::npos)
      << msg;
  for (auto& kv : dst2->state_tensors())
    EXPECT_TRUE(torch::equal(kv.second, copies2.at(kv.first))) << kv.first;
  for (auto& kv : dst->state_tensors())
    EXPECT_TRUE(torch::equal(kv.second, copies.at(kv.first))) << kv.first;
}

TEST(AdapterFile, ReadsAHandWrittenPeftConfig) {
  // As PEFT 0.x writes it: extra keys, target_modules as a regex string.
  const std::string cfg = R"J({
    "alpha_pattern": {}, "auto_mapping": null, "base_model_name_or_path": "gpt2",
    "bias": "none", "fan_in_fan_out": false, "inference_mode": true,
    "init_lora_weights": true, "layers_pattern": null, "layers_to_transform": null,
    "lora_alpha": 32, "lora_dropout": 0.05, "modules_to_save": null,
    "peft_type": "LORA", "r": 16, "rank_pattern": {}, "revision": null,
    "target_modules": "blocks\\.\\d+\\.(q|v)", "task_type": "CAUSAL_LM",
    "use_dora": false, "use_rslora": false, "peft_version": "0.13.2"})J";
  auto [t, o] = lora_config_from_json(cfg);
  EXPECT_EQ(o.r(), 16);
  EXPECT_DOUBLE_EQ(o.lora_alpha(), 32);
  EXPECT_DOUBLE_EQ(o.lora_dropout(), 0.05);
  EXPECT_EQ(t.target_regex(), R"(blocks\.\d+\.(q|v))");
  auto msg = error_of([&] {
    lora_config_from_json(R"({"peft_type": "LORA", "r": 8, "target_modules": ["q"], "use_dora": true})");
  });
  EXPECT_NE(msg.find("use_dora"), std::string::npos) << msg;
  msg = error_of([&] { lora_config_from_json(R"({"peft_type": "IA3"})"); });
  EXPECT_NE(msg.find("'IA3'"), std::string::npos) << msg;
}

}  // namespace
