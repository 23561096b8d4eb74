// The components the configuration knows: models and data sources as rows
// here (a row: name, section, options, builder), optimizers and adapters from
// their registries (optim/registry.h, adapters/registry.h). Adding a model or
// data source: its section struct, its builder and one row below.
#include "components.h"

#include <ATen/ATen.h>

#include <cmath>
#include <set>
#include <sstream>

#include "lowmem/adapters/inject.h"
#include "lowmem/adapters/registry.h"
#include "lowmem/core/check.h"
#include "lowmem/core/dtype.h"
#include "lowmem/core/input.h"
#include "lowmem/data/fashion_mnist.h"
#include "lowmem/data/jsonl.h"
#include "lowmem/data/text.h"
#include "lowmem/interop/hf_checkpoint.h"
#include "lowmem/models/gpt.h"
#include "lowmem/models/llama.h"
#include "lowmem/models/mlp.h"
#include "lowmem/models/vit.h"
#include "lowmem/nn/curvature_tap.h"
#include "lowmem/nn/nf4.h"
#include "lowmem/optim/galore.h"
#include "lowmem/optim/registry.h"
#include "lowmem/text/tokenizer.h"
#include "lowmem/train/device.h"
#include "method_wiring.h"

namespace lowmem::train::detail {
namespace {

// ---- Option sections. Structs whose own header has no for_each_field get a
// visitor here (the TORCH_ARG accessors return references). ----

// Defaults: the default recipe recipes/gpt-fortunes.yaml (a ~0.8M-parameter
// GPT that trains in about two minutes on two cores).
struct GptSection {
  models::GPTConfig c =
      models::GPTConfig().n_layer(4).n_head(4).n_embd(128).block_size(64);
  template <class V>
  void for_each_field(V&& v) {
    v("n_layer", c.n_layer());
    v("n_head", c.n_head());
    v("n_embd", c.n_embd());
    v("block_size", c.block_size());
    v("dropout", c.dropout());
    v("bias", c.bias());
    v("activation_checkpointing", c.activation_checkpointing());
  }
};

// LLaMA (models/llama.h). preset "" = the sizes below (a small byte-level
// model); 60m..7b = GaLore's configs (then the size fields are ignored).
// context: the text batches' sequence length (<= max_position_embeddings).
struct LlamaSection {
  std::string preset;
  models::LlamaConfig c;
  int64_t context = 64;
  std::string dtype = "float32";  // the weights': float32 or bfloat16
  template <class V>
  void for_each_field(V&& v) {
    v("preset", preset);
    v("dtype", dtype);
    v("vocab_size", c.vocab_size());
    v("hidden_size", c.hidden_size());
    v("intermediate_size", c.intermediate_size());
    v("num_hidden_layers", c.num_hidden_layers());
    v("num_attention_heads", c.num_attention_heads());
    v("max_position_embeddings", c.max_position_embeddings());
    v("rms_norm_eps", c.rms_norm_eps());
    v("rope_theta", c.rope_theta());
    v("initializer_range", c.initializer_range());
    v("activation_checkpointing", c.activation_checkpointing());
    v("context", context);
  }
  models::LlamaConfig config() const {
    if (preset.empty()) return c;
    return models::llama_preset(preset).activation_checkpointing(
        c.activation_checkpointing());
  }
};

// A Hugging Face model directory (interop/hf_checkpoint.h): config.json of a
// Llama, Mistral, Qwen2 or Qwen3 causal LM and its safetensors weights.
// dtype: the parameters' (float32, bfloat16, float16, or auto = config.json's
// torch_dtype); context: the text batches' sequence length.
struct HfSection {
  std::string path;
  std::string dtype = "float32";
  int64_t context = 64;
  bool activation_checkpointing = false;
  template <class V>
  void for_each_field(V&& v) {
    v("path", path);
    v("dtype", dtype);
    v("context", context);
    v("activation_checkpointing", activation_checkpointing);
  }
};

struct VitSection {
  models::ViTConfig c;  // models/vit.h defaults
  template <class V>
  void for_each_field(V&& v) {
    v("patch_size", c.patch_size());
    v("n_layer", c.n_layer());
    v("n_head", c.n_head());
    v("n_embd", c.n_embd());
    v("mlp_ratio", c.mlp_ratio());
    v("dropout", c.dropout());
    v("bias", c.bias());
    v("activation_checkpointing", c.activation_checkpointing());
    v("fused_qkv", c.fused_qkv());
  }
};

struct MlpSection {
  std::string hidden = "256";  // comma-separated hidden widths
  std::string activation = "relu";
  bool bias = true;
  template <class V>
  void for_each_field(V&& v) {
    v("hidden", hidden);
    v("activation", activation);
    v("bias", bias);
  }
};

struct TextSection {
  std::string path = data::kDefaultTextCorpus;
  double val_fraction = 0.1;
  template <class V>
  void for_each_field(V&& v) {
    v("path", path);
    v("val_fraction", val_fraction);
  }
};

// Instruction data (data/jsonl.h): JSONL rows or .txt files, tokenized with
// a real tokenizer. context 0 = the model's (gpt.block_size, llama.context);
// seed seeds the train/validation split (the top-level seed shuffles the
// epochs), so a run with another seed keeps the same validation samples.
struct JsonlSection {
  std::string path;
  std::string tokenizer;      // tokenizer.json, tokenizer.model or a folder
  std::string chat_template;  // "" = the tokenizer's tokenizer_config.json
  bool pack = true;
  int64_t context = 0;
  double split = 0.1;
  int64_t seed = 0;
  bool skip_bad_rows = false;
  bool truncate = false;
  bool cache = true;
  std::string cache_dir;  // "" = $LOWMEM_CACHE_DIR/tokens, ~/.cache/...
  int64_t max_messages = data::kDefaultMaxMessages;
  template <class V>
  void for_each_field(V&& v) {
    v("path", path);
    v("tokenizer", tokenizer);
    v("chat_template", chat_template);
    v("pack", pack);
    v("context", context);
    v("split", split);
    v("seed", seed);
    v("skip_bad_rows", skip_bad_rows);
    v("truncate", truncate);
    v("cache", cache);
    v("cache_dir", cache_dir);
    v("max_messages", max_messages);
  }
};

struct FashionSection {
  std::string root = data::kDefaultFashionMnist;
  std::string classes;    // comma-separated labels; "" = all ten
  int64_t per_class = 0;  // training examples per class; 0 = all
  bool normalize = true;
  template <class V>
  void for_each_field(V&& v) {
    v("root", root);
    v("classes", classes);
    v("per_class", per_class);
    v("normalize", normalize);
  }
};

std::vector<int64_t> parse_list(const std::string& s, const std::string& key) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    out.push_back(parse_int(item, key));
  }
  return out;
}

template <class T>
const T& opts(const Config& c, const std::string& section) {
  const Section* s = c.section(section);
  LOWMEM_CHECK(s != nullptr, "[config] no section '", section, "'");
  return s->get<T>();
}

}  // namespace

int64_t zero_stage(const Config& c) {
  return opts<DistSection>(c, "dist").zero_stage;
}

bool zero_overlap(const Config& c) {
  return opts<DistSection>(c, "dist").zero_overlap;
}

namespace {

/// Runs `fn`; c10::Errors (option validation in constructors) become
/// ConfigError, a usage error.
template <class F>
auto usage(F&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const c10::Error& e) {
    throw ConfigError(e.what_without_backtrace());
  }
}

double class_prior_cross_entropy(const at::Tensor& fit, const at::Tensor& eval,
                                 int64_t classes) {
  auto counts = at::bincount(fit, {}, classes).to(at::kDouble) + 1.0;
  auto logp = (counts / counts.sum()).log();
  return -logp.index_select(0, eval).mean().item<double>();
}

}  // namespace

std::vector<Component> components() {
  std::vector<Component> out;
  for (const auto& m : model_kinds())
    out.push_back({"model", m.name, m.section});
  for (const auto& d : data_kinds()) out.push_back({"data", d.name, d.section});
  out.push_back({"method", "full", ""});
  out.push_back({"method", "galore", "galore"});
  for (const auto& a : adapters::adapter_kinds())
    out.push_back({"method", a.method, a.method});
  out.push_back({"method", "projected-adapter", "projected_adapter"});
  for (const auto& o : optim::optimizers())
    out.push_back({"optimizer", o.name, o.name});
  return out;
}

std::vector<Section> make_sections() {
  std::vector<Section> out;
  for (const auto& m : model_kinds()) out.push_back(m.options());
  for (const auto& d : data_kinds()) out.push_back(d.options());
  out.push_back(Section::of<GaloreSection>(
      "galore", "GaLore gradient projection (optim/galore.h)"));
  for (const auto& a : adapters::adapter_kinds()) out.push_back(a.options());
  out.push_back(Section::of<ProjectedAdapterSection>(
      "projected_adapter",
      "one-sided projected adapter (projection/projected_linear.h)"));
  for (const auto& o : optim::optimizers()) out.push_back(o.options());
  out.push_back(Section::of<DistSection>(
      "dist", "data-parallel training (docs/distributed.md)"));
  return out;
}

std::string section_of(const std::string& kind, const std::string& name) {
  for (const auto& c : components()) {
    if (c.kind == kind && c.name == name) {
      return c.section;
    }
  }
  return "";
}

std::vector<std::string> names_of(const std::string& kind) {
  std::vector<std::string> out;
  for (const auto& c : components()) {
    if (c.kind == kind) {
      out.push_back(c.name);
    }
  }
  return out;
}

namespace {

// The model's context; < 1 is a usage error, found before any data is read.
int64_t model_context(const Config& c) {
  const int64_t context =
      c.model == "llama" ? opts<LlamaSection>(c, "llama").context
      : c.model == "hf"  ? opts<HfSection>(c, "hf").context
                         : opts<GptSection>(c, "gpt").c.block_size();
  if (context < 1) {
    throw ConfigError(c.model +
                      (c.model == "gpt" ? ".block_size" : ".context") +
                      " must be >= 1, got " + std::to_string(context));
  }
  return context;
}

BuiltData build_text(const Config& c) {
  BuiltData d;
  if (c.model != "gpt" && c.model != "llama" && c.model != "hf") {
    throw ConfigError("data 'text' needs model gpt, llama or hf, got '" +
                      c.model + "'");
  }
  const auto& t = opts<TextSection>(c, "text");
  if (!(t.val_fraction > 0.0 && t.val_fraction < 1.0)) {
    throw ConfigError("text.val_fraction must be in (0, 1), got " +
                      format_float(t.val_fraction));
  }
  const int64_t context = model_context(c);
  data::TextCorpus corpus(t.path, t.val_fraction);
  auto train = std::make_shared<data::TextBatches>(
      corpus.train(),
      data::TextBatchOptions()
          .context(context)
          .batch_size(c.batch_size)
          .seed(static_cast<uint64_t>(c.seed)),
      "train");
  auto eval = std::make_shared<data::TextBatches>(
      corpus.validation(),
      data::TextBatchOptions()
          .context(context)
          .batch_size(c.batch_size)
          .seed(static_cast<uint64_t>(c.seed))
          .random(false),
      "validation");
  d.train = train;
  d.eval = eval;
  d.unit = "tokens";
  d.summary =
      corpus.describe() + "; " + train->describe() + "; " + eval->describe();
  d.baseline = data::unigram_cross_entropy(corpus.train(), corpus.validation());
  return d;
}

text::Tokenizer jsonl_tokenizer(const Config& c) {
  const auto& j = opts<JsonlSection>(c, "jsonl");
  if (j.tokenizer.empty()) {
    throw ConfigError(
        "data 'jsonl' needs jsonl.tokenizer (a tokenizer.json, "
        "tokenizer.model or a model folder)");
  }
  return text::Tokenizer::from_file(j.tokenizer);
}

// Cross-entropy on the validation split's trained targets of the unigram
// distribution of the train split's trained targets (add-one smoothing over
// the vocabulary): what predicting token frequencies alone scores.
double trained_unigram_baseline(const data::JsonlDataset& ds) {
  std::vector<double> counts(static_cast<size_t>(ds.vocab_size()), 1.0);
  double total = static_cast<double>(ds.vocab_size());
  for (const int64_t i : ds.train()) {
    const auto [ids, n] = ds.tokens(i);
    for (int64_t k = 1; k < n; ++k) {
      if (ds.mask(i)[k]) {
        counts[static_cast<size_t>(ids[k])] += 1.0;
        total += 1.0;
      }
    }
  }
  double loss = 0.0;
  int64_t n_val = 0;
  for (const int64_t i : ds.validation()) {
    const auto [ids, n] = ds.tokens(i);
    for (int64_t k = 1; k < n; ++k) {
      if (ds.mask(i)[k]) {
        loss -= std::log(counts[static_cast<size_t>(ids[k])] / total);
        ++n_val;
      }
    }
  }
  return n_val > 0 ? loss / static_cast<double>(n_val) : 0.0;
}

BuiltData build_jsonl(const Config& c) {
  if (c.model != "gpt" && c.model != "llama" && c.model != "hf") {
    throw ConfigError("data 'jsonl' needs model gpt, llama or hf, got '" +
                      c.model + "'");
  }
  const auto& j = opts<JsonlSection>(c, "jsonl");
  if (j.path.empty()) {
    throw ConfigError(
        "data 'jsonl' needs jsonl.path (a .jsonl file or a "
        "folder of .jsonl/.txt files)");
  }
  const int64_t limit = model_context(c);
  const int64_t context = j.context == 0 ? limit : j.context;
  if (context < 1 || context > limit) {
    throw ConfigError("jsonl.context " + std::to_string(j.context) +
                      " must be in [1, the model's context " +
                      std::to_string(limit) + "] (0: the model's)");
  }
  if (j.max_messages < 1) {
    throw ConfigError("jsonl.max_messages must be >= 1, got " +
                      std::to_string(j.max_messages));
  }
  if (j.split == 0.0) {
    throw ConfigError(
        "jsonl.split must hold validation samples (a fraction "
        "in (0, 1) or a count >= 1), got 0");
  }
  const text::Tokenizer tok = jsonl_tokenizer(c);
  auto ds = std::make_shared<data::JsonlDataset>(
      j.path, tok, usage([&] {
        return data::JsonlOptions()
            .context(context)
            .split(j.split)
            .seed(static_cast<uint64_t>(j.seed))
            .skip_bad_rows(j.skip_bad_rows)
            .truncate(j.truncate)
            .chat_template(j.chat_template)
            .cache(j.cache)
            .cache_dir(j.cache_dir)
            .max_messages(j.max_messages);
      }));
  const int64_t pad = tok.pad_id().value_or(tok.eos_id().value_or(0));
  const auto batches = data::JsonlBatchOptions()
                           .batch_size(c.batch_size)
                           .context(context)
                           .pack(j.pack)
                           .seed(static_cast<uint64_t>(c.seed))
                           .pad_id(pad);
  auto train =
      std::make_shared<data::JsonlBatches>(ds, ds->train(), batches, "train");
  auto eval = std::make_shared<data::JsonlBatches>(
      ds, ds->validation(), data::JsonlBatchOptions(batches).shuffle(false),
      "validation");
  BuiltData d;
  d.train = train;
  d.eval = eval;
  d.unit = "tokens";
  d.summary = tok.describe() + "; " + ds->describe() + "; " +
              train->describe() + "; " + eval->describe();
  d.baseline = trained_unigram_baseline(*ds);
  d.vocab_size = tok.vocab_size();
  return d;
}

BuiltData build_fashion_mnist(const Config& c) {
  BuiltData d;
  if (c.model != "vit" && c.model != "mlp") {
    throw ConfigError("data 'fashion-mnist' needs model vit or mlp, got '" +
                      c.model + "'");
  }
  const auto& f = opts<FashionSection>(c, "fashion_mnist");
  const auto classes = parse_list(f.classes, "fashion_mnist.classes");
  for (auto k : classes) {
    if (k < 0 || k > 9) {
      throw ConfigError("fashion_mnist.classes: label " + std::to_string(k) +
                        " is outside 0..9");
    }
  }
  if (f.per_class < 0) {
    throw ConfigError("fashion_mnist.per_class must be >= 0, got " +
                      std::to_string(f.per_class));
  }
  auto base = data::FashionMnistOptions()
                  .root(f.root)
                  .classes(classes)
                  .normalize(f.normalize)
                  .seed(static_cast<uint64_t>(c.seed));
  auto train_set = data::load_fashion_mnist(
      data::FashionMnistOptions(base).train(true).per_class(f.per_class));
  auto eval_set =
      data::load_fashion_mnist(data::FashionMnistOptions(base).train(false));
  d.n_classes = classes.empty() ? 10 : static_cast<int64_t>(classes.size());
  d.baseline =
      class_prior_cross_entropy(train_set.labels, eval_set.labels, d.n_classes);
  auto train = std::make_shared<data::ImageBatches>(
      train_set,
      data::ImageBatchOptions()
          .batch_size(c.batch_size)
          .seed(static_cast<uint64_t>(c.seed)),
      "train");
  auto eval = std::make_shared<data::ImageBatches>(
      eval_set,
      data::ImageBatchOptions().batch_size(c.batch_size).shuffle(false),
      "test");
  d.train = train;
  d.eval = eval;
  d.unit = "samples";
  d.summary = train->describe() + "; " + eval->describe();
  return d;
}

std::shared_ptr<models::Model> build_gpt(const Config& c,
                                         const BuiltData& data) {
  auto g = opts<GptSection>(c, "gpt").c;
  // A tokenized source: the embedding (and tied head) holds its ids.
  g.vocab_size(std::max(g.vocab_size(), data.vocab_size));
  return std::make_shared<models::GPT>(g);
}

c10::ScalarType llama_dtype(const Config& c) {
  const std::string& d = opts<LlamaSection>(c, "llama").dtype;
  const auto t = dtype_from_name(d);
  if (t == at::kFloat || t == at::kBFloat16) return *t;
  throw ConfigError("llama.dtype must be float32 or bfloat16, got '" +
                    clip(d, 40) + "'");
}

std::shared_ptr<models::Model> build_llama(const Config& c,
                                           const BuiltData& data) {
  const auto& l = opts<LlamaSection>(c, "llama");
  auto lc = l.config();
  lc.vocab_size(std::max(lc.vocab_size(), data.vocab_size));
  if (l.context > lc.max_position_embeddings()) {
    throw ConfigError("llama.context " + std::to_string(l.context) +
                      " exceeds max_position_embeddings " +
                      std::to_string(lc.max_position_embeddings()));
  }
  lc.dtype(llama_dtype(c));
  const auto pick = nf4_pick_at_build(c);
  if (!pick) return std::make_shared<models::Llama>(lc);
  // base_dtype nf4: each decoder layer is quantized as soon as it is built
  // (same draws, same values as quantizing the whole dense model after), so
  // at most one layer's dense weights exist at a time.
  return std::make_shared<models::Llama>(
      lc, [&pick](int64_t i, models::LlamaDecoderLayer& layer) {
        const std::string prefix = "model.layers." + std::to_string(i) + ".";
        nn::quantize_linears_nf4(layer, [&](const std::string& path) {
          return pick(prefix + path);
        });
      });
}

std::shared_ptr<models::Model> build_hf(const Config& c,
                                        const BuiltData& data) {
  const auto& h = opts<HfSection>(c, "hf");
  if (h.path.empty())
    throw ConfigError("hf.path is required: a Hugging Face model directory");
  auto options = interop::HfLoadOptions().activation_checkpointing(
      h.activation_checkpointing);
  if (h.dtype != "auto")
    options.dtype(usage([&] { return interop::hf_dtype_from_name(h.dtype); }));
  else
    options.dtype(c10::nullopt);
  const auto hc = usage([&] { return interop::read_hf_config(h.path); });
  if (h.context > hc.llama.max_position_embeddings()) {
    throw ConfigError("hf.context " + std::to_string(h.context) +
                      " exceeds max_position_embeddings " +
                      std::to_string(hc.llama.max_position_embeddings()));
  }
  if (c.data == "text" && hc.llama.vocab_size() < 256) {
    throw ConfigError("data 'text' feeds byte ids 0..255, but " + h.path +
                      " has vocab_size " +
                      std::to_string(hc.llama.vocab_size()));
  }
  if (data.vocab_size > hc.llama.vocab_size()) {
    throw ConfigError("the tokenizer has " + std::to_string(data.vocab_size) +
                      " ids, more than " + h.path + "'s vocab_size " +
                      std::to_string(hc.llama.vocab_size()));
  }
  return interop::load_hf_model(h.path, options);
}

PlannedModel plan_llama(const Config& c, c10::optional<c10::ScalarType> dtype,
                        int64_t batch, int64_t seq) {
  const auto& l = opts<LlamaSection>(c, "llama");
  auto lc = l.config()
                .dtype(dtype.value_or(llama_dtype(c)))
                .device(c10::Device(c10::kMeta));
  PlannedModel p;
  p.seq = seq > 0 ? seq : l.context;
  if (p.seq > lc.max_position_embeddings()) {
    throw ConfigError("sequence length " + std::to_string(p.seq) +
                      " exceeds llama max_position_embeddings " +
                      std::to_string(lc.max_position_embeddings()));
  }
  p.model = usage([&] { return std::make_shared<models::Llama>(lc); });
  // Activations as they would be on the run's device (the generator state a
  // checkpoint keeps is CPU-only).
  const auto a = models::llama_activation_bytes(
      models::LlamaConfig(lc).device(parse_device(c.device)), batch, p.seq);
  auto& m = p.activations;
  m.layers = lc.num_hidden_layers();
  m.checkpointing = lc.activation_checkpointing();
  m.layer = a.layer;
  m.checkpoint = a.checkpoint;
  m.layer_backward = a.layer_backward;
  m.head = a.head;
  m.head_forward = a.head_forward;
  m.head_backward = a.head_backward;
  m.log_probs = a.log_probs;
  m.logits_grad = a.logits_grad;
  const int64_t layers = m.layers;
  const bool tied = lc.tie_word_embeddings();
  // HF names: model.layers.<i>.*, model.embed_tokens.*; the rest (lm_head,
  // model.norm) is the head, whose gradients come first. A tied embedding is
  // lm_head too: its gradient exists from the head's backward on.
  m.stage_of = [layers, tied](const std::string& name) -> int64_t {
    const std::string prefix = "model.layers.";
    if (name.rfind(prefix, 0) == 0) {
      return std::stoll(name.substr(prefix.size()));
    }
    const bool embedding = name.rfind("model.embed_tokens", 0) == 0;
    return embedding && !tied ? layers : -1;
  };
  return p;
}

std::shared_ptr<models::Model> build_vit(const Config& c,
                                         const BuiltData& data) {
  auto v = opts<VitSection>(c, "vit").c;
  v.n_classes(data.n_classes);
  return std::make_shared<models::ViT>(v);
}

std::shared_ptr<models::Model> build_mlp(const Config& c,
                                         const BuiltData& data) {
  const auto& m = opts<MlpSection>(c, "mlp");
  std::vector<int64_t> sizes{28 * 28};
  for (auto h : parse_list(m.hidden, "mlp.hidden")) {
    sizes.push_back(h);
  }
  sizes.push_back(data.n_classes);
  return std::make_shared<models::MLP>(
      models::MLPConfig().sizes(sizes).activation(m.activation).bias(m.bias));
}

template <class T>
std::function<Section()> section(const char* name, const char* help) {
  return [name, help] { return Section::of<T>(name, help); };
}

}  // namespace

const std::vector<DataKind>& data_kinds() {
  // One row per data source: name, section, options, builder.
  static const std::vector<DataKind> rows = {
      {"text", "text",
       section<TextSection>("text", "byte-level text (data/text.h)"),
       build_text, nullptr, nullptr},
      {"fashion-mnist", "fashion_mnist",
       section<FashionSection>("fashion_mnist",
                               "Fashion-MNIST (data/fashion_mnist.h)"),
       build_fashion_mnist,
       [](const Config& c) {
         const auto& f = opts<FashionSection>(c, "fashion_mnist");
         const auto n = parse_list(f.classes, "fashion_mnist.classes").size();
         return n == 0 ? int64_t{10} : static_cast<int64_t>(n);
       },
       nullptr},
      {"jsonl", "jsonl",
       section<JsonlSection>(
           "jsonl",
           "JSONL text, prompt/completion or chat rows with a real "
           "tokenizer (data/jsonl.h)"),
       build_jsonl, nullptr,
       [](const Config& c) { return jsonl_tokenizer(c).vocab_size(); }},
  };
  return rows;
}

const std::vector<ModelKind>& model_kinds() {
  // One row per model: name, section, options, builder.
  static const std::vector<ModelKind> rows = {
      {"gpt", "gpt", section<GptSection>("gpt", "GPT model (models/gpt.h)"),
       build_gpt, nullptr},
      {"llama", "llama",
       section<LlamaSection>("llama", "LLaMA model (models/llama.h)"),
       build_llama, plan_llama},
      {"hf", "hf",
       section<HfSection>("hf",
                          "Hugging Face Llama/Mistral/Qwen2/Qwen3 directory "
                          "(interop/hf_checkpoint.h)"),
       build_hf, nullptr},
      {"vit", "vit", section<VitSection>("vit", "ViT model (models/vit.h)"),
       build_vit, nullptr},
      {"mlp", "mlp", section<MlpSection>("mlp", "MLP model (models/mlp.h)"),
       build_mlp, nullptr},
  };
  return rows;
}

BuiltData build_data(const Config& c) {
  for (const auto& k : data_kinds())
    if (k.name == c.data) return k.build(c);
  throw ConfigError("unknown data '" + c.data + "'");
}

BuiltData data_shape(const Config& c) {
  BuiltData d;
  for (const auto& k : data_kinds()) {
    if (k.name == c.data && k.classes) d.n_classes = k.classes(c);
    if (k.name == c.data && k.vocab) d.vocab_size = k.vocab(c);
  }
  return d;
}

namespace {

// A model whose weights cannot be allocated: the message names the section's
// values (the flags to change) and the allocator's size, not only the
// allocator's text.
[[noreturn]] void model_does_not_fit(const Config& c, const ModelKind& k,
                                     const std::string& what) {
  std::string values;
  if (const Section* s = c.section(k.section)) {
    for (const auto& f : s->fields()) {
      values += (values.empty() ? "" : ", ") + k.section + "." + f.name + "=" +
                clip(f.get(), 40);
    }
  }
  throw ConfigError("model " + c.model + " does not fit in memory with " +
                    clip(values, 400) + " (allocating its weights failed: " +
                    clip(what, 160) + "); choose smaller sizes");
}

}  // namespace

std::shared_ptr<models::Model> build_model(const Config& c,
                                           const BuiltData& data) {
  for (const auto& k : model_kinds()) {
    if (k.name != c.model) {
      continue;
    }
    try {
      return k.build(c, data);
    } catch (const c10::Error& e) {
      const std::string msg = e.what_without_backtrace();
      if (msg.find("can't allocate memory") != std::string::npos) {
        model_does_not_fit(c, k, msg);
      }
      // Option validation in the constructors: a usage error.
      throw ConfigError(msg);
    } catch (const std::bad_alloc&) {
      model_does_not_fit(c, k, "std::bad_alloc");
    }
  }
  throw ConfigError("unknown model '" + c.model + "'");
}

namespace {

bool is_output_head(const std::string& p) {
  return p == "head" || p == "lm_head" ||
         (p.size() > 8 && p.compare(p.size() - 8, 8, ".lm_head") == 0);
}

// The slots an NF4 base quantizes (base_dtype nf4), by full module path:
// every linear slot the method freezes, except an output head and
// modules_to_save (QLoRA quantizes every linear layer but the output
// embedding: transformers' get_keys_to_not_convert). A projected adapter
// that leaves the rest trainable (freeze_rest false) gets only its targets
// quantized: that needs the built model (`model`); without one (nullptr) the
// result is empty.
std::function<bool(const std::string&)> nf4_pick(
    const Config& c, const adapters::TargetOptions& t,
    torch::nn::Module* model) {
  const bool explicit_targets =
      !t.target_modules().empty() || !t.target_regex().empty();
  const bool only_targets =
      c.method == "projected-adapter" &&
      !opts<ProjectedAdapterSection>(c, "projected_adapter").freeze_rest &&
      explicit_targets;
  if (!only_targets) {
    return [t](const std::string& path) {
      return !is_output_head(path) && !adapters::in_modules_to_save(path, t);
    };
  }
  if (model == nullptr) return {};
  auto targeted = std::make_shared<std::set<std::string>>();
  usage([&] {
    for (const auto& r : adapters::find_targets(*model, t))
      targeted->insert(r.path);
  });
  return
      [targeted](const std::string& path) { return targeted->count(path) > 0; };
}

}  // namespace

adapters::TargetOptions method_targets(
    const Config& c, const std::shared_ptr<torch::nn::Module>& model) {
  // Default targets: LLaMA-family decoders PEFT's q_proj and v_proj; the GPT
  // and ViT every projection of the transformer blocks; the MLP's hidden
  // layers. A new classifier head stays trainable (modules_to_save).
  adapters::TargetOptions t;
  if (!c.targets.empty()) {
    t = adapters::TargetOptions::from_list(c.targets);
    if (c.model == "vit") {
      t.modules_to_save({"head"});  // a new classifier head keeps training
    }
  } else if (c.model == "mlp") {
    std::vector<std::string> names;
    auto mlp = std::dynamic_pointer_cast<models::MLP>(model);
    LOWMEM_CHECK(mlp != nullptr,
                 "[train] the mlp's default targets need the "
                 "built model");
    const auto& all = mlp->layer_names();
    names.assign(all.begin(), all.end() - 1);
    if (names.empty()) {
      throw ConfigError("method " + c.method +
                        " needs a hidden MLP layer "
                        "(mlp.hidden) or --targets");
    }
    t.target_modules(names);
    t.modules_to_save({all.back()});
  } else if (c.model == "llama" || c.model == "hf") {
    // PEFT's default for the LLaMA family (llama, mistral, qwen2, qwen3:
    // TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, peft
    // utils/constants.py), for every adapter method: LoTR's groups (one per
    // projection type) have equal shapes across layers.
    t.target_modules({"q_proj", "v_proj"});
  } else if (c.method == "lotr") {
    // LoTR groups layers by projection type and a group needs equal shapes:
    // the square attention projections.
    t.target_modules({"qkv", "attn.proj"});
    if (c.model == "vit") {
      t.modules_to_save({"head"});
    }
  } else {
    t.target_modules({"qkv", "proj", "fc"});
    if (c.model == "vit") {
      t.modules_to_save({"head"});
    }
  }
  if (!c.modules_to_save.empty()) {
    t.modules_to_save(
        adapters::TargetOptions::from_list(c.modules_to_save).target_modules());
  }
  return t;
}

std::function<bool(const std::string&)> nf4_pick_at_build(const Config& c) {
  if (c.base_dtype != "nf4" || !c.init.empty() || c.method == "full" ||
      c.method == "galore" || (c.targets.empty() && c.model == "mlp")) {
    return {};  // dense weights loaded after the build, or no base to pick
  }
  return nf4_pick(c, method_targets(c, nullptr), nullptr);
}

AppliedMethod apply_method(const Config& c,
                           const std::shared_ptr<torch::nn::Module>& model) {
  AppliedMethod applied;
  if (c.method == "full" || c.method == "galore") {
    return applied;  // galore acts in the optimizer (build_optimizer)
  }
  const adapters::TargetOptions t = method_targets(c, model);
  if (c.base_dtype == "nf4") {
    // Slots already quantized at build (nf4_pick_at_build) are Nf4Linear,
    // which quantize_linears_nf4 leaves as they are.
    nn::quantize_linears_nf4(*model, nf4_pick(c, t, model.get()));
  }
  usage([&] {
    if (const auto* kind = adapters::find_adapter(c.method)) {
      applied.adapter = kind->inject(model, t, *c.section(kind->method));
    } else if (c.method == "projected-adapter") {
      const auto& o = opts<ProjectedAdapterSection>(c, "projected_adapter");
      // Checked before anything is injected.
      optim::validate(optim::GaLoreOptions().projector(o.p).state_on_refresh(
          o.state_on_refresh));
      applied.projected =
          wiring::inject_projected_adapters(*model, t, o.p, o.freeze_rest);
    } else {
      throw ConfigError("method '" + c.method +
                        "' is not available in this build");
    }
  });
  return applied;
}

std::string main_target(const Config& c) {
  if (c.method == "galore") {
    return "galore";
  }
  if (c.method == "projected-adapter") {
    return "projected_adapter";
  }
  return c.optimizer;
}

bool is_curvature_optimizer(const std::string& name) {
  const auto* kind = optim::find_optimizer(name);
  return kind != nullptr && static_cast<bool>(kind->make_for_layers);
}

std::string aux_target(const Config& c) {
  return c.aux_optimizer == main_target(c) ? c.aux_optimizer + "_aux"
                                           : c.aux_optimizer;
}

namespace {

std::string regex_escape(const std::string& s) {
  std::string out;
  for (const char ch : s) {
    if (std::string("\\^$.|?*+()[]{}").find(ch) != std::string::npos) {
      out += '\\';
    }
    out += ch;
  }
  return out;
}

}  // namespace

std::vector<RouteRule> routing_rules(const Config& c, torch::nn::Module& model,
                                     const AppliedMethod& applied) {
  // The main optimizer takes exactly `names`; everything else goes to the aux
  // optimizer.
  auto exactly = [&](const std::vector<std::string>& names) {
    std::string alternatives;
    for (const auto& name : names) {
      alternatives += (alternatives.empty() ? "" : "|") + regex_escape(name);
    }
    RouteRule covered;
    covered.target = main_target(c);
    covered.pattern = "^(" + alternatives + ")$";
    RouteRule rest;
    rest.target = aux_target(c);
    return std::vector<RouteRule>{covered, rest};
  };
  if (c.method == "projected-adapter" && c.route == "auto") {
    // The adapters' A; the rest (if it trains) goes to the aux optimizer.
    std::vector<std::string> names;
    const auto as = applied.projected.a();
    for (const auto& item : model.named_parameters(/*recurse=*/true)) {
      for (const auto& a : as) {
        if (item.value().is_same(a)) {
          names.push_back(item.key());
        }
      }
    }
    return exactly(names);
  }
  if (is_curvature_optimizer(c.optimizer) && c.route == "auto") {
    // SINGD/KFAC take the weights and biases of the Linear/Conv2d layers they
    // can tap.
    std::vector<std::string> names;
    for (const auto& [name, p] :
         nn::split_curvature_parameters(model).covered) {
      names.push_back(name);
    }
    return exactly(names);
  }
  const std::string& galore_targets = opts<GaloreSection>(c, "galore").targets;
  if (c.method == "galore" && c.route == "auto" && !galore_targets.empty()) {
    RouteRule projected;
    projected.target = main_target(c);
    projected.pattern = galore_targets;
    projected.min_dim = 2;
    RouteRule rest;
    rest.target = aux_target(c);
    return {projected, rest};
  }
  std::string route = c.route;
  if (route == "auto") {
    const bool matrix_only =
        is_curvature_optimizer(c.optimizer) || c.method == "galore";
    route = matrix_only ? "matrices" : "all";
  }
  if (route == "matrices") {
    return matrices_and_rest(main_target(c), aux_target(c));
  }
  RouteRule all;
  all.target = main_target(c);
  return {all};
}

namespace {

using Groups = std::vector<torch::optim::OptimizerParamGroup>;

/// Optimizer `name` over `groups` with the options of its section.
/// Optimizer `name` over `groups` with the options of `section`.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::string& name,
                                                        const Section& section,
                                                        Groups groups) {
  const optim::OptimizerKind& kind = optim::optimizer_kind(name);
  if (!kind.make) {
    throw ConfigError("optimizer " + name +
                      " preconditions whole layers: it "
                      "can only be the main optimizer, and not the inner one "
                      "of method galore or projected-adapter");
  }
  return kind.make(std::move(groups), section);
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const Config& c,
                                                        const std::string& name,
                                                        Groups groups) {
  return make_optimizer(name, *c.section(optim::optimizer_kind(name).name),
                        std::move(groups));
}

}  // namespace

std::shared_ptr<torch::optim::Optimizer> build_optimizer(
    const Config& c, const std::string& name, bool main, const Route& route,
    torch::nn::Module& model, const AppliedMethod& applied) {
  auto inner = [&c, name](Groups groups) {
    return make_optimizer(c, name, std::move(groups));
  };
  return usage([&]() -> std::shared_ptr<torch::optim::Optimizer> {
    if (main && c.method == "galore") {
      auto g = opts<GaloreSection>(c, "galore").g;
      g.accumulation_steps(c.accum_steps);
      // galore_torch/adamw.py decays the FULL weight with the group's
      // weight_decay after the projected update; on the proxy it would act on
      // nothing. The inner section's decay moves to GaLoreOptions.
      const optim::OptimizerKind& kind = optim::optimizer_kind(name);
      Section section = *c.section(kind.name);
      if (const Field* wd = section.find("weight_decay")) {
        const double inner_wd = std::stod(wd->get());
        if (inner_wd != 0.0 && g.weight_decay() != 0.0 &&
            inner_wd != g.weight_decay()) {
          throw ConfigError("method galore: " + kind.name + ".weight_decay (" +
                            wd->get() + ") and galore.weight_decay (" +
                            std::to_string(g.weight_decay()) +
                            ") disagree; set one of them");
        }
        if (inner_wd != 0.0) g.weight_decay(inner_wd);
        wd->set("0");
      }
      auto inner_no_decay = [name, section](Groups groups) {
        return make_optimizer(name, section, std::move(groups));
      };
      return wiring::make_galore(route.params, {}, inner_no_decay, g);
    }
    if (main && c.method == "projected-adapter") {
      // The adapters' A (all of them) and whatever else the route gives the
      // main optimizer (route=all: the plain params, trained by the same
      // inner optimizer).
      const auto as = applied.projected.a();
      std::vector<at::Tensor> plain;
      size_t found = 0;
      for (const auto& p : route.params) {
        bool is_a = false;
        for (const auto& a : as) {
          is_a = is_a || p.is_same(a);
        }
        found += is_a ? 1 : 0;
        if (!is_a) {
          plain.push_back(p);
        }
      }
      if (found != as.size()) {
        throw ConfigError("method projected-adapter: route=" + c.route +
                          " gives " + std::to_string(as.size() - found) +
                          " adapter factor(s) to the aux optimizer");
      }
      const auto& o = opts<ProjectedAdapterSection>(c, "projected_adapter");
      return wiring::make_projected_adapter_optimizer(
          applied.projected, std::move(plain), inner,
          optim::GaLoreOptions().projector(o.p).state_on_refresh(
              o.state_on_refresh));
    }
    if (is_curvature_optimizer(name)) {
      if (!main) {
        throw ConfigError(name + " cannot be the aux_optimizer");
      }
      // The layers whose weights were routed here.
      std::vector<nn::CurvatureLayer> layers;
      for (auto& layer : nn::find_curvature_layers(model)) {
        for (const auto& p : route.params) {
          if (p.is_same(layer.weight)) {
            layers.push_back(layer);
            break;
          }
        }
      }
      if (layers.empty()) {
        throw ConfigError(name + ": no Linear/Conv2d layer is routed to it");
      }
      const auto& kind = optim::optimizer_kind(name);
      return std::shared_ptr<torch::optim::Optimizer>(
          kind.make_for_layers(std::move(layers), *c.section(kind.name)));
    }
    Groups groups;
    groups.emplace_back(route.params);
    return std::shared_ptr<torch::optim::Optimizer>(
        make_optimizer(c, name, std::move(groups)));
  });
}

}  // namespace lowmem::train::detail
