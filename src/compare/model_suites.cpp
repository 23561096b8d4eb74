// The model-based suites of `lowmem compare`: pretrain (GPT from scratch on
// text), finetune (ViT on Fashion-MNIST classes 5-9 from a base model
// pretrained on classes 0-4 by train::Trainer, cached on disk keyed by its
// configuration) and lm (a LLaMA on subword tokens pretrained on the fortune
// categories outside CompareOptions::lm_domain, cached the same way, then
// fine-tuned on the held-out categories: a domain shift).
#include <ATen/ATen.h>
#include <torch/optim/adamw.h>
#include <torch/serialize.h>
#include <torch/utils.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "internal.h"
#include "lowmem/core/check.h"
#include "lowmem/core/input.h"
#include "lowmem/core/json.h"
#include "lowmem/data/fashion_mnist.h"
#include "lowmem/data/text.h"
#include "lowmem/io/atomic_file.h"
#include "lowmem/models/gpt.h"
#include "lowmem/models/llama.h"
#include "lowmem/models/vit.h"
#include "lowmem/text/sentencepiece_trainer.h"
#include "lowmem/text/tokenizer.h"
#include "lowmem/train/trainer.h"

namespace lowmem::compare::detail {
namespace {

namespace fs = std::filesystem;

// ------------------------------------------------------------- pretrain
struct TextBatchesArgs {
  int64_t context, batch;
};

struct TextData : SuiteData {
  std::unique_ptr<data::TextCorpus> corpus;
  at::Tensor train, val;
};

std::string text_unavailable(const CompareOptions& o) {
  std::error_code ec;
  if (!fs::exists(o.text_path, ec))
    return "text corpus '" + o.text_path + "' not found" +
           (o.text_path == data::kDefaultTextCorpus
                ? " (Debian package fortunes)"
                : "");
  return "";
}

std::shared_ptr<SuiteData> text_load(const CompareOptions& o) {
  auto d = std::make_shared<TextData>();
  d->corpus = std::make_unique<data::TextCorpus>(o.text_path);
  d->train = d->corpus->train();
  d->val = d->corpus->validation();
  return d;
}

// Mean validation loss (nats per byte) of `model` over the first
// o.eval_batches consecutive windows of `val` (gpt context and batch).
std::function<Evaluation()> text_evaluation(
    const std::shared_ptr<models::Model>& model, const at::Tensor& val,
    const CompareOptions& o) {
  const int64_t n_eval = o.eval_batches;
  const TextBatchesArgs args{o.gpt_context, o.gpt_batch};
  return [model, val, n_eval, args]() {
    data::TextBatches vb(val, data::TextBatchOptions()
                                  .context(args.context)
                                  .batch_size(args.batch)
                                  .random(false));
    double loss = 0;
    int64_t count = 0;
    for (int64_t i = 0; i < n_eval; ++i) {
      data::Batch b = vb.next();
      const c10::Device dev = device_of(*model);
      models::EvalStats s = model->evaluate(b.input.to(dev), b.target.to(dev));
      loss += s.loss_sum;
      count += s.count;
    }
    return Evaluation{loss / static_cast<double>(std::max<int64_t>(1, count)),
                      std::nullopt};
  };
}

// A language model's workload on byte windows: random training windows of
// `train` (the run's seed), text_evaluation on `val`.
void fill_text_workload(Workload& w,
                        const std::shared_ptr<models::Model>& model,
                        const at::Tensor& train, const at::Tensor& val,
                        const CompareOptions& o) {
  w.model = model;
  w.items_per_step = o.gpt_batch * o.gpt_context;
  w.item_unit = "tokens/s";
  auto batches =
      std::make_shared<data::TextBatches>(train, data::TextBatchOptions()
                                                     .context(o.gpt_context)
                                                     .batch_size(o.gpt_batch)
                                                     .seed(run_seed(o)));
  w.next_batch = [batches]() { return batches->next(); };
  w.loss = [model](const data::Batch& b) {
    const c10::Device dev = device_of(*model);
    return model->loss(b.input.to(dev), b.target.to(dev));
  };
  w.evaluate = text_evaluation(model, val, o);
}

models::GPTConfig gpt_config(const CompareOptions& o) {
  return models::GPTConfig()
      .n_layer(o.gpt_layers)
      .n_head(o.gpt_heads)
      .n_embd(o.gpt_width)
      .block_size(o.gpt_context);
}

Workload text_build(SuiteData& sd, const CompareOptions& o,
                    const ModelVariant& variant) {
  auto& d = static_cast<TextData&>(sd);
  const bool bf16 = variant.bf16;
  auto model = std::make_shared<models::GPT>(gpt_config(o));
  if (bf16) model->to(at::kBFloat16);
  Workload w;
  std::ostringstream task;
  task << "byte-level GPT (width " << o.gpt_width << ", " << o.gpt_layers
       << " layers, " << o.gpt_heads << " heads, context " << o.gpt_context
       << ") from scratch on " << d.corpus->describe() << ", batch "
       << o.gpt_batch << (bf16 ? ", bf16 weights" : "");
  w.task = task.str();
  fill_text_workload(w, model, d.train, d.val, o);
  return w;
}

int64_t pretrain_steps(const CompareOptions& o) { return o.pretrain_steps; }

// ------------------------------------------------------------- finetune
constexpr int64_t kBaseLrMilli = 2;  // base model: AdamW lr 2e-3

std::string fmnist_unavailable(const CompareOptions& o) {
  std::error_code ec;
  const fs::path root(o.fashion_mnist_dir);
  for (const char* f :
       {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"})
    if (!fs::exists(root / f, ec))
      return "Fashion-MNIST not found at '" + o.fashion_mnist_dir +
             "' (missing " + f + "; Debian package dataset-fashion-mnist)";
  return "";
}

models::ViTConfig vit_config(const CompareOptions& o) {
  return models::ViTConfig()
      .patch_size(o.vit_patch)
      .n_layer(o.vit_layers)
      .n_head(o.vit_heads)
      .n_embd(o.vit_width)
      .n_classes(5);
}

std::string base_key(const CompareOptions& o) {
  std::ostringstream k;
  k << "vit w" << o.vit_width << " l" << o.vit_layers << " h" << o.vit_heads
    << " p" << o.vit_patch << " b" << o.vit_batch << " steps" << o.base_steps
    << " seed" << o.seed << " lr" << kBaseLrMilli << "e-3 classes0-4 data "
    << o.fashion_mnist_dir;
  return k.str();
}

// <cache>/<prefix>-<hash of key>.pt: a base model cached under its
// configuration.
std::string cache_path(const CompareOptions& o, const std::string& prefix,
                       const std::string& key) {
  const std::string dir = o.cache_dir.empty()
                              ? (fs::path(o.out_dir) / "cache").string()
                              : o.cache_dir;
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx",
                static_cast<unsigned long long>(
                    data::mix64(std::hash<std::string>()(key))));
  return (fs::path(dir) / (prefix + "-" + std::string(hex) + ".pt")).string();
}

std::string base_path(const CompareOptions& o) {
  return cache_path(o, "vit-base", base_key(o));
}

// Saves `model` to `path` (atomically) and its metadata to `path`.json.
void save_base(const std::string& path, torch::nn::Module& model,
               const nlohmann::json& meta) {
  fs::create_directories(fs::path(path).parent_path());
  io::atomic_write_file(path, [&model](std::ostream& out) {
    torch::serialize::OutputArchive ar;
    model.save(ar);
    ar.save_to(out);
  });
  write_text_file(path + ".json", meta.dump(1) + "\n");
}

void load_base(const std::string& path, torch::nn::Module& model) {
  LOWMEM_CHECK(fs::exists(path), "[compare] base model '", path,
               "' is missing");
  torch::serialize::InputArchive ar;
  ar.load_from(path);
  model.load(ar);
}

// The trainer at a constant rate (no warm-up, floor 1), no clipping, AdamW
// at kBaseLrMilli e-3 without weight decay: how every base model is trained.
void train_base(const std::shared_ptr<models::Model>& model,
                data::BatchSource& batches, int64_t steps,
                const MethodInfo& info, const CompareCallbacks& cb) {
  train::TrainerOptions to;
  to.max_steps = steps;
  to.warmup_steps = 0;
  to.min_lr_ratio = 1.0;
  to.clip_norm = 0.0;
  train::Trainer trainer(
      model,
      [model](const data::Batch& b) { return model->loss(b.input, b.target); },
      {{"adamw",
        std::make_shared<torch::optim::AdamW>(
            model->parameters(),
            torch::optim::AdamWOptions(kBaseLrMilli * 1e-3).weight_decay(0.0)),
        {}}},
      to);
  trainer.set_progress([&](const train::Progress& p) {
    if (p.kind == train::Progress::Kind::kStep && cb.on_step)
      cb.on_step(info, p.step, steps, p.loss);
  });
  trainer.fit(batches, nullptr);
  model->eval();
}

data::ImageSet fmnist(const CompareOptions& o, bool train,
                      std::vector<int64_t> classes, int64_t per_class) {
  return data::load_fashion_mnist(data::FashionMnistOptions()
                                      .root(o.fashion_mnist_dir)
                                      .train(train)
                                      .classes(std::move(classes))
                                      .per_class(per_class)
                                      .seed(o.seed));
}

Evaluation classify(models::ViT& model, const data::ImageSet& set) {
  double loss = 0;
  int64_t count = 0, correct = 0;
  const int64_t chunk = 1000;
  for (int64_t s = 0; s < set.size(); s += chunk) {
    const int64_t n = std::min(chunk, set.size() - s);
    const c10::Device dev = model.cls_token.device();
    at::Tensor x =
        set.images.narrow(0, s, n).to(dev, model.cls_token.scalar_type());
    models::EvalStats st =
        model.evaluate(x, set.labels.narrow(0, s, n).to(dev));
    loss += st.loss_sum;
    count += st.count;
    correct += st.correct;
  }
  const double c = static_cast<double>(std::max<int64_t>(1, count));
  return Evaluation{loss / c, static_cast<double>(correct) / c};
}

void make_base(const CompareOptions& o, const CompareCallbacks& cb) {
  const std::string path = base_path(o);
  torch::manual_seed(o.seed);
  data::ImageSet train = fmnist(o, true, {0, 1, 2, 3, 4}, 0);
  data::ImageSet test = fmnist(o, false, {0, 1, 2, 3, 4}, 0);
  auto model = std::make_shared<models::ViT>(vit_config(o));
  data::ImageBatches batches(
      train, data::ImageBatchOptions().batch_size(o.vit_batch).seed(o.seed));
  train_base(model, batches, o.base_steps,
             MethodInfo{"finetune", "base", "base model", "", "", ""}, cb);
  Evaluation e;
  {
    torch::NoGradGuard ng;
    e = classify(*model, test);
  }
  save_base(path, *model,
            {{"key", base_key(o)},
             {"test_accuracy_classes_0_4", *e.accuracy},
             {"test_loss", e.loss},
             {"steps", o.base_steps}});
  if (cb.on_note) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.2f%%", 100.0 * *e.accuracy);
    cb.on_note("finetune base: ViT trained " + std::to_string(o.base_steps) +
               " steps on Fashion-MNIST classes 0-4, test accuracy " + buf +
               "; cached at " + path);
  }
}

struct FinetuneData : SuiteData {
  data::ImageSet train, test;
};

std::shared_ptr<SuiteData> finetune_load(const CompareOptions& o) {
  auto d = std::make_shared<FinetuneData>();
  LOWMEM_CHECK(o.finetune_examples >= 5,
               "[compare] finetune_examples must be >= 5, got ",
               o.finetune_examples);
  d->train = fmnist(o, true, {5, 6, 7, 8, 9}, o.finetune_examples / 5);
  d->test = fmnist(o, false, {5, 6, 7, 8, 9}, o.finetune_eval_examples / 5);
  return d;
}

Workload finetune_build(SuiteData& sd, const CompareOptions& o,
                        const ModelVariant& variant) {
  auto& d = static_cast<FinetuneData&>(sd);
  const bool bf16 = variant.bf16;
  auto model = std::make_shared<models::ViT>(vit_config(o));
  load_base(base_path(o), *model);
  // The base is trained fused; separate q, k, v slots get its row blocks
  // (as SNELL's code splits a fused checkpoint).
  if (!variant.fused_qkv) model->unfuse_qkv();
  torch::manual_seed(run_seed(o) + 2);
  model->reset_head(5);  // classes 5-9, relabelled 0-4
  if (bf16) model->to(at::kBFloat16);
  Workload w;
  std::ostringstream task;
  task << "ViT (width " << o.vit_width << ", " << o.vit_layers
       << " layers, patch " << o.vit_patch
       << (variant.fused_qkv ? "" : ", separate q/k/v")
       << ") pretrained on Fashion-MNIST classes 0-4 (" << o.base_steps
       << " steps, cached), fine-tuned on " << d.train.size()
       << " examples of classes 5-9, batch " << o.vit_batch
       << "; accuracy on the " << d.test.size()
       << " test images of classes 5-9";
  w.task = task.str();
  w.model = model;
  w.items_per_step = o.vit_batch;
  w.item_unit = "samples/s";
  auto batches = std::make_shared<data::ImageBatches>(
      d.train,
      data::ImageBatchOptions().batch_size(o.vit_batch).seed(run_seed(o)));
  const at::ScalarType dt = bf16 ? at::kBFloat16 : at::kFloat;
  w.next_batch = [batches]() { return batches->next(); };
  w.loss = [model, dt](const data::Batch& b) {
    const c10::Device dev = device_of(*model);
    return model->loss(b.input.to(dev, dt), b.target.to(dev));
  };
  const data::ImageSet* test = &d.test;
  w.evaluate = [model, test]() { return classify(*model, *test); };
  return w;
}

int64_t finetune_steps(const CompareOptions& o) { return o.finetune_steps; }

// ------------------------------------------------------------------- lm
// A LLaMA with the pretrain GPT's width, layers, heads, context and batch
// (SwiGLU width as GaLore's llama_60m: 1376/512 of the width), on the lm
// tokenizer's vocabulary.
models::LlamaConfig lm_config(const CompareOptions& o, int64_t vocab) {
  return models::LlamaConfig()
      .vocab_size(vocab)
      .hidden_size(o.gpt_width)
      .intermediate_size(o.gpt_width * 1376 / 512)
      .num_hidden_layers(o.gpt_layers)
      .num_attention_heads(o.gpt_heads)
      .max_position_embeddings(o.gpt_context);
}

// The corpus's files split by category (file name): the held-out domain
// (CompareOptions::lm_domain) and the rest (the base model's).
struct LmSplit {
  std::vector<std::string> base, domain, missing;
};

// The files of the corpus split by lm_domain; lists the folder (names only),
// reading no file.
LmSplit lm_split(const CompareOptions& o) {
  std::vector<std::string> files;
  std::error_code ec;
  if (fs::is_directory(o.text_path, ec)) {
    for (const auto& e : fs::recursive_directory_iterator(
             o.text_path, fs::directory_options::follow_directory_symlink,
             ec)) {
      if (e.is_regular_file(ec)) files.push_back(e.path().string());
    }
    std::sort(files.begin(), files.end());
  } else {
    files.push_back(o.text_path);
  }
  const std::vector<std::string> wanted = split_list(o.lm_domain);
  LmSplit out;
  for (const auto& f : files) {
    const std::string name = fs::path(f).filename().string();
    const bool held =
        std::find(wanted.begin(), wanted.end(), name) != wanted.end();
    (held ? out.domain : out.base).push_back(f);
  }
  // A link to a held-out file (fortune's computers.u8 -> computers) is the
  // held-out text under another name: not base data.
  std::vector<fs::path> held;
  for (const auto& f : out.domain) held.push_back(fs::weakly_canonical(f, ec));
  out.base.erase(std::remove_if(out.base.begin(), out.base.end(),
                                [&](const std::string& f) {
                                  const fs::path c =
                                      fs::weakly_canonical(f, ec);
                                  return std::find(held.begin(), held.end(),
                                                   c) != held.end();
                                }),
                 out.base.end());
  for (const auto& w : wanted) {
    const bool found = std::any_of(
        out.domain.begin(), out.domain.end(),
        [&](const std::string& f) { return fs::path(f).filename() == w; });
    if (!found) out.missing.push_back(w);
  }
  return out;
}

bool lm_bytes(const CompareOptions& o) { return o.lm_tokenizer == "bytes"; }
bool lm_trains_tokenizer(const CompareOptions& o) {
  return o.lm_tokenizer == "spm";
}

std::string lm_unavailable(const CompareOptions& o) {
  const std::string t = text_unavailable(o);
  if (!t.empty()) return t;
  if (split_list(o.lm_domain).empty()) return "lm.domain names no category";
  if (lm_trains_tokenizer(o) && (o.lm_vocab < 260 || o.lm_vocab > (1 << 20)))
    return "lm.vocab must be in [260, 2^20], got " + std::to_string(o.lm_vocab);
  std::error_code ec;
  if (!lm_bytes(o) && !lm_trains_tokenizer(o) &&
      !fs::exists(o.lm_tokenizer, ec))
    return "lm.tokenizer: no file or folder " + quote(o.lm_tokenizer);
  try {
    const LmSplit sp = lm_split(o);
    if (!sp.missing.empty())
      return "lm.domain: no file '" + sp.missing.front() + "' in '" +
             o.text_path + "'";
    if (sp.base.empty())
      return "lm.domain holds every file of '" + o.text_path +
             "': nothing left to pretrain on";
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

// What names the tokenizer in cache keys.
std::string lm_tokenizer_key(const CompareOptions& o) {
  if (lm_bytes(o)) return "bytes";
  if (lm_trains_tokenizer(o)) return "spm bpe v" + std::to_string(o.lm_vocab);
  return "tokenizer " + o.lm_tokenizer;
}

std::string lm_key(const CompareOptions& o) {
  std::ostringstream k;
  k << "llama w" << o.gpt_width << " l" << o.gpt_layers << " h" << o.gpt_heads
    << " ctx" << o.gpt_context << " b" << o.gpt_batch << " steps"
    << o.lm_base_steps << " seed" << o.seed << " lr" << kBaseLrMilli
    << "e-3 without " << o.lm_domain << " data " << o.text_path;
  if (!lm_bytes(o)) k << " " << lm_tokenizer_key(o);
  return k.str();
}

std::string lm_base_path(const CompareOptions& o) {
  return cache_path(o, "llama-base", lm_key(o));
}

// The trained tokenizer's file: keyed by the base files and vocabulary only.
std::string lm_spm_path(const CompareOptions& o) {
  std::string p =
      cache_path(o, "lm-spm",
                 "spm bpe v" + std::to_string(o.lm_vocab) + " without " +
                     o.lm_domain + " data " + o.text_path);
  return p.substr(0, p.size() - 3) + ".model";  // .pt -> .model
}

// The lm suite's data: bytes (uint8) or token ids (int64) of the domain
// corpus's train and validation splits (and, for the base model, the base
// corpus's).
struct LmData : SuiteData {
  std::string tokenizer = "bytes";  // description, for the task line
  int64_t vocab = 256;
  std::string domain_name, base_name;  // base_name: with the base's data
  at::Tensor domain_train, domain_val;
};

std::string_view bytes_of(const at::Tensor& t) {
  return std::string_view(reinterpret_cast<const char*>(t.data_ptr<uint8_t>()),
                          static_cast<size_t>(t.numel()));
}

// The base files' train split as sentencepiece sentences (its lines).
std::string train_lm_tokenizer(const CompareOptions& o,
                               const data::TextCorpus& base) {
  const at::Tensor t = base.train().contiguous();
  const std::string text = text::utf8_lossy(bytes_of(t));
  return text::train_sentencepiece(
      text::text_lines(text),
      text::SentencePieceTrainOptions().vocab_size(o.lm_vocab));
}

// Ids of a split, line by line: each line encoded on its own (the unit the
// tokenizer was trained on; a sentencepiece model puts its dummy prefix at
// each line's start), then the tokenizer's newline token. Whole-text
// encoding gives the same pieces but for the prefix after a newline, and
// took 4.1 s and 250 MiB for the 2.5 MB corpus in python3-sentencepiece
// against 0.5 s line by line.
at::Tensor encode_split(const text::Tokenizer& tok, const at::Tensor& bytes) {
  const std::string text = text::utf8_lossy(bytes_of(bytes.contiguous()));
  const std::vector<text::TokenId> nl = tok.encode("\n", false);
  LOWMEM_CHECK(!nl.empty(), "[compare] the lm tokenizer encodes no newline");
  std::vector<text::TokenId> ids;
  ids.reserve(text.size() / 3);
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    if (end > start) {
      tok.encode_into(std::string_view(text).substr(start, end - start),
                      /*add_special_tokens=*/false, ids);
    }
    if (end < text.size()) ids.push_back(nl.back());
    start = end + 1;
  }
  at::Tensor out = at::empty({static_cast<int64_t>(ids.size())}, at::kLong);
  std::copy(ids.begin(), ids.end(), out.data_ptr<int64_t>());
  return out;
}

// The lm tokenizer (training and caching it first when it is not cached).
text::Tokenizer lm_tokenizer(const CompareOptions& o,
                             const data::TextCorpus& base) {
  std::string path = o.lm_tokenizer;
  if (lm_trains_tokenizer(o)) {
    path = lm_spm_path(o);
    if (!fs::exists(path)) {
      const std::string model = train_lm_tokenizer(o, base);
      fs::create_directories(fs::path(path).parent_path());
      io::atomic_write_file(path, model);
    }
  }
  return text::Tokenizer::from_file(path);
}

std::string describe_tokenizer(const CompareOptions& o,
                               const text::Tokenizer& tok) {
  return lm_trains_tokenizer(o)
             ? "a sentencepiece BPE tokenizer of " +
                   std::to_string(tok.vocab_size()) +
                   " pieces trained on the base files (" + tok.path() + ")"
             : "the tokenizer " + tok.path() + " (" +
                   std::to_string(tok.vocab_size()) + " tokens)";
}

// The domain's token ids, cached beside the base model (written by
// make_lm_base in the parent; each method's child then loads a small file
// instead of tokenizing the corpus).
std::string lm_tokens_path(const CompareOptions& o) {
  return cache_path(o, "lm-tokens", lm_key(o));
}

data::TextCorpus lm_base_corpus(const LmSplit& sp, const CompareOptions& o) {
  return data::TextCorpus::from_files(sp.base, o.text_path + " [base]");
}

data::TextCorpus lm_domain_corpus(const LmSplit& sp, const CompareOptions& o) {
  return data::TextCorpus::from_files(sp.domain,
                                      o.text_path + " [" + o.lm_domain + "]");
}

void save_lm_tokens(const CompareOptions& o, const LmData& d) {
  const std::string path = lm_tokens_path(o);
  fs::create_directories(fs::path(path).parent_path());
  io::atomic_write_file(path, [&d](std::ostream& out) {
    torch::save(std::vector<at::Tensor>{d.domain_train, d.domain_val}, out);
  });
  write_text_file(path + ".json", nlohmann::json{{"tokenizer", d.tokenizer},
                                                 {"vocab", d.vocab},
                                                 {"domain", d.domain_name}}
                                          .dump(1) +
                                      "\n");
}

// The domain's data; `base` (when given) receives the base corpus's train
// and validation ids. Tokenizes unless the cache holds the domain's ids.
std::shared_ptr<LmData> lm_data(const CompareOptions& o,
                                std::vector<at::Tensor>* base = nullptr) {
  auto d = std::make_shared<LmData>();
  if (!lm_bytes(o) && base == nullptr && fs::exists(lm_tokens_path(o)) &&
      fs::exists(lm_tokens_path(o) + ".json")) {
    std::vector<at::Tensor> t;
    torch::load(t, lm_tokens_path(o));
    const auto meta =
        read_json_file(lm_tokens_path(o) + ".json");  // core/json.h limits
    LOWMEM_CHECK(t.size() == 2, "[compare] ", lm_tokens_path(o),
                 " holds no token ids; delete it to rebuild");
    d->domain_train = t[0];
    d->domain_val = t[1];
    d->tokenizer =
        json_string_or(meta, "tokenizer", "?", "[compare] lm tokens");
    d->vocab = json_int_or(meta, "vocab", 0, "[compare] lm tokens");
    d->domain_name = json_string_or(meta, "domain", "?", "[compare] lm tokens");
    return d;
  }
  const LmSplit sp = lm_split(o);
  const data::TextCorpus domain = lm_domain_corpus(sp, o);
  d->domain_name = domain.describe();
  if (lm_bytes(o)) {
    d->domain_train = domain.train();
    d->domain_val = domain.validation();
    if (base != nullptr) {
      const data::TextCorpus b = lm_base_corpus(sp, o);
      d->base_name = b.describe();
      *base = {b.train(), b.validation()};
    }
    return d;
  }
  const data::TextCorpus b = lm_base_corpus(sp, o);
  const text::Tokenizer tok = lm_tokenizer(o, b);
  d->vocab = tok.vocab_size();
  d->tokenizer = describe_tokenizer(o, tok);
  d->domain_train = encode_split(tok, domain.train());
  d->domain_val = encode_split(tok, domain.validation());
  if (base != nullptr) {
    d->base_name = b.describe();
    *base = {encode_split(tok, b.train()), encode_split(tok, b.validation())};
  }
  return d;
}

void make_lm_base(const CompareOptions& o, const CompareCallbacks& cb) {
  const std::string path = lm_base_path(o);
  std::vector<at::Tensor> base;  // train, validation
  const std::shared_ptr<LmData> d = lm_data(o, &base);
  if (!lm_bytes(o)) save_lm_tokens(o, *d);
  torch::manual_seed(o.seed);
  auto model = std::make_shared<models::Llama>(lm_config(o, d->vocab));
  data::TextBatches batches(base[0], data::TextBatchOptions()
                                         .context(o.gpt_context)
                                         .batch_size(o.gpt_batch)
                                         .seed(o.seed));
  train_base(model, batches, o.lm_base_steps,
             MethodInfo{"lm", "base", "base model", "", "", ""}, cb);
  Evaluation on_base, on_domain;
  {
    torch::NoGradGuard ng;
    on_base = text_evaluation(model, base[1], o)();
    on_domain = text_evaluation(model, d->domain_val, o)();
  }
  save_base(path, *model,
            {{"key", lm_key(o)},
             {"tokenizer", d->tokenizer},
             {"val_loss_base_domain", on_base.loss},
             {"val_loss_new_domain", on_domain.loss},
             {"steps", o.lm_base_steps}});
  if (cb.on_note) {
    cb.on_note("lm base: LLaMA trained " + std::to_string(o.lm_base_steps) +
               " steps on " + d->base_name +
               (lm_bytes(o) ? " (bytes)"
                            : " (" + std::to_string(base[0].numel()) +
                                  " training tokens of " + d->tokenizer + ")") +
               "; validation loss " + num(on_base.loss) + " there, " +
               num(on_domain.loss) + " on the held-out domain (" + o.lm_domain +
               ") before fine-tuning; cached at " + path);
  }
}

std::shared_ptr<SuiteData> lm_load(const CompareOptions& o) {
  return lm_data(o);
}

Workload lm_build(SuiteData& sd, const CompareOptions& o,
                  const ModelVariant& variant) {
  auto& d = static_cast<LmData&>(sd);
  auto model = std::make_shared<models::Llama>(lm_config(o, d.vocab));
  load_base(lm_base_path(o), *model);
  if (variant.bf16) model->to(at::kBFloat16);
  Workload w;
  std::ostringstream task;
  task << "LLaMA (width " << o.gpt_width << ", " << o.gpt_layers << " layers, "
       << o.gpt_heads << " heads, context " << o.gpt_context << ") on "
       << (lm_bytes(o) ? "bytes" : d.tokenizer)
       << ", pretrained on the fortune categories outside " << o.lm_domain
       << " (" << o.lm_base_steps << " steps, cached), fine-tuned on "
       << d.domain_name << ", batch " << o.gpt_batch << "; validation loss per "
       << (lm_bytes(o) ? "byte" : "token")
       << " on the held-out domain (perplexity = exp)";
  w.task = task.str();
  fill_text_workload(w, model, d.domain_train, d.domain_val, o);
  return w;
}

int64_t lm_steps(const CompareOptions& o) { return o.lm_steps; }

}  // namespace

void add_model_suites(std::vector<Suite>& s) {
  s.push_back(Suite{"pretrain",
                    "val_loss",
                    {"model=gpt", "data=text"},
                    text_unavailable,
                    text_load,
                    text_build,
                    pretrain_steps,
                    nullptr,
                    nullptr});
  s.push_back(Suite{"finetune",
                    "val_accuracy",
                    {"model=vit", "data=fashion-mnist"},
                    fmnist_unavailable,
                    finetune_load,
                    finetune_build,
                    finetune_steps,
                    base_path,
                    make_base});
  s.push_back(Suite{"lm",
                    "val_loss",
                    {"model=llama", "data=text"},
                    lm_unavailable,
                    lm_load,
                    lm_build,
                    lm_steps,
                    lm_base_path,
                    make_lm_base});
}

}  // namespace lowmem::compare::detail
