// lowmem compare engine: result schema, skip path, plots, claims (in-process;
// the forked, CLI-level behaviour is tested in tests/tools/compare_cli_test).
#include "lowmem/compare/compare.h"

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "lowmem/text/sentencepiece_trainer.h"
#include "lowmem/text/tokenizer.h"
#include "lowmem/train/fields.h"
#include "testing/errors.h"
#include "testing/files.h"

namespace cmp = lowmem::compare;
namespace fs = std::filesystem;
namespace text = lowmem::text;
using lowmem::testing::fresh_temp_dir;
using lowmem::testing::read_file;

namespace {

bool have_gnuplot() {
  return std::system("command -v gnuplot >/dev/null 2>&1") == 0;
}

cmp::CompareOptions toy_options(const fs::path& out) {
  cmp::CompareOptions o;
  o.suites = {"toy"};
  o.out_dir = out.string();
  o.isolate = false;  // in-process: this test binary runs other torch code
  o.toy_steps = 6;
  o.eval_every = 3;
  o.threads = 1;
  return o;
}

// The memory suite alone, in-process, one thread, no plots.
cmp::CompareOptions memory_options(const fs::path& out) {
  cmp::CompareOptions o;
  o.suites = {"memory"};
  o.out_dir = out.string();
  o.isolate = false;
  o.threads = 1;
  o.gnuplot = "";
  return o;
}

// The pretrain suite on a 1-layer width-16 GPT, in-process, no plots.
cmp::CompareOptions tiny_pretrain_options(const fs::path& out, int64_t steps) {
  cmp::CompareOptions o;
  o.suites = {"pretrain"};
  o.out_dir = out.string();
  o.isolate = false;
  o.threads = 1;
  o.pretrain_steps = steps;
  o.eval_batches = 1;
  o.gpt_width = 16;
  o.gpt_layers = 1;
  o.gpt_heads = 2;
  o.gpt_context = 8;
  o.gpt_batch = 2;
  o.gnuplot = "";
  return o;
}

// Toy MLP 8-32-32-1: (8*32+32) + (32*32+32) + (32+1) parameters.
constexpr int64_t kToyParams = 288 + 1056 + 33;

cmp::MethodResult fake(const std::string& suite, const std::string& name,
                       double val_loss, int64_t state, int64_t peak) {
  cmp::MethodResult r;
  r.info.suite = suite;
  r.info.name = name;
  r.info.label = name;
  r.val_loss = val_loss;
  r.optimizer_state_bytes = state;
  r.peak_tensor_bytes = peak;
  return r;
}

const cmp::ClaimCheck& claim(const std::vector<cmp::ClaimCheck>& cs,
                             const std::string& id) {
  for (const auto& c : cs)
    if (c.id == id) return c;
  throw std::runtime_error("no claim " + id);
}

}  // namespace

TEST(CompareTest, ToySuiteMeasuresEveryMethodExactly) {
  const fs::path out = fresh_temp_dir("compare_toy");
  cmp::CompareOptions o = toy_options(out);
  o.gnuplot = "";
  cmp::CompareResults res = cmp::run_compare(o);
  ASSERT_EQ(res.methods.size(), 2u);
  for (const auto& m : res.methods) {
    SCOPED_TRACE(m.info.name);
    EXPECT_EQ(m.status, "ok") << m.reason;
    EXPECT_EQ(m.steps, 6);
    EXPECT_EQ(m.total_params, kToyParams);
    EXPECT_EQ(m.trainable_params, kToyParams);
    EXPECT_EQ(m.trainable_weight_bytes, 4 * kToyParams);
    EXPECT_EQ(m.gradient_bytes, 4 * kToyParams);
    EXPECT_EQ(m.frozen_weight_bytes, 0);
    // peak covers weights + gradients + state at least
    EXPECT_GE(m.peak_tensor_bytes,
              m.trainable_weight_bytes + m.gradient_bytes + m.optimizer_state_bytes);
    ASSERT_TRUE(m.val_loss.has_value());
    EXPECT_TRUE(std::isfinite(*m.val_loss));
    EXPECT_GT(m.step_time_ms, 0);
    EXPECT_GT(m.throughput, 0);
    // curve: every step (stride 1) with evaluations at 3 and 6
    ASSERT_EQ(m.curve.size(), 6u);
    EXPECT_TRUE(m.curve[2].val_loss.has_value());
    EXPECT_FALSE(m.curve[3].val_loss.has_value());
    EXPECT_TRUE(m.curve[5].val_loss.has_value());
  }
  // AdamW: exp_avg + exp_avg_sq; SGD with momentum: one buffer.
  EXPECT_EQ(res.methods[0].info.name, "adamw");
  EXPECT_EQ(res.methods[0].optimizer_state_bytes, 2 * 4 * kToyParams);
  EXPECT_EQ(res.methods[1].info.name, "sgd");
  EXPECT_EQ(res.methods[1].optimizer_state_bytes, 4 * kToyParams);
  // Same seed and data: the first step's loss is identical for both.
  EXPECT_DOUBLE_EQ(res.methods[0].curve[0].train_loss,
                   res.methods[1].curve[0].train_loss);
}

TEST(CompareTest, ResultsJsonFollowsTheVersionedSchema) {
  const fs::path out = fresh_temp_dir("compare_schema");
  cmp::CompareOptions o = toy_options(out);
  o.methods = {"adamw"};
  o.gnuplot = "";
  cmp::run_compare(o);
  const auto j = nlohmann::json::parse(read_file(out / "results.json"));
  EXPECT_EQ(j.at("schema"), "lowmem.compare");
  EXPECT_EQ(j.at("schema_version"), cmp::kSchemaVersion);
  for (const char* k : {"created", "command_line", "machine", "interrupted",
                        "wall_s", "options", "notes", "methods", "claims",
                        "python_baseline", "plots"})
    EXPECT_TRUE(j.contains(k)) << k;
  ASSERT_EQ(j.at("methods").size(), 1u);
  const auto& m = j.at("methods")[0];
  for (const char* k : {"suite", "name", "label", "paper", "status", "reason",
                        "total_params", "trainable_params", "steps", "memory",
                        "time", "quality", "curve"})
    EXPECT_TRUE(m.contains(k)) << k;
  for (const char* k : {"optimizer_state_bytes", "peak_tensor_bytes",
                        "peak_rss_bytes", "gradient_bytes", "activation_bytes"})
    EXPECT_TRUE(m.at("memory").contains(k)) << k;
  EXPECT_EQ(m.at("memory").at("optimizer_state_bytes"), 2 * 4 * kToyParams);
  // Round trip through the reader.
  cmp::CompareResults back = cmp::results_from_json(read_file(out / "results.json"));
  ASSERT_EQ(back.methods.size(), 1u);
  EXPECT_EQ(back.methods[0].optimizer_state_bytes, 2 * 4 * kToyParams);
  EXPECT_EQ(back.methods[0].curve.size(), 6u);
  EXPECT_EQ(back.options.toy_steps, 6);
  // A future schema is rejected with a clear message.
  auto j2 = j;
  j2["schema_version"] = cmp::kSchemaVersion + 1;
  try {
    cmp::results_from_json(j2.dump());
    FAIL() << "expected a schema_version error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("schema_version"), std::string::npos);
  }
}

TEST(CompareTest, CsvHasTheDocumentedColumns) {
  const fs::path out = fresh_temp_dir("compare_csv");
  cmp::CompareOptions o = toy_options(out);
  o.gnuplot = "";
  cmp::run_compare(o);
  std::ifstream f(out / "results.csv");
  std::string header, row;
  std::getline(f, header);
  std::string expect;
  for (const auto& c : cmp::csv_columns()) expect += (expect.empty() ? "" : ",") + c;
  EXPECT_EQ(header, expect);
  int rows = 0;
  while (std::getline(f, row)) {
    ++rows;
    EXPECT_EQ(row.rfind(std::to_string(cmp::kSchemaVersion) + ",toy,", 0), 0u) << row;
  }
  EXPECT_EQ(rows, 2);
  std::ifstream c(out / "curves.csv");
  std::getline(c, header);
  EXPECT_EQ(header, "suite,method,step,wall_s,train_loss,val_loss,val_accuracy");
}

TEST(CompareTest, MissingDataIsListedAsSkippedWithTheReason) {
  const fs::path out = fresh_temp_dir("compare_skip");
  cmp::CompareOptions o = toy_options(out);
  o.suites = {"finetune"};
  o.fashion_mnist_dir = "/nonexistent/fashion";
  o.gnuplot = "";
  cmp::CompareResults res = cmp::run_compare(o);
  ASSERT_FALSE(res.methods.empty());
  for (const auto& m : res.methods) {
    EXPECT_EQ(m.status, "skipped") << m.info.name;
    EXPECT_NE(m.reason.find("/nonexistent/fashion"), std::string::npos) << m.reason;
  }
  const auto j = nlohmann::json::parse(read_file(out / "results.json"));
  EXPECT_EQ(j.at("methods").size(), res.methods.size());
  EXPECT_EQ(j.at("methods")[0].at("status"), "skipped");
  // The report names them too.
  const std::string report = read_file(out / "report.md");
  EXPECT_NE(report.find("skipped"), std::string::npos);
  // Claims that need them are "not tested", with the reason.
  EXPECT_EQ(claim(res.claims, "snell-vs-lora").status, "not tested");
  EXPECT_NE(claim(res.claims, "snell-vs-lora").evidence.find("skipped"),
            std::string::npos);
}

// A corpus of three "categories" (files), the last held out as the lm
// suite's new domain.
fs::path write_lm_corpus(const fs::path& root) {
  const fs::path dir = root / "corpus";
  fs::create_directories(dir);
  std::string humor, poems, tech;
  for (int i = 0; i < 200; ++i) {
    humor += "A joke walks into a bar, number " + std::to_string(i) + ".\n%\n";
    poems += "Roses are red, line " + std::to_string(i) + ", ever so.\n%\n";
    tech += "int main() { return " + std::to_string(i) + "; } // C++\n%\n";
  }
  std::ofstream(dir / "humor") << humor;
  std::ofstream(dir / "poems") << poems;
  std::ofstream(dir / "tech") << tech;
  // As fortune's *.u8 links: the held-out text under another name, which
  // must not leak into the base model's data.
  fs::create_symlink("tech", dir / "tech.u8");
  return dir;
}

cmp::CompareOptions tiny_lm_options(const fs::path& out) {
  cmp::CompareOptions o = tiny_pretrain_options(out, 4);
  o.suites = {"lm"};
  o.text_path = write_lm_corpus(out).string();
  o.lm_domain = "tech";
  o.lm_vocab = 300;  // 259 byte and control pieces + 41 learned
  o.lm_base_steps = 6;
  o.lm_steps = 4;
  o.eval_every = 2;
  o.rank = 2;
  o.seeds = 1;
  return o;
}

TEST(CompareTest, LmSuiteFineTunesTheCachedBaseOnTheHeldOutDomain) {
  const fs::path out = fresh_temp_dir("compare_lm");
  cmp::CompareOptions o = tiny_lm_options(out);
  std::vector<std::string> notes;
  cmp::CompareCallbacks cb;
  cb.on_note = [&notes](const std::string& n) { notes.push_back(n); };
  cmp::CompareResults res = cmp::run_compare(o, cb);
  std::set<std::string> names;
  for (const auto& m : res.methods) {
    SCOPED_TRACE(m.info.name);
    names.insert(m.info.name);
    EXPECT_EQ(m.info.suite, "lm");
    EXPECT_EQ(m.status, "ok") << m.reason;
    EXPECT_EQ(m.steps, 4);
    ASSERT_TRUE(m.val_loss.has_value());
    EXPECT_TRUE(std::isfinite(*m.val_loss));
    EXPECT_FALSE(m.val_accuracy.has_value());
    // Fine-tuned on the held-out file only.
    EXPECT_NE(m.task.find("[tech]"), std::string::npos) << m.task;
    EXPECT_NE(m.task.find("a sentencepiece BPE tokenizer of 300 pieces"),
              std::string::npos)
        << m.task;
    EXPECT_NE(m.task.find("validation loss per token"), std::string::npos)
        << m.task;
  }
  EXPECT_EQ(names,
            (std::set<std::string>{"full-adamw", "full-came", "full-came-tuned",
                                   "lora", "lora-tuned", "lotr", "lotr-tuned",
                                   "snell", "snell-tuned", "projected-adapter",
                                   "galore-adamw", "galore-adamw-tuned"}));
  // Adapters train a small fraction of the weights; full fine-tuning all.
  auto by_name = [&res](const std::string& n) {
    for (const auto& m : res.methods)
      if (m.info.name == n) return m;
    throw std::runtime_error("no method " + n);
  };
  EXPECT_EQ(by_name("full-adamw").trainable_params,
            by_name("full-adamw").total_params);
  EXPECT_LT(by_name("lora").trainable_params,
            by_name("full-adamw").trainable_params / 10);
  // The base model was trained once, on the other files, and cached with
  // its losses on both domains.
  std::vector<fs::path> cached, tokenizers, tokens;
  for (const auto& e : fs::directory_iterator(out / "cache")) {
    const std::string name = e.path().filename().string();
    if (e.path().extension() == ".pt")
      (name.rfind("lm-tokens-", 0) == 0 ? tokens : cached).push_back(e.path());
    if (e.path().extension() == ".model") tokenizers.push_back(e.path());
  }
  ASSERT_EQ(cached.size(), 1u);
  // The domain's token ids, cached for the methods' runs.
  ASSERT_EQ(tokens.size(), 1u);
  // The tokenizer, trained on the base files, is cached too and is a real
  // tokenizer.model whose 41 learned merges already join characters.
  ASSERT_EQ(tokenizers.size(), 1u);
  EXPECT_EQ(tokenizers[0].filename().string().rfind("lm-spm-", 0), 0u);
  const auto tok = text::Tokenizer::from_file(tokenizers[0].string());
  EXPECT_EQ(tok.vocab_size(), 300);
  EXPECT_LT(tok.encode("A joke walks into a bar", false).size(),
            std::string("A joke walks into a bar").size());
  EXPECT_EQ(cached[0].filename().string().rfind("llama-base-", 0), 0u);
  const auto meta =
      nlohmann::json::parse(read_file(cached[0].string() + ".json"));
  EXPECT_EQ(meta.at("steps"), 6);
  EXPECT_TRUE(std::isfinite(meta.at("val_loss_new_domain").get<double>()));
  const auto base_note =
      std::find_if(notes.begin(), notes.end(), [](const std::string& n) {
        return n.rfind("lm base: LLaMA trained 6 steps", 0) == 0;
      });
  ASSERT_NE(base_note, notes.end());
  EXPECT_NE(base_note->find("[base]: "), std::string::npos) << *base_note;
  EXPECT_EQ(base_note->find("tech.u8"), std::string::npos) << *base_note;
  // A second run reuses it.
  notes.clear();
  o.methods = {"lora"};
  cmp::run_compare(o, cb);
  EXPECT_TRUE(std::any_of(notes.begin(), notes.end(), [](const std::string& n) {
    return n.find("lm: reusing cached base model") != std::string::npos;
  }));
}

// lm.tokenizer: "bytes" (the byte-level suite) or a tokenizer file.
TEST(CompareTest, LmSuiteRunsOnBytesOrOnAGivenTokenizer) {
  const fs::path out = fresh_temp_dir("compare_lm_tokenizers");
  cmp::CompareOptions o = tiny_lm_options(out);
  o.methods = {"lora"};
  o.lm_tokenizer = "bytes";
  auto res = cmp::run_compare(o);
  ASSERT_EQ(res.methods.size(), 1u);
  EXPECT_EQ(res.methods[0].status, "ok") << res.methods[0].reason;
  EXPECT_NE(res.methods[0].task.find("on bytes"), std::string::npos)
      << res.methods[0].task;
  EXPECT_NE(res.methods[0].task.find("per byte"), std::string::npos);
  // A tokenizer.model of the user's own: here one trained beforehand.
  const std::string corpus = read_file((out / "corpus" / "humor").string()) +
                             read_file((out / "corpus" / "tech").string());
  const fs::path model = out / "mine.model";
  std::ofstream(model, std::ios::binary) << text::train_sentencepiece(
      text::text_lines(corpus),
      text::SentencePieceTrainOptions().vocab_size(330));
  o.lm_tokenizer = model.string();
  res = cmp::run_compare(o);
  EXPECT_EQ(res.methods[0].status, "ok") << res.methods[0].reason;
  EXPECT_NE(res.methods[0].task.find("the tokenizer " + model.string() +
                                     " (330 tokens)"),
            std::string::npos)
      << res.methods[0].task;
  o.lm_tokenizer = (out / "missing.model").string();
  res = cmp::run_compare(o);
  EXPECT_EQ(res.methods[0].status, "skipped");
  EXPECT_NE(res.methods[0].reason.find("lm.tokenizer: no file or folder"),
            std::string::npos)
      << res.methods[0].reason;
}

TEST(CompareTest, LmSuiteIsSkippedWhenTheHeldOutDomainIsMissing) {
  const fs::path out = fresh_temp_dir("compare_lm_skip");
  cmp::CompareOptions o = tiny_lm_options(out);
  o.methods = {"lora"};
  o.lm_domain = "tech,nonexistent";
  cmp::CompareResults res = cmp::run_compare(o);
  ASSERT_EQ(res.methods.size(), 1u);
  EXPECT_EQ(res.methods[0].status, "skipped");
  EXPECT_NE(res.methods[0].reason.find("lm.domain: no file 'nonexistent'"),
            std::string::npos)
      << res.methods[0].reason;
  o.lm_domain = "humor,poems,tech";
  res = cmp::run_compare(o);
  EXPECT_EQ(res.methods[0].status, "skipped");
  EXPECT_NE(res.methods[0].reason.find("nothing left to pretrain on"),
            std::string::npos)
      << res.methods[0].reason;
}

TEST(CompareTest, PlotsAreDrawnWhenGnuplotIsPresent) {
  if (!have_gnuplot()) GTEST_SKIP() << "gnuplot not installed";
  const fs::path out = fresh_temp_dir("compare_plots");
  cmp::CompareOptions o = toy_options(out);
  cmp::CompareResults res = cmp::run_compare(o);
  EXPECT_EQ(res.plots.status, "ok") << res.plots.reason;
  for (const char* kind : {"loss_steps", "loss_time", "memory", "quality"})
    for (const char* ext : {".png", ".svg"}) {
      const std::string f = std::string("plots/toy_") + kind + ext;
      EXPECT_NE(std::find(res.plots.files.begin(), res.plots.files.end(), f),
                res.plots.files.end())
          << f;
      const std::string bytes = read_file(out / f);
      ASSERT_GT(bytes.size(), 100u) << f;
      if (std::string(ext) == ".png")
        EXPECT_EQ(bytes.substr(1, 3), "PNG") << f;
      else
        EXPECT_NE(bytes.find("<svg"), std::string::npos) << f;
    }
  const std::string report = read_file(out / "report.md");
  EXPECT_NE(report.find("](plots/toy_loss_steps.png)"), std::string::npos);
}

TEST(CompareTest, PlotsAreReportedSkippedWithoutGnuplot) {
  const fs::path out = fresh_temp_dir("compare_noplots");
  cmp::CompareOptions o = toy_options(out);
  o.gnuplot = "/nonexistent/bin/gnuplot";
  cmp::CompareResults res = cmp::run_compare(o);
  EXPECT_EQ(res.plots.status, "skipped");
  EXPECT_NE(res.plots.reason.find("/nonexistent/bin/gnuplot"), std::string::npos);
  EXPECT_TRUE(res.plots.files.empty());
  EXPECT_TRUE(fs::exists(out / "plots" / "toy.gp"));  // scripts still written
  EXPECT_FALSE(fs::exists(out / "plots" / "toy_loss_steps.png"));
  const auto j = nlohmann::json::parse(read_file(out / "results.json"));
  EXPECT_EQ(j.at("plots").at("status"), "skipped");
  EXPECT_NE(read_file(out / "report.md").find("Plots: skipped"), std::string::npos);
}

// Claims and their seed-aware verdicts: verdict_test.cpp.

TEST(CompareTest, UnknownSuiteOrMethodIsRejected) {
  const fs::path out = fresh_temp_dir("compare_bad");
  cmp::CompareOptions o = toy_options(out);
  o.suites = {"nope"};
  try {
    cmp::run_compare(o);
    FAIL();
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown suite 'nope'"), std::string::npos);
  }
  o.suites = {"toy"};
  o.methods = {"adamw", "nosuch"};
  try {
    cmp::run_compare(o);
    FAIL();
  } catch (const lowmem::ConfigError& e) {  // a usage error: exit 2 in the CLI
    EXPECT_NE(std::string(e.what()).find("unknown method 'nosuch'"), std::string::npos);
  }
  o.methods = {};
  o.suites = {"memory"};
  o.memory_methods = "LoRA r16,nope";
  try {
    cmp::run_compare(o);
    FAIL();
  } catch (const lowmem::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("unknown row 'nope' (AdamW, "),
              std::string::npos)
        << e.what();
  }
}

// --memory-methods narrows the memory suite to those rows, in the suite's
// order, at every planned size (here planned only: nothing is measured).
TEST(CompareTest, MemoryMethodsSelectRows) {
  cmp::CompareOptions o = memory_options(fresh_temp_dir("compare_memory_rows"));
  o.memory_models = "60m,1b";
  o.memory_measure = "";
  o.memory_methods = "SINGD,LoRA r16";
  const cmp::CompareResults res = cmp::run_compare(o);
  ASSERT_EQ(res.memory.status, "ok") << res.memory.reason;
  std::vector<std::string> rows;
  for (const auto& r : res.memory.rows)
    rows.push_back(r.model + " " + r.method);
  EXPECT_EQ(rows, (std::vector<std::string>{"60m LoRA r16", "60m SINGD",
                                            "1b LoRA r16", "1b SINGD"}));
}

TEST(CompareTest, EveryRegisteredMethodIsListed) {
  cmp::CompareOptions o;
  const auto all = cmp::list_methods(o, {"pretrain", "finetune", "lm"});
  std::vector<std::string> names;
  for (const auto& m : all) names.push_back(m.suite + "/" + m.name);
  for (const char* n : {"pretrain/adamw",
                        "pretrain/adafactor",
                        "pretrain/came",
                        "pretrain/galore-adamw",
                        "pretrain/galore-adamw-tuned",
                        "pretrain/galore-came",
                        "pretrain/rsketch-adapter",
                        "pretrain/singd-dense",
                        "pretrain/singd-diag",
                        "pretrain/kfac",
                        "finetune/full-adamw",
                        "finetune/full-came",
                        "finetune/lora",
                        "finetune/projected-adapter",
                        "finetune/lotr",
                        "finetune/snell",
                        "lm/full-adamw",
                        "lm/full-came",
                        "lm/lora",
                        "lm/lotr",
                        "lm/snell",
                        "lm/projected-adapter",
                        "lm/galore-adamw"})
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
}

TEST(CompareTest, PeakTensorBytesCoverTrainingOnlyNotEvaluation) {
  // The toy evaluation runs the 256 validation examples at once (a [256, 32]
  // hidden activation), training runs batches of 32: the evaluation peak is
  // reported apart and must not leak into the training peak.
  const fs::path out = fresh_temp_dir("compare_evalpeak");
  cmp::CompareOptions o = toy_options(out);
  o.methods = {"sgd"};
  o.gnuplot = "";
  cmp::CompareResults res = cmp::run_compare(o);
  ASSERT_EQ(res.methods.size(), 1u);
  const auto& m = res.methods[0];
  ASSERT_EQ(m.status, "ok") << m.reason;
  const int64_t resident =
      m.trainable_weight_bytes + m.gradient_bytes + m.optimizer_state_bytes;
  EXPECT_GE(m.peak_tensor_bytes, resident);
  EXPECT_GE(m.eval_peak_tensor_bytes, resident + 256 * 32 * 4);
  EXPECT_LT(m.peak_tensor_bytes, m.eval_peak_tensor_bytes);
  const auto j = nlohmann::json::parse(read_file(out / "results.json"));
  EXPECT_EQ(j.at("methods")[0].at("memory").at("eval_peak_tensor_bytes"),
            m.eval_peak_tensor_bytes);
}

TEST(CompareTest, LrOverrideSetsEveryOptimizersPeakRate) {
  const fs::path out = fresh_temp_dir("compare_lr");
  cmp::CompareOptions o = toy_options(out);
  o.methods = {"adamw"};
  o.gnuplot = "";
  const auto base = cmp::run_compare(o).methods.at(0);
  o.lr = 1e-2;  // the toy AdamW's own rate: same run
  const auto same = cmp::run_compare(o).methods.at(0);
  o.lr = 1e-4;
  const auto low = cmp::run_compare(o).methods.at(0);
  ASSERT_EQ(base.status, "ok");
  EXPECT_NE(same.detail.find("lr overridden: 0.01"), std::string::npos) << same.detail;
  EXPECT_DOUBLE_EQ(*base.val_loss, *same.val_loss);
  EXPECT_NE(*base.val_loss, *low.val_loss);
  o.lr = -1;
  const auto bad = cmp::run_compare(o).methods.at(0);
  EXPECT_EQ(bad.status, "failed");
  EXPECT_NE(bad.reason.find("lr must be >= 0"), std::string::npos) << bad.reason;
}

TEST(CompareTest, SetOverridesChangeOnlyTheNamedField) {
  const fs::path out = fresh_temp_dir("compare_set");
  cmp::CompareOptions o = toy_options(out);
  o.methods = {"sgd"};
  o.gnuplot = "";
  const auto base = cmp::run_compare(o).methods.at(0);
  ASSERT_EQ(base.status, "ok") << base.reason;
  EXPECT_EQ(base.optimizer_state_bytes, 4 * kToyParams);  // momentum buffer
  EXPECT_TRUE(base.overrides.empty());
  // compare's own momentum, 0.9 (train's sgd default is 0): the same run, so
  // the key changed that field only (the toy's lr 5e-2 stayed too).
  o.overrides = {"sgd.momentum=0.9"};
  const auto same = cmp::run_compare(o).methods.at(0);
  EXPECT_DOUBLE_EQ(*base.val_loss, *same.val_loss);
  EXPECT_EQ(same.overrides, std::vector<std::string>{"sgd.momentum=0.9"});
  // No momentum: SGD keeps no state at all; the last of a repeated key wins.
  o.overrides = {"sgd.momentum=0.5", "sgd.momentum=0"};
  const auto plain = cmp::run_compare(o).methods.at(0);
  ASSERT_EQ(plain.status, "ok") << plain.reason;
  EXPECT_EQ(plain.optimizer_state_bytes, 0);
  EXPECT_NE(*plain.val_loss, *base.val_loss);
  EXPECT_EQ(plain.overrides, std::vector<std::string>{"sgd.momentum=0"});
  EXPECT_NE(plain.detail.find("momentum 0 [set: sgd.momentum=0]"), std::string::npos)
      << plain.detail;
  // A key of a section this method does not build is not applied to it.
  o.overrides = {"came.beta3=0.5"};
  const auto other = cmp::run_compare(o).methods.at(0);
  EXPECT_DOUBLE_EQ(*base.val_loss, *other.val_loss);
  EXPECT_TRUE(other.overrides.empty());
  // Recorded in results.json (options and per method) and the report.
  o.overrides = {"sgd.momentum=0", "adamw.beta2=0.95"};
  o.methods = {};
  cmp::run_compare(o);
  const auto back = cmp::results_from_json(read_file(out / "results.json"));
  EXPECT_EQ(back.options.overrides, o.overrides);
  ASSERT_EQ(back.methods.size(), 2u);
  EXPECT_EQ(back.methods[0].overrides, std::vector<std::string>{"adamw.beta2=0.95"});
  EXPECT_EQ(back.methods[1].overrides, std::vector<std::string>{"sgd.momentum=0"});
  EXPECT_NE(read_file(out / "report.md").find("`--set adamw.beta2=0.95`"),
            std::string::npos);
  EXPECT_NE(read_file(out / "results.csv").find("[set: sgd.momentum=0]"),
            std::string::npos);
}

TEST(CompareTest, SetRejectsUnknownKeysAndBadValuesNamingThem) {
  auto expect_config_error = [](const std::vector<std::string>& set,
                                const std::string& needle) {
    lowmem::testing::expect_config_error([&] { cmp::validate_overrides(set); },
                                         needle);
  };
  expect_config_error({"came.beta4=0.5"}, "unknown key 'came.beta4'");
  expect_config_error({"nosuch.beta3=0.5"}, "unknown key 'nosuch.beta3'");
  expect_config_error({"came.beta3=abc"}, "bad value 'abc' for came.beta3");
  expect_config_error({"singd.T=2.5"}, "bad value '2.5' for singd.T");
  expect_config_error({"came.beta3"}, "--set 'came.beta3': expected KEY=VALUE");
  expect_config_error({"steps=3"}, "'steps' is a top-level key");
  expect_config_error({"gpt.n_layer=3"}, "section 'gpt' is not used by compare");
  EXPECT_NO_THROW(cmp::validate_overrides(
      {"came.beta3=0.999", "adafactor.clip_threshold=1e9", "adamw.beta2=0.95",
       "galore.rank=4", "projected_adapter.rank=4", "singd.T=2", "kfac.damping=0.01",
       "lora.r=4", "lotr.rank=2", "snell.sparsity=0.25", "sgd.nesterov=true"}));
  // run_compare checks them before any work.
  const fs::path out = fresh_temp_dir("compare_set_bad");
  cmp::CompareOptions o = toy_options(out);
  o.overrides = {"adamw.beta9=1"};
  EXPECT_THROW(cmp::run_compare(o), lowmem::train::ConfigError);
  EXPECT_FALSE(fs::exists(out / "results.json"));
  // Range checks are the optimizer's: that method fails, naming the value.
  o.overrides = {"sgd.momentum=-1"};
  o.methods = {"sgd"};
  o.gnuplot = "";
  const auto bad = cmp::run_compare(o).methods.at(0);
  EXPECT_EQ(bad.status, "failed");
  EXPECT_NE(bad.reason.find("[sgd] momentum must be >= 0, got -1"), std::string::npos)
      << bad.reason;
}

TEST(CompareTest, ClipNormClipsTheGlobalGradientNorm) {
  const fs::path out = fresh_temp_dir("compare_clip");
  cmp::CompareOptions o = toy_options(out);
  o.methods = {"sgd"};
  o.gnuplot = "";
  o.overrides = {"sgd.momentum=0"};
  const auto base = cmp::run_compare(o).methods.at(0);
  o.clip_norm = 1e6;  // never reached: the same run
  const auto loose = cmp::run_compare(o).methods.at(0);
  EXPECT_DOUBLE_EQ(*base.val_loss, *loose.val_loss);
  EXPECT_NE(loose.detail.find("gradient norm clipped at 1e+06"), std::string::npos)
      << loose.detail;
  // Clipped to 1e-9, SGD without momentum barely moves: every step's update
  // is at most lr * 1e-9 in norm, so the validation loss stays at its start.
  o.clip_norm = 1e-9;
  o.toy_steps = 3;
  o.eval_every = 1;
  const auto tight = cmp::run_compare(o).methods.at(0);
  ASSERT_EQ(tight.status, "ok") << tight.reason;
  ASSERT_TRUE(tight.curve.at(0).val_loss && tight.curve.at(2).val_loss);
  EXPECT_NEAR(*tight.curve[0].val_loss, *tight.curve[2].val_loss, 1e-6);
  EXPECT_NE(*base.val_loss, *tight.val_loss);
  o.clip_norm = -1;
  const auto bad = cmp::run_compare(o).methods.at(0);
  EXPECT_EQ(bad.status, "failed");
  EXPECT_NE(bad.reason.find("clip_norm must be >= 0 (0: off), got -1"), std::string::npos)
      << bad.reason;
}

// The pretrain suite's CAME and GaLore-CAME take came.* keys: the run with
// CAME's compare default written out is the same run, another beta3 is not.
TEST(CompareTest, SetReachesCameInEveryMethodThatBuildsIt) {
  if (!fs::exists("/usr/share/games/fortunes"))
    GTEST_SKIP() << "no fortunes corpus (Debian package fortunes)";
  const fs::path out = fresh_temp_dir("compare_set_came");
  cmp::CompareOptions o = tiny_pretrain_options(out, 3);
  o.methods = {"came", "galore-came", "adafactor"};
  const auto base = cmp::run_compare(o).methods;
  o.overrides = {"came.beta3=0.9999", "adafactor.beta1=0.9"};
  const auto same = cmp::run_compare(o).methods;
  o.overrides = {"came.beta3=0.5", "adafactor.clip_threshold=1e-3"};
  const auto changed = cmp::run_compare(o).methods;
  ASSERT_EQ(base.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    SCOPED_TRACE(base[i].info.name);
    ASSERT_EQ(changed[i].status, "ok") << changed[i].reason;
    EXPECT_DOUBLE_EQ(*base[i].val_loss, *same[i].val_loss);
    EXPECT_NE(*base[i].val_loss, *changed[i].val_loss);
    ASSERT_EQ(changed[i].overrides.size(), 1u);
  }
  EXPECT_EQ(changed[0].info.name, "adafactor");
  EXPECT_EQ(changed[0].overrides[0], "adafactor.clip_threshold=1e-3");
  EXPECT_EQ(changed[1].overrides[0], "came.beta3=0.5");
  EXPECT_NE(changed[1].detail.find("betas (0.9, 0.999, 0.5)"), std::string::npos)
      << changed[1].detail;
  EXPECT_EQ(changed[2].info.name, "galore-came");
  EXPECT_EQ(changed[2].overrides[0], "came.beta3=0.5");
}

// --base-dtype nf4 reaches the adapter methods only and --optim-bits 8 the
// methods whose optimizer has 8-bit state; both are listed with the run.
TEST(CompareTest, QuantizedModesReachTheMethodsThatHaveThem) {
  if (!fs::exists("/usr/share/games/fortunes"))
    GTEST_SKIP() << "no fortunes corpus (Debian package fortunes)";
  const fs::path out = fresh_temp_dir("compare_quantized");
  cmp::CompareOptions o = tiny_pretrain_options(out, 2);
  o.seeds = 1;
  o.methods = {"adamw", "adafactor", "rsketch-adapter"};
  const auto base = cmp::run_compare(o).methods;
  o.base_dtype = "nf4";
  o.optim_bits = 8;
  const auto q = cmp::run_compare(o).methods;
  ASSERT_EQ(q.size(), 3u);
  auto has = [](const cmp::MethodResult& r, const std::string& kv) {
    return std::find(r.overrides.begin(), r.overrides.end(), kv) !=
           r.overrides.end();
  };
  for (size_t i = 0; i < q.size(); ++i) {
    SCOPED_TRACE(q[i].info.name);
    ASSERT_EQ(q[i].status, "ok") << q[i].reason;
    const bool adapter = q[i].info.name == "rsketch-adapter";
    EXPECT_EQ(has(q[i], "base_dtype=nf4"), adapter);
    EXPECT_EQ(has(q[i], "optim_bits=8"), q[i].info.name != "adafactor");
    if (q[i].info.name == "adamw") {
      // The embedding (256 x 16 = 4096 elements, bitsandbytes' minimum)
      // keeps 2 + 8/256 bytes per element instead of 8.
      EXPECT_LT(q[i].optimizer_state_bytes, base[i].optimizer_state_bytes);
    }
  }
}

TEST(CompareTest, EveryMethodOfAPlotGetsADistinctLineStyle) {
  // 16 methods in one suite: gnuplot's numbered colours repeat after 8, so the
  // script must give every curve its own (colour, dash) pair.
  const fs::path out = fresh_temp_dir("compare_styles");
  cmp::CompareResults res;
  for (int i = 0; i < 16; ++i) {
    cmp::MethodResult r = fake("pretrain", "m" + std::to_string(i), 2.0 + i, 100, 1000);
    r.steps = 2;
    for (int s = 1; s <= 2; ++s) {
      cmp::CurvePoint p;
      p.step = s;
      p.wall_s = 0.1 * s;
      p.train_loss = 3.0 - 0.1 * s;
      if (s == 2) p.val_loss = 2.9;
      r.curve.push_back(p);
    }
    res.methods.push_back(r);
  }
  const cmp::PlotSet ps = cmp::make_plots(res, out.string(), "");
  EXPECT_EQ(ps.status, "skipped");
  const std::string gp = read_file(out / "plots" / "pretrain.gp");
  // Each `plot` command of the curves: collect the style of every line.
  size_t pos = 0, plots = 0;
  while ((pos = gp.find("\nplot \"data/pretrain_m0.dat\"", pos)) != std::string::npos) {
    const size_t end = gp.find("\nunset output", pos);
    const std::string cmd = gp.substr(pos, end - pos);
    std::set<std::string> styles;
    size_t q = 0, lines = 0;
    while ((q = cmd.find("with lines lw 2 ", q)) != std::string::npos) {
      q += 16;
      styles.insert(cmd.substr(q, cmd.find(" title", q) - q));
      ++lines;
    }
    EXPECT_EQ(lines, 16u);
    EXPECT_EQ(styles.size(), 16u) << cmd;
    ++plots;
    pos = end;
  }
  EXPECT_EQ(plots, 4u);  // loss over steps and over time, PNG and SVG each
}

// The Python baseline runs bench/gpt_reference.py's GPT (embedded at build
// time, written next to the script) and builds the same model as the C++
// pretrain suite: same parameter count. Skipped without Debian's
// python3-torch.
TEST(CompareTest, PythonBaselineRunsTheSharedReferenceGpt) {
  if (std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "no /usr/bin/python3 with torch (Debian python3-torch)";
  if (!fs::exists("/usr/share/games/fortunes"))
    GTEST_SKIP() << "no fortunes corpus (Debian package fortunes)";
  const fs::path out = fresh_temp_dir("compare_python");
  cmp::CompareOptions o = tiny_pretrain_options(out, 4);
  o.methods = {"adamw"};
  o.python_baseline = true;
  cmp::CompareResults res = cmp::run_compare(o);
  ASSERT_EQ(res.methods.size(), 1u);
  ASSERT_EQ(res.python.status, "ok") << res.python.reason;
  EXPECT_EQ(res.python.total_params, res.methods[0].total_params);
  EXPECT_EQ(res.python.steps, 4);
  EXPECT_TRUE(std::isfinite(res.python.val_loss));
  EXPECT_GT(res.python.val_loss, 0.0);
  EXPECT_NE(read_file(out / "gpt_reference.py").find("class GPT(nn.Module)"),
            std::string::npos);
}

// The memory suite measures every method's training step on LLaMA 60m (a
// regression: the NF4 row failed once the model was cast to the suite's
// dtype, which cast the 4-bit storage too; the fast check of that cause is
// Nf4Linear.DtypeConversionKeepsTheStorage), and lowmem plan's peak is
// within 10 % of each measured one (issue 18; layer-wise GaLore was 17 %
// over before the head's backward was split into the loss's and the output
// projection's). About a minute on 2 cores (58 s measured): slow.
TEST(CompareTest, SlowMemorySuiteMeasuresEveryMethod) {
  cmp::CompareOptions o =
      memory_options(fresh_temp_dir("compare_memory_suite"));
  o.memory_models = "60m";
  o.memory_measure = "60m";
  o.memory_seq = 64;
  o.memory_steps = 2;
  const cmp::CompareResults res = cmp::run_compare(o);
  ASSERT_EQ(res.memory.status, "ok") << res.memory.reason;
  ASSERT_FALSE(res.memory.rows.empty());
  bool nf4 = false;
  for (const auto& r : res.memory.rows) {
    SCOPED_TRACE(r.method);
    nf4 |= r.method.find("NF4") != std::string::npos;
    if (r.status != "ok") {  // whole-layer optimizers: plan cannot size them
      EXPECT_NE(r.reason.find("cannot size optimizer"), std::string::npos)
          << r.status << ": " << r.reason;
      continue;
    }
    EXPECT_EQ(r.measured, "ok") << r.measured_reason;
    EXPECT_GT(r.measured_peak, 0);
    EXPECT_NEAR(static_cast<double>(r.peak),
                static_cast<double>(r.measured_peak),
                0.10 * static_cast<double>(r.measured_peak));
  }
  EXPECT_TRUE(nf4) << "the suite has no NF4 row any more";
}
