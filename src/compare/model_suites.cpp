// The model-based suites of `lowmem compare`: pretrain (GPT from scratch on
// text) and finetune (ViT on Fashion-MNIST classes 5-9 from a base model
// pretrained on classes 0-4 by train::Trainer, cached on disk keyed by its
// configuration).
#include <ATen/ATen.h>
#include <torch/optim/adamw.h>
#include <torch/serialize.h>
#include <torch/utils.h>

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "internal.h"
#include "lowmem/core/check.h"
#include "lowmem/data/fashion_mnist.h"
#include "lowmem/data/text.h"
#include "lowmem/io/atomic_file.h"
#include "lowmem/models/gpt.h"
#include "lowmem/models/vit.h"
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
  w.model = model;
  w.items_per_step = o.gpt_batch * o.gpt_context;
  w.item_unit = "tokens/s";
  auto batches =
      std::make_shared<data::TextBatches>(d.train, data::TextBatchOptions()
                                                       .context(o.gpt_context)
                                                       .batch_size(o.gpt_batch)
                                                       .seed(run_seed(o)));
  w.next_batch = [batches]() { return batches->next(); };
  w.loss = [model](const data::Batch& b) {
    const c10::Device dev = device_of(*model);
    return model->loss(b.input.to(dev), b.target.to(dev));
  };
  const int64_t n_eval = o.eval_batches;
  const TextBatchesArgs args{o.gpt_context, o.gpt_batch};
  at::Tensor val = d.val;
  w.evaluate = [model, val, n_eval, args]() {
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
  return w;
}

int64_t pretrain_steps(const CompareOptions& o) { return o.pretrain_steps; }

// ------------------------------------------------------------- finetune
constexpr int64_t kBaseLrMilli = 2;  // base model: AdamW lr 2e-3

std::string fmnist_unavailable(const CompareOptions& o) {
  std::error_code ec;
  const fs::path root(o.fashion_mnist_dir);
  for (const char* f : {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"})
    if (!fs::exists(root / f, ec))
      return "Fashion-MNIST not found at '" + o.fashion_mnist_dir + "' (missing " +
             f + "; Debian package dataset-fashion-mnist)";
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
  k << "vit w" << o.vit_width << " l" << o.vit_layers << " h" << o.vit_heads << " p"
    << o.vit_patch << " b" << o.vit_batch << " steps" << o.base_steps << " seed"
    << o.seed << " lr" << kBaseLrMilli << "e-3 classes0-4 data " << o.fashion_mnist_dir;
  return k.str();
}

std::string base_path(const CompareOptions& o) {
  const std::string dir =
      o.cache_dir.empty() ? (fs::path(o.out_dir) / "cache").string() : o.cache_dir;
  const std::string key = base_key(o);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx",
                static_cast<unsigned long long>(data::mix64(std::hash<std::string>()(key))));
  return (fs::path(dir) / ("vit-base-" + std::string(hex) + ".pt")).string();
}

data::ImageSet fmnist(const CompareOptions& o, bool train, std::vector<int64_t> classes,
                      int64_t per_class) {
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
    models::EvalStats st = model.evaluate(x, set.labels.narrow(0, s, n).to(dev));
    loss += st.loss_sum;
    count += st.count;
    correct += st.correct;
  }
  const double c = static_cast<double>(std::max<int64_t>(1, count));
  return Evaluation{loss / c, static_cast<double>(correct) / c};
}

void make_base(const CompareOptions& o, const CompareCallbacks& cb) {
  const std::string path = base_path(o);
  fs::create_directories(fs::path(path).parent_path());
  torch::manual_seed(o.seed);
  data::ImageSet train = fmnist(o, true, {0, 1, 2, 3, 4}, 0);
  data::ImageSet test = fmnist(o, false, {0, 1, 2, 3, 4}, 0);
  auto model = std::make_shared<models::ViT>(vit_config(o));
  data::ImageBatches batches(
      train, data::ImageBatchOptions().batch_size(o.vit_batch).seed(o.seed));
  // The trainer at a constant rate (no warm-up, floor 1), no clipping.
  train::TrainerOptions to;
  to.max_steps = o.base_steps;
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
  const MethodInfo info{"finetune", "base", "base model", "", "", ""};
  trainer.set_progress([&](const train::Progress& p) {
    if (p.kind == train::Progress::Kind::kStep && cb.on_step)
      cb.on_step(info, p.step, o.base_steps, p.loss);
  });
  trainer.fit(batches, nullptr);
  model->eval();
  Evaluation e;
  {
    torch::NoGradGuard ng;
    e = classify(*model, test);
  }
  io::atomic_write_file(path, [&model](std::ostream& out) {
    torch::serialize::OutputArchive ar;
    model->save(ar);
    ar.save_to(out);
  });
  nlohmann::json meta = {{"key", base_key(o)},
                         {"test_accuracy_classes_0_4", *e.accuracy},
                         {"test_loss", e.loss},
                         {"steps", o.base_steps}};
  write_text_file(path + ".json", meta.dump(1) + "\n");
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
  LOWMEM_CHECK(o.finetune_examples >= 5, "[compare] finetune_examples must be >= 5, got ",
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
  {
    const std::string path = base_path(o);
    LOWMEM_CHECK(fs::exists(path), "[compare] base model '", path, "' is missing");
    torch::serialize::InputArchive ar;
    ar.load_from(path);
    model->load(ar);
  }
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
}

}  // namespace lowmem::compare::detail
