// `model: llama` in the training configuration (models/llama.h).
#include <gtest/gtest.h>

#include <filesystem>

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
