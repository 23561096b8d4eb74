// lowmem::models::Llama in its Hugging Face forms (grouped-query attention,
// head_dim != hidden/heads, llama3 and linear RoPE scaling, q/k/v(/o) and MLP
// biases, Qwen3's q/k norms, tied embeddings, Mistral's sliding window, packed
// rows) against tests/models/hf_reference.py, a plain-torch transcription of
// transformers' modeling code run at test time with Debian's python3-torch.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <set>

#include "lowmem/models/llama.h"
#include "testing/files.h"
#include "testing/golden.h"

namespace {

using namespace lowmem::models;  // NOLINT
using lowmem::testing::closeness;

const std::vector<std::string> kCases = {
    "llama_gqa",         "llama_head_dim_bias", "llama3_rope_tied",
    "llama_linear_rope", "qwen2_bias_tied",     "qwen3_qk_norm",
    "mistral_window",    "llama_gqa_packed",    "mistral_window_packed"};

// The reference files, written once per test process; "" when python3 with
// torch is absent.
const std::filesystem::path& reference_dir() {
  static const std::filesystem::path dir = [] {
    if (std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") != 0)
      return std::filesystem::path();
    auto d = lowmem::testing::fresh_temp_dir("hf_parity");
    const std::string cmd =
        "/usr/bin/python3 '" +
        lowmem::testing::source_path("tests/models/hf_reference.py") + "' '" +
        d.string() + "'";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
    return d;
  }();
  return dir;
}

using Dict = std::map<std::string, at::Tensor>;

double field(const Dict& d, const std::string& key) {
  return d.at("config." + key).item<double>();
}

LlamaConfig config_of(const Dict& d) {
  auto i = [&](const char* k) { return static_cast<int64_t>(field(d, k)); };
  auto b = [&](const char* k) { return field(d, k) != 0.0; };
  RopeScaling rope;
  const int64_t type = i("rope_type");
  rope.rope_type(type == 0 ? "default" : type == 1 ? "linear" : "llama3");
  if (d.count("config.rope_scaling.factor"))
    rope.factor(field(d, "rope_scaling.factor"));
  if (type == 2) {
    rope.low_freq_factor(field(d, "rope_scaling.low_freq_factor"))
        .high_freq_factor(field(d, "rope_scaling.high_freq_factor"))
        .original_max_position_embeddings(
            i("rope_scaling.original_max_position_embeddings"));
  }
  return LlamaConfig()
      .vocab_size(i("vocab_size"))
      .hidden_size(i("hidden_size"))
      .intermediate_size(i("intermediate_size"))
      .num_hidden_layers(i("num_hidden_layers"))
      .num_attention_heads(i("num_attention_heads"))
      .num_key_value_heads(i("num_key_value_heads"))
      .head_dim(i("head_dim"))
      .max_position_embeddings(i("max_position_embeddings"))
      .rms_norm_eps(field(d, "rms_norm_eps"))
      .rope_theta(field(d, "rope_theta"))
      .rope_scaling(rope)
      .attention_bias(b("attention_bias"))
      .qkv_bias(b("qkv_bias"))
      .mlp_bias(b("mlp_bias"))
      .qk_norm(b("qk_norm"))
      .tie_word_embeddings(b("tie_word_embeddings"))
      .sliding_window(i("sliding_window"));
}

// The model of a reference case in `dtype`, with the reference's weights.
std::unique_ptr<Llama> load_case(const Dict& d, c10::ScalarType dtype,
                                 bool checkpointing = false) {
  auto m = std::make_unique<Llama>(
      config_of(d).dtype(dtype).activation_checkpointing(checkpointing));
  std::set<std::string> want, got;
  for (const auto& kv : d)
    if (kv.first.rfind("param.", 0) == 0) want.insert(kv.first.substr(6));
  torch::NoGradGuard g;
  for (const auto& kv : m->named_parameters()) {
    got.insert(kv.key());
    if (want.count(kv.key())) kv.value().copy_(d.at("param." + kv.key()));
  }
  EXPECT_EQ(got, want);  // HF's state_dict names, a tied head listed once
  return m;
}

PackedLayout layout_of(const Dict& d) {
  PackedLayout l;
  if (d.count("segments")) {
    l.segments = d.at("segments");
    l.positions = d.at("positions");
  }
  return l;
}

Dict load_reference(const std::string& name) {
  return lowmem::testing::load_tensor_dict(
      (reference_dir() / (name + ".pt")).string());
}

class HfParity : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (reference_dir().empty())
      GTEST_SKIP() << "no /usr/bin/python3 with torch (Debian python3-torch)";
  }
};

TEST_P(HfParity, LogitsAndLossMatchTheTranscriptionInFloat64) {
  const Dict d = load_reference(GetParam());
  auto m = load_case(d, torch::kDouble);
  const PackedLayout layout = layout_of(d);
  auto logits = m->forward(d.at("idx"), layout);
  EXPECT_LT(closeness(logits, d.at("logits"), 1e-10, 1e-10), 1.0);
  auto loss = m->loss(d.at("idx"), d.at("target"), layout);
  EXPECT_NEAR(loss.item<double>(), d.at("loss").item<double>(), 1e-10);
  auto s = m->evaluate(d.at("idx"), d.at("target"), layout);
  EXPECT_EQ(s.count, d.at("target").ne(kIgnoreIndex).sum().item<int64_t>());
  EXPECT_NEAR(s.loss_sum / static_cast<double>(s.count), loss.item<double>(),
              1e-10);
  EXPECT_EQ(llama_parameter_count(m->config()), count_parameters(*m));
}

TEST_P(HfParity, LogitsMatchInFloat32) {
  const Dict d = load_reference(GetParam());
  auto m = load_case(d, torch::kFloat);
  auto logits = m->forward(d.at("idx"), layout_of(d));
  EXPECT_EQ(logits.scalar_type(), torch::kFloat);
  EXPECT_LT(closeness(logits, d.at("logits"), 1e-5, 1e-5), 1.0);
}

// Checkpointed layers re-run with the same rotary tables and mask.
TEST_P(HfParity, CheckpointedLayersGiveTheSameGradients) {
  const Dict d = load_reference(GetParam());
  auto plain = load_case(d, torch::kDouble);
  auto ckpt = load_case(d, torch::kDouble, /*checkpointing=*/true);
  const PackedLayout layout = layout_of(d);
  plain->loss(d.at("idx"), d.at("target"), layout).backward();
  ckpt->loss(d.at("idx"), d.at("target"), layout).backward();
  auto pb = ckpt->named_parameters();
  for (const auto& kv : plain->named_parameters()) {
    ASSERT_TRUE(pb[kv.key()].grad().defined()) << kv.key();
    EXPECT_LT(closeness(pb[kv.key()].grad(), kv.value().grad(), 1e-9, 1e-12),
              1.0)
        << kv.key();
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, HfParity, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return info.param; });

TEST(HfLlama, TiedHeadIsTheEmbedding) {
  Llama m(LlamaConfig()
              .vocab_size(40)
              .hidden_size(16)
              .intermediate_size(24)
              .num_hidden_layers(1)
              .num_attention_heads(2)
              .tie_word_embeddings(true));
  EXPECT_TRUE(m.lm_head.is_same(m.embed_tokens));
  EXPECT_FALSE(m.named_parameters().contains("lm_head.weight"));
  EXPECT_EQ(count_parameters(m), llama_parameter_count(m.config()));
  // A tied head still runs its matmul.
  EXPECT_EQ(m.matrix_parameters(), count_slot_weights(m) + 40 * 16);
}

TEST(HfLlama, RejectsBadOptions) {
  auto base = LlamaConfig()
                  .vocab_size(40)
                  .hidden_size(16)
                  .intermediate_size(24)
                  .num_hidden_layers(1)
                  .num_attention_heads(4);
  auto message = [](const LlamaConfig& c) {
    try {
      validate(c);
    } catch (const c10::Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_NE(message(LlamaConfig(base).num_key_value_heads(3))
                .find("[llama] num_attention_heads 4 is not a multiple of "
                      "num_key_value_heads 3"),
            std::string::npos);
  EXPECT_NE(message(LlamaConfig(base).head_dim(5))
                .find("[llama] head dimension 5 must be even"),
            std::string::npos);
  // head_dim given: hidden_size need not divide.
  EXPECT_EQ(message(LlamaConfig(base).hidden_size(18).head_dim(6)),
            "(no error)");
  EXPECT_NE(
      message(LlamaConfig(base).rope_scaling(RopeScaling().rope_type("yarn")))
          .find("[llama] unsupported rope_scaling type 'yarn' (supported: "
                "default, linear, llama3)"),
      std::string::npos);
  EXPECT_NE(message(LlamaConfig(base).rope_scaling(RopeScaling()
                                                       .rope_type("llama3")
                                                       .factor(8)
                                                       .low_freq_factor(4)
                                                       .high_freq_factor(1)))
                .find("low_freq_factor < high_freq_factor"),
            std::string::npos);
  Llama m(base);
  PackedLayout bad;
  bad.segments = torch::zeros({1, 5}, torch::kLong);
  try {
    m.forward(torch::zeros({1, 5}, torch::kLong), bad);
    ADD_FAILURE() << "segments without positions were accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("packed rows need positions"),
              std::string::npos);
  }
}

// llama3 scaling keeps high frequencies, divides low ones by `factor` and
// interpolates between (Llama 3.1's 8192-token original context).
TEST(HfLlama, Llama3RopeScalingRegimes) {
  const auto s = RopeScaling()
                     .rope_type("llama3")
                     .factor(8)
                     .low_freq_factor(1)
                     .high_freq_factor(4)
                     .original_max_position_embeddings(8192);
  auto plain = rope_inv_freq(128, 500000.0, {}, torch::kDouble, torch::kCPU);
  auto scaled = rope_inv_freq(128, 500000.0, s, torch::kDouble, torch::kCPU);
  auto wavelen = 2 * M_PI / plain;
  for (int64_t i = 0; i < 64; ++i) {
    const double w = wavelen[i].item<double>(), p = plain[i].item<double>(),
                 q = scaled[i].item<double>();
    if (w < 8192.0 / 4) {
      EXPECT_DOUBLE_EQ(q, p) << i;
    } else if (w > 8192.0) {
      EXPECT_DOUBLE_EQ(q, p / 8) << i;
    } else {
      const double smooth = (8192.0 / w - 1) / 3;
      EXPECT_NEAR(q, (1 - smooth) * p / 8 + smooth * p, 1e-15) << i;
    }
  }
  auto linear =
      rope_inv_freq(16, 100.0, RopeScaling().rope_type("linear").factor(4),
                    torch::kFloat, torch::kCPU);
  EXPECT_TRUE(torch::allclose(
      linear * 4, rope_inv_freq(16, 100.0, {}, torch::kFloat, torch::kCPU)));
}

}  // namespace
