// `model: llama` in the training configuration (models/llama.h).
#include <gtest/gtest.h>

#include <filesystem>

#include "lowmem/core/profile.h"
#include "lowmem/models/llama.h"
#include "lowmem/train/config.h"
#include "lowmem/train/run.h"

namespace lowmem::train {
namespace {

Config tiny_llama_on_text() {
  Config c;
  c.model = "llama";
  c.data = "text";
  c.batch_size = 2;
  c.eval_batches = 1;
  c.set("llama.hidden_size", "16");
  c.set("llama.intermediate_size", "24");
  c.set("llama.num_hidden_layers", "1");
  c.set("llama.num_attention_heads", "2");
  c.set("llama.context", "16");
  return c;
}

TEST(LlamaConfig, BuildsTheModelTheSectionDescribes) {
  if (!std::filesystem::exists("/usr/share/games/fortunes"))
    GTEST_SKIP() << "no fortunes corpus";
  auto c = tiny_llama_on_text();
  c.method = "galore";
  c.set("galore.rank", "4");
  auto session = build_session(c);
  auto* llama = dynamic_cast<models::Llama*>(session->model.get());
  ASSERT_NE(llama, nullptr);
  EXPECT_EQ(llama->config().hidden_size(), 16);
  EXPECT_EQ(llama->config().vocab_size(), 256);
  auto r = info(c);
  EXPECT_EQ(r.total_params, models::llama_parameter_count(llama->config()));
  EXPECT_GT(r.optimizer_state_bytes, 0);
}

// lowmem info's profile of its step: the phases a checkpointed, 8-bit,
// layer-wise GaLore step goes through, their exclusive times within the
// step's wall time, and the step's FLOPs from the model's own count.
TEST(LlamaConfig, InfoProfilesTheStep) {
  if (!std::filesystem::exists("/usr/share/games/fortunes"))
    GTEST_SKIP() << "no fortunes corpus";
  auto c = tiny_llama_on_text();
  c.method = "galore";
  c.optimizer = "galore_adamw";
  c.set("galore.rank", "4");
  c.set("galore.layerwise", "true");
  c.optim_bits = 8;
  c.set("llama.activation_checkpointing", "true");
  const auto r = info(c, /*measure_gemm=*/true);
  ASSERT_EQ(r.phase_seconds.size(), static_cast<size_t>(profile::kPhaseCount));
  double sum = 0.0;
  for (const auto& [name, s] : r.phase_seconds) {
    EXPECT_GE(s, 0.0) << name;
    sum += s;
  }
  EXPECT_LE(sum, r.step_seconds + 1e-6);
  auto phase = [&](profile::Phase p) {
    return r.phase_seconds[static_cast<size_t>(p)];
  };
  EXPECT_EQ(phase(profile::Phase::kForward).first, "forward");
  for (auto p : {profile::Phase::kForward, profile::Phase::kBackward,
                 profile::Phase::kRecompute, profile::Phase::kProjection,
                 profile::Phase::kOptimizer, profile::Phase::kStateQuantize})
    EXPECT_GT(phase(p).second, 0.0) << profile::phase_name(p);
  EXPECT_EQ(phase(profile::Phase::kDequantize).second, 0.0);  // no NF4 here
  auto session = build_session(c);
  auto* llama = dynamic_cast<models::Llama*>(session->model.get());
  ASSERT_NE(llama, nullptr);
  const double tokens = 2.0 * 16.0;  // batch 2 x context 16
  EXPECT_DOUBLE_EQ(r.model_flops, llama->flops_per_token(16) * tokens);
  EXPECT_DOUBLE_EQ(r.step_flops, r.model_flops * 4.0 / 3.0);
  EXPECT_GT(r.gemm_fp32_gflops, 0.0);
  EXPECT_GT(r.gemm_bf16_gflops, 0.0);
  const std::string text = r.to_string();
  for (const char* want : {"step phases:", "recompute", "state quantize",
                           "step FLOPs:", "GEMM rate:"})
    EXPECT_NE(text.find(want), std::string::npos) << want << "\n" << text;
  // Without measure_gemm nothing is timed beyond the step.
  c.set("llama.activation_checkpointing", "false");
  const auto plain = info(c);
  EXPECT_EQ(plain.gemm_fp32_gflops, 0.0);
  EXPECT_EQ(plain.step_flops, plain.model_flops);
  EXPECT_EQ(plain.phase_seconds[static_cast<size_t>(profile::Phase::kRecompute)]
                .second,
            0.0);
}

TEST(LlamaConfig, InfoNotesACpuWithoutANativeBf16Gemm) {
  InfoReport r;
  r.step_seconds = 2.0;
  r.step_flops = 1e11;
  r.gemm_fp32_gflops = 162.0;  // an AVX2-only Zen 3 (2026-12-08)
  r.gemm_bf16_gflops = 5.0;
  const std::string slow = r.to_string();
  EXPECT_NE(slow.find("bfloat16 32.4x slower than float32"), std::string::npos)
      << slow;
  // 1e11 FLOP at 162 GFLOP/s: 0.6 s; the step's 2 s is 3.2x that.
  EXPECT_NE(slow.find("take 0.6 s, the step took 3.2x that"), std::string::npos)
      << slow;
  r.gemm_bf16_gflops = 675.0;  // AVX512-BF16 (Zen 4)
  const std::string fast = r.to_string();
  EXPECT_EQ(fast.find("slower than float32"), std::string::npos) << fast;
  EXPECT_NE(fast.find("GEMM rate:"), std::string::npos);
  r.gemm_fp32_gflops = r.gemm_bf16_gflops = 0.0;  // not measured: no lines
  EXPECT_EQ(r.to_string().find("GEMM rate:"), std::string::npos);
}

TEST(LlamaConfig, PresetAndContextChecks) {
  if (!std::filesystem::exists("/usr/share/games/fortunes"))
    GTEST_SKIP() << "no fortunes corpus";
  Config c = tiny_llama_on_text();
  c.set("llama.preset", "60m");
  c.set("llama.context", "4096");
  try {
    build_session(c);
    FAIL() << "context above max_position_embeddings was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(
                  "llama.context 4096 exceeds max_position_embeddings 1024"),
              std::string::npos)
        << e.what();
  } catch (const c10::Error& e) {
    FAIL() << e.what();
  }
  c.set("llama.preset", "13b");
  c.set("llama.context", "16");
  try {
    build_session(c);
    FAIL() << "unknown preset was accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("unknown preset '13b'"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace lowmem::train
