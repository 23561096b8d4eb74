// Seed-aware verdicts of lowmem compare: the rule over paired seeds
// (judge_margins), the claims built on it (a synthetic result set per
// verdict: held, not held, inconclusive, not tested) and the merge of one
// method's seeds into mean ± standard deviation (merge_seeds).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <stdexcept>

#include "lowmem/compare/compare.h"

namespace cmp = lowmem::compare;

namespace {

// One finished run of suite/name on `seed` with validation loss `loss` (or
// accuracy `acc` when set), as run_method returns it.
cmp::MethodResult run(const std::string& suite, const std::string& name,
                      uint64_t seed, double loss, double acc = NAN) {
  cmp::MethodResult r;
  r.info.suite = suite;
  r.info.name = name;
  r.info.label = name;
  r.status = "ok";
  r.val_loss = loss;
  if (!std::isnan(acc)) r.val_accuracy = acc;
  cmp::SeedRun s;
  s.seed = seed;
  s.val_loss = r.val_loss;
  s.val_accuracy = r.val_accuracy;
  r.seed_runs = {s};
  r.seeds_ok = 1;
  return r;
}

// The merged result of suite/name over seeds 0, 1, 2, ... with these losses.
cmp::MethodResult seeded(const std::string& suite, const std::string& name,
                         const std::vector<double>& losses, int64_t state = 100,
                         int64_t peak = 1000) {
  std::vector<cmp::MethodResult> runs;
  for (size_t i = 0; i < losses.size(); ++i)
    runs.push_back(run(suite, name, i, losses[i]));
  cmp::MethodResult m = cmp::merge_seeds(runs);
  m.optimizer_state_bytes = state;
  m.peak_tensor_bytes = peak;
  return m;
}

// The same with accuracies (finetune claims).
cmp::MethodResult seeded_acc(const std::string& name,
                             const std::vector<double>& accs,
                             int64_t trainable = 1000, int64_t peak = 1000) {
  std::vector<cmp::MethodResult> runs;
  for (size_t i = 0; i < accs.size(); ++i)
    runs.push_back(run("finetune", name, i, 1.0, accs[i]));
  cmp::MethodResult m = cmp::merge_seeds(runs);
  m.trainable_params = trainable;
  m.peak_tensor_bytes = peak;
  return m;
}

cmp::ClaimCheck claim(const std::vector<cmp::MethodResult>& ms,
                      const std::string& id) {
  for (const auto& c : cmp::check_claims(ms))
    if (c.id == id) return c;
  throw std::runtime_error("no claim " + id);
}

}  // namespace

TEST(VerdictTest, MarginsAboveTheirSpreadHoldBelowDoNotWithinAreInconclusive) {
  auto v = cmp::judge_margins({0.10, 0.12, 0.11});
  EXPECT_EQ(v.status, "held");
  EXPECT_EQ(v.n, 3);
  EXPECT_NEAR(v.mean, 0.11, 1e-12);
  EXPECT_NEAR(v.std, 0.01, 1e-12);
  EXPECT_EQ(cmp::judge_margins({-0.10, -0.12, -0.11}).status, "not held");
  // mean 0.0167, std 0.104: the threshold lies within the spread
  EXPECT_EQ(cmp::judge_margins({0.1, -0.1, 0.05}).status, "inconclusive");
  // exactly on the threshold with no spread: neither side
  EXPECT_EQ(cmp::judge_margins({0.0, 0.0, 0.0}).status, "inconclusive");
  // all seeds on one side with no spread: decided
  EXPECT_EQ(cmp::judge_margins({0.2, 0.2}).status, "held");
  // mean == std: still within the spread
  EXPECT_EQ(cmp::judge_margins({0.0, 2.0}).status, "inconclusive");
  // one seed or none: no spread to judge by
  auto one = cmp::judge_margins({5.0});
  EXPECT_EQ(one.status, "inconclusive");
  EXPECT_EQ(one.n, 1);
  EXPECT_EQ(cmp::judge_margins({}).status, "inconclusive");
  EXPECT_EQ(cmp::judge_margins({}).n, 0);
}

TEST(VerdictTest, LossClaimIsHeldNotHeldOrInconclusiveOverSeeds) {
  // CAME below Adafactor on every seed, by more than the spread: held.
  auto c = claim({seeded("pretrain", "came", {2.00, 2.01, 1.99}),
                  seeded("pretrain", "adafactor", {2.10, 2.12, 2.09})},
                 "came-vs-adafactor");
  EXPECT_EQ(c.status, "held");
  EXPECT_EQ(c.seeds, 3);
  EXPECT_NE(c.evidence.find("over 3 paired seeds"), std::string::npos)
      << c.evidence;
  EXPECT_NE(c.evidence.find("±"), std::string::npos) << c.evidence;
  // Above on every seed: not held.
  c = claim({seeded("pretrain", "came", {2.20, 2.21, 2.19}),
             seeded("pretrain", "adafactor", {2.10, 2.12, 2.09})},
            "came-vs-adafactor");
  EXPECT_EQ(c.status, "not held");
  // Below on one seed, above on another: the mean difference is within
  // the seeds' spread.
  c = claim({seeded("pretrain", "came", {2.00, 2.20, 2.10}),
             seeded("pretrain", "adafactor", {2.10, 2.10, 2.11})},
            "came-vs-adafactor");
  EXPECT_EQ(c.status, "inconclusive") << c.evidence;
  // One seed: a difference but no spread.
  c = claim({seeded("pretrain", "came", {2.0}),
             seeded("pretrain", "adafactor", {2.5})},
            "came-vs-adafactor");
  EXPECT_EQ(c.status, "inconclusive");
  EXPECT_EQ(c.seeds, 1);
  // A method that did not run: not tested.
  auto failed = seeded("pretrain", "adafactor", {2.1, 2.1, 2.1});
  failed.status = "failed";
  failed.seeds_ok = 0;
  for (auto& s : failed.seed_runs) s.status = "failed";
  EXPECT_EQ(claim({seeded("pretrain", "came", {2.0, 2.0, 2.0}), failed},
                  "came-vs-adafactor")
                .status,
            "not tested");
}

TEST(VerdictTest, ToleranceAndMemoryGateShapeTheVerdict) {
  // GaLore 2% above AdamW on every seed: within the 5% tolerance, held.
  auto galore = seeded("pretrain", "galore-adamw", {2.04, 2.05, 2.03}, 300);
  auto adamw = seeded("pretrain", "adamw", {2.00, 2.01, 1.99}, 1000);
  EXPECT_EQ(claim({galore, adamw}, "galore-vs-adamw").status, "held");
  // The same losses with more optimizer state than AdamW: the memory part
  // fails, so not held whatever the seeds say.
  galore.optimizer_state_bytes = 2000;
  auto c = claim({galore, adamw}, "galore-vs-adamw");
  EXPECT_EQ(c.status, "not held");
  EXPECT_NE(c.evidence.find("200%"), std::string::npos) << c.evidence;
  // 10% above on every seed: outside the tolerance.
  galore = seeded("pretrain", "galore-adamw", {2.20, 2.21, 2.19}, 300);
  EXPECT_EQ(claim({galore, adamw}, "galore-vs-adamw").status, "not held");
  // GaLore's tuned row joins the evidence of both GaLore claims, never the
  // verdict.
  const auto tuned = seeded("pretrain", "galore-adamw-tuned", {2.0, 2.0, 2.0});
  c = claim({galore, tuned, adamw}, "galore-vs-adamw");
  EXPECT_EQ(c.status, "not held");
  EXPECT_NE(c.evidence.find("; tuned rows (not judged): galore-adamw-tuned "),
            std::string::npos)
      << c.evidence;
  EXPECT_NE(c.evidence.find(" vs adamw "), std::string::npos) << c.evidence;
  const auto sketch = seeded("pretrain", "rsketch-adapter", {2.1, 2.1, 2.1});
  c = claim({sketch, galore, tuned}, "duality-random-sketch");
  EXPECT_NE(c.evidence.find("; tuned rows (not judged): rsketch-adapter "),
            std::string::npos)
      << c.evidence;
  EXPECT_NE(c.evidence.find(" vs galore-adamw-tuned "), std::string::npos)
      << c.evidence;
}

TEST(VerdictTest, AccuracyClaimsPairSeedsAndCountParameters) {
  // LoTR within a point of LoRA with fewer parameters: held.
  auto lotr = seeded_acc("lotr", {0.84, 0.85, 0.845}, 500);
  auto lora = seeded_acc("lora", {0.845, 0.85, 0.85}, 2000);
  EXPECT_EQ(claim({lotr, lora}, "lotr-vs-lora").status, "held");
  // More parameters than LoRA: not held.
  lotr.trainable_params = 3000;
  EXPECT_EQ(claim({lotr, lora}, "lotr-vs-lora").status, "not held");
  // SNELL vs LoRA: 3 points below on every seed, not held; a seed-to-seed
  // swing of +-4 points around LoRA, inconclusive.
  auto snell = seeded_acc("snell", {0.815, 0.82, 0.82});
  EXPECT_EQ(claim({snell, lora}, "snell-vs-lora").status, "not held");
  snell = seeded_acc("snell", {0.885, 0.81, 0.86});
  auto c = claim({snell, lora}, "snell-vs-lora");
  EXPECT_EQ(c.status, "inconclusive") << c.evidence;
  EXPECT_NE(c.evidence.find("points"), std::string::npos) << c.evidence;
  // Only the seeds both ran are paired: LoRA's seed 2 missing leaves 2.
  lora = seeded_acc("lora", {0.70, 0.71}, 2000);
  c = claim({seeded_acc("snell", {0.80, 0.81, 0.10}), lora}, "snell-vs-lora");
  EXPECT_EQ(c.seeds, 2);
  EXPECT_EQ(c.status, "held");
}

// Claims are judged on the official rows; a "-tuned" row only adds its
// comparison to the evidence (the other side's tuned row if it has one,
// else its official row).
TEST(VerdictTest, TunedRowsAreReportedNotJudged) {
  auto snell = seeded_acc("snell", {0.70, 0.71, 0.70});
  auto lora = seeded_acc("lora", {0.80, 0.81, 0.80});
  auto tuned = seeded_acc("snell-tuned", {0.90, 0.91, 0.90});
  auto c = claim({snell, tuned, lora}, "snell-vs-lora");
  EXPECT_EQ(c.status, "not held");
  const auto tail =
      c.evidence.find("; tuned rows (not judged): snell-tuned 90.3333");
  ASSERT_NE(tail, std::string::npos) << c.evidence;
  EXPECT_NE(c.evidence.find(" vs lora 80.3333", tail), std::string::npos)
      << c.evidence;
  EXPECT_EQ(claim({snell, lora}, "snell-vs-lora").evidence.find("tuned"),
            std::string::npos);
  auto lora_tuned = seeded_acc("lora-tuned", {0.95, 0.95, 0.95});
  c = claim({snell, lora, lora_tuned}, "snell-vs-lora");
  EXPECT_NE(c.evidence.find("(not judged): snell 70.3333"), std::string::npos)
      << c.evidence;
  EXPECT_NE(c.evidence.find(" vs lora-tuned 95"), std::string::npos)
      << c.evidence;
}

TEST(VerdictTest, ADivergedSeedOfTheBf16RunIsNotHeld) {
  std::vector<cmp::MethodResult> runs = {run("pretrain", "singd-bf16", 0, 2.0),
                                         run("pretrain", "singd-bf16", 1, 2.0)};
  runs[1].status = "diverged";
  runs[1].reason = "non-finite loss at step 3";
  runs[1].seed_runs[0].status = "diverged";
  runs[1].seed_runs[0].reason = runs[1].reason;
  auto c = claim(
      {cmp::merge_seeds(runs), seeded("pretrain", "singd-dense", {2.0, 2.0})},
      "singd-bf16");
  EXPECT_EQ(c.status, "not held");
  EXPECT_NE(c.evidence.find("seed 1: non-finite loss at step 3"),
            std::string::npos)
      << c.evidence;
}

TEST(VerdictTest, MergeSeedsGivesMeanAndSampleStdOverFinishedSeeds) {
  std::vector<cmp::MethodResult> runs = {run("pretrain", "adamw", 0, 2.0),
                                         run("pretrain", "adamw", 1, 4.0),
                                         run("pretrain", "adamw", 2, 3.0)};
  runs[0].peak_tensor_bytes = 123;
  for (int i = 0; i < 3; ++i) runs[i].seed_runs[0].final_train_loss = i + 1.0;
  cmp::MethodResult m = cmp::merge_seeds(runs);
  EXPECT_EQ(m.status, "ok");
  EXPECT_EQ(m.seeds_ok, 3);
  ASSERT_EQ(m.seed_runs.size(), 3u);
  EXPECT_EQ(m.seed_runs[2].seed, 2u);
  EXPECT_DOUBLE_EQ(*m.val_loss, 3.0);
  EXPECT_DOUBLE_EQ(*m.val_loss_std, 1.0);
  EXPECT_DOUBLE_EQ(m.final_train_loss, 2.0);
  EXPECT_EQ(m.peak_tensor_bytes, 123);  // memory: the first finished seed
  // A failed seed: the status names it, the mean covers the other two.
  runs[1].status = "failed";
  runs[1].reason = "boom";
  runs[1].seed_runs[0].status = "failed";
  runs[1].seed_runs[0].reason = "boom";
  m = cmp::merge_seeds(runs);
  EXPECT_EQ(m.status, "failed");
  EXPECT_EQ(m.reason, "seed 1: boom");
  EXPECT_EQ(m.seeds_ok, 2);
  EXPECT_DOUBLE_EQ(*m.val_loss, 2.5);
  EXPECT_NEAR(*m.val_loss_std, std::sqrt(0.5), 1e-12);
  // One seed: a mean, no standard deviation.
  m = cmp::merge_seeds({run("pretrain", "adamw", 7, 2.0)});
  EXPECT_DOUBLE_EQ(*m.val_loss, 2.0);
  EXPECT_FALSE(m.val_loss_std.has_value());
  EXPECT_THROW(cmp::merge_seeds({}), c10::Error);
}

// The official-settings table: every recorded key resolves in its method's
// row (and its "-tuned" row), the official rows of the switched methods use
// every recorded official value (GaLore's: all but the rank and refresh gap,
// scaled to the model and budget), the tuned rows' differences are flagged by
// value (numbers compared as numbers) with their reason, overrides reach
// the table, and the report lists the rows of the methods that ran.
TEST(OfficialSettingsTest, TableComparesEachRowWithItsOfficialValue) {
  cmp::CompareOptions o;
  auto find = [](const std::vector<cmp::OfficialSetting>& rows,
                 const std::string& method, const std::string& key) {
    for (const auto& r : rows)
      if (r.method == method && r.key == key) return r;
    throw std::runtime_error("no official setting " + method + " " + key);
  };
  const auto rows = cmp::official_settings(o);
  ASSERT_FALSE(rows.empty());
  const std::set<std::string> switched = {
      "came",  "full-came",   "lora",       "lotr",
      "snell", "singd-dense", "singd-diag", "kfac"};
  std::set<std::string> seen;
  for (const auto& r : rows) {
    SCOPED_TRACE(r.method + " " + r.key);
    EXPECT_FALSE(r.source.empty());
    EXPECT_FALSE(r.official.empty());
    EXPECT_EQ(r.note.empty(), !r.deviates);  // every deviation says why
    // Official rows hold official values, but for compare's common adapter
    // rank (the lm suite's LoRA: the GPT-2 recipe's r 4) and the refresh
    // gap scaled to the run.
    const bool scaled = r.key == "lora.r" || r.key == "galore.update_proj_gap";
    if (switched.count(r.method) && !scaled) {
      EXPECT_FALSE(r.deviates) << r.used;
      seen.insert(r.method);
    }
  }
  EXPECT_EQ(seen, switched);
  // SNELL: the official code's sparsity, lr, decay, separate q/k/v kernels
  // and trained cls token; the tuned row differs in each.
  EXPECT_EQ(find(rows, "snell", "snell.sparsity").used, "0.0");
  EXPECT_EQ(find(rows, "snell", "vit.fused_qkv").used, "false");
  EXPECT_EQ(find(rows, "snell", "modules_to_save").used, "head,cls_token");
  EXPECT_EQ(find(rows, "snell", "targets").used, "q,k,v,proj,fc");
  for (const char* key : {"snell.sparsity", "adamw.lr", "adamw.weight_decay",
                          "vit.fused_qkv", "modules_to_save", "targets"})
    EXPECT_TRUE(find(rows, "snell-tuned", key).deviates) << key;
  EXPECT_EQ(find(rows, "snell-tuned", "snell.sparsity").used, "0.5");
  // CAME: README lr and decay, default betas; the tuned row: the sweep's
  // 3e-4 without decay ("0.0003" vs "3e-4" compared as numbers).
  EXPECT_FALSE(find(rows, "came", "came.beta3").deviates);
  const auto came_lr = find(rows, "came-tuned", "came.lr");
  EXPECT_TRUE(came_lr.deviates);
  EXPECT_NE(came_lr.note.find("sweep"), std::string::npos);
  EXPECT_FALSE(find(rows, "came-tuned", "came.beta2").deviates);
  // LoRA: q, v with separate projections; the tuned row every projection.
  EXPECT_EQ(find(rows, "lora", "targets").used, "q,v");
  EXPECT_TRUE(find(rows, "lora-tuned", "targets").deviates);
  // GaLore: the README's scale, lr, no decay, GaLoreAdamW's eps; rank and
  // refresh gap scaled to compare's model and budget, each saying so; the
  // tuned row is compare's earlier scale 1 and lr 3e-3.
  for (const char* key :
       {"galore.scale", "galore_adamw.lr", "galore_adamw.weight_decay",
        "galore.proj_type", "galore_adamw.eps"})
    EXPECT_FALSE(find(rows, "galore-adamw", key).deviates) << key;
  EXPECT_EQ(find(rows, "galore-adamw", "galore.scale").used, "0.25");
  EXPECT_EQ(find(rows, "galore-adamw", "galore_adamw.lr").used, "0.01");
  const auto rank = find(rows, "galore-adamw", "galore.rank");
  EXPECT_EQ(rank.used, "16");  // width 64 / 4, as 128 / 512
  EXPECT_NE(rank.note.find("width / 4"), std::string::npos);
  const auto gap = find(rows, "galore-adamw", "galore.update_proj_gap");
  EXPECT_EQ(gap.used, "40");  // 200 steps / 5
  EXPECT_NE(gap.note.find("5 refreshes per run"), std::string::npos);
  for (const char* key : {"galore.scale", "galore_adamw.lr"}) {
    const auto t = find(rows, "galore-adamw-tuned", key);
    EXPECT_TRUE(t.deviates) << key;
    EXPECT_NE(t.note.find("(tuned) row"), std::string::npos) << key;
  }
  EXPECT_EQ(find(rows, "galore-adamw-tuned", "galore.scale").used, "1.0");
  // The lm suite: LoRA's GPT-2 recipe at compare's rank (said), GaLore's
  // GLUE fine-tuning recipe; rows are told apart by suite.
  auto find_in = [&rows](const std::string& suite, const std::string& method,
                         const std::string& key) {
    for (const auto& r : rows)
      if (r.suite == suite && r.method == method && r.key == key) return r;
    throw std::runtime_error("no official setting " + suite + "/" + method +
                             " " + key);
  };
  EXPECT_EQ(find_in("lm", "lora", "adamw.lr").used, "0.0002");
  EXPECT_EQ(find_in("lm", "lora", "targets").used, "q_proj,v_proj");
  EXPECT_TRUE(find_in("lm", "lora", "lora.r").deviates);
  EXPECT_NE(find_in("lm", "lora", "lora.r").note.find("--rank"),
            std::string::npos);
  EXPECT_TRUE(find_in("lm", "lora-tuned", "adamw.lr").deviates);
  EXPECT_EQ(find_in("lm", "galore-adamw", "galore_adamw.lr").used, "3e-05");
  EXPECT_EQ(find_in("lm", "galore-adamw", "galore.rank").used, "4");
  EXPECT_FALSE(find_in("lm", "galore-adamw", "galore.scale").deviates);
  EXPECT_TRUE(find_in("lm", "galore-adamw-tuned", "galore.scale").deviates);
  EXPECT_EQ(find_in("lm", "galore-adamw", "galore.update_proj_gap").used,
            "16");  // 80 steps / 5
  // Overrides reach the table, both ways.
  o.overrides = {"snell.sparsity=0.5", "galore.scale=0.250"};
  const auto set = cmp::official_settings(o);
  EXPECT_TRUE(find(set, "snell", "snell.sparsity").deviates);
  EXPECT_FALSE(find(set, "galore-adamw-tuned", "galore.scale").deviates);
  // --rank reaches the adapters' rank keys.
  o.overrides.clear();
  o.rank = 16;
  EXPECT_TRUE(find(cmp::official_settings(o), "lora", "lora.r").deviates);
}

TEST(OfficialSettingsTest, ReportListsTheDeviationsOfTheMethodsThatRan) {
  cmp::CompareResults res;
  res.methods = {seeded_acc("snell", {0.8, 0.81, 0.8}),
                 seeded_acc("snell-tuned", {0.8, 0.81, 0.8}),
                 seeded_acc("lora", {0.8, 0.81, 0.8})};
  const std::string dir = ::testing::TempDir() + "official_report";
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/report.md";
  cmp::write_report(res, path);
  std::ifstream f(path);
  const std::string md((std::istreambuf_iterator<char>(f)),
                       std::istreambuf_iterator<char>());
  EXPECT_NE(md.find("## Settings vs the official ones"), std::string::npos);
  EXPECT_NE(md.find("| finetune | snell | `snell.sparsity` | 0 | 0.0 | same |"),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("| finetune | snell-tuned | `snell.sparsity` | 0 | 0.5 | "
                    "**deviates** | "),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("| finetune | snell-tuned | `modules_to_save` | "
                    "head,cls_token | (default) | **deviates** |"),
            std::string::npos)
      << md;
  // methods that did not run have no rows
  EXPECT_EQ(md.find("galore.scale"), std::string::npos);
  EXPECT_EQ(md.find("lora-tuned"), std::string::npos);
  // the summary leads: frontier of the finetune suite, claims' verdicts
  EXPECT_LT(md.find("## Summary"), md.find("## Settings vs"));
  EXPECT_NE(md.find("best quality per memory budget"), std::string::npos);
}

TEST(SummaryTest, FrontierKeepsTheBestQualityPerPeak) {
  // peak: a 100, b 200, c 200, d 300, e 400; loss: a 3.0, b 2.5, c 2.4,
  // d 2.6, e 2.0 -> frontier a (cheapest), c (better than a at 200; b is
  // beaten by c at the same peak), e; d is worse than c at a higher peak.
  std::vector<cmp::MethodResult> ms = {
      seeded("pretrain", "a", {3.0, 3.0}, 1, 100),
      seeded("pretrain", "b", {2.5, 2.5}, 1, 200),
      seeded("pretrain", "c", {2.4, 2.4}, 1, 200),
      seeded("pretrain", "d", {2.6, 2.6}, 1, 300),
      seeded("pretrain", "e", {2.0, 2.0}, 1, 400)};
  ms.push_back(seeded("finetune", "x", {1.0}, 1, 50));
  auto f = cmp::quality_frontier(ms, "pretrain");
  ASSERT_EQ(f.size(), 3u);
  EXPECT_EQ(f[0]->info.name, "a");
  EXPECT_EQ(f[1]->info.name, "c");
  EXPECT_EQ(f[2]->info.name, "e");
  // a failed method is not on it
  ms[4].status = "failed";
  ms[4].seeds_ok = 0;
  f = cmp::quality_frontier(ms, "pretrain");
  ASSERT_EQ(f.size(), 2u);
  EXPECT_EQ(f[1]->info.name, "c");
  // accuracy: higher is better
  std::vector<cmp::MethodResult> acc = {
      seeded_acc("lora", {0.80, 0.82}, 10, 100),
      seeded_acc("full", {0.90, 0.88}, 10, 300),
      seeded_acc("lotr", {0.70, 0.70}, 10, 200)};
  f = cmp::quality_frontier(acc, "finetune");
  ASSERT_EQ(f.size(), 2u);
  EXPECT_EQ(f[0]->info.name, "lora");
  EXPECT_EQ(f[1]->info.name, "full");
}

TEST(SummaryTest, LargestFittingModelPerBudget) {
  cmp::MemorySuite m;
  m.status = "ok";
  auto row = [](const char* model, const char* method, int64_t peak) {
    cmp::MemoryRow r;
    r.model = model;
    r.method = method;
    r.peak = peak;
    return r;
  };
  m.rows = {row("60m", "AdamW", 10),  row("1b", "AdamW", 100),
            row("7b", "AdamW", 1000), row("60m", "GaLore", 5),
            row("1b", "GaLore", 50),  row("7b", "GaLore", 500)};
  m.rows.push_back(row("60m", "SINGD", 0));
  m.rows.back().status = "not planned";
  EXPECT_EQ(cmp::largest_fitting(m, "AdamW", 99), "60m");
  EXPECT_EQ(cmp::largest_fitting(m, "AdamW", 100), "1b");
  EXPECT_EQ(cmp::largest_fitting(m, "GaLore", 500), "7b");
  EXPECT_EQ(cmp::largest_fitting(m, "GaLore", 4), "");
  EXPECT_EQ(cmp::largest_fitting(m, "SINGD", 1 << 30), "");
  m.budgets = {60, 600};
  cmp::CompareResults res;
  res.memory = m;
  const std::string s = cmp::format_summary(res, false);
  EXPECT_NE(s.find("GaLore"), std::string::npos) << s;
  EXPECT_NE(s.find("not planned"), std::string::npos) << s;
}
