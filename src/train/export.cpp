#include "lowmem/train/export.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>

#include "components.h"
#include "lowmem/adapters/inject.h"
#include "lowmem/core/check.h"
#include "lowmem/core/input.h"
#include "lowmem/interop/gguf.h"
#include "lowmem/interop/hf_checkpoint.h"
#include "lowmem/interop/hf_config.h"
#include "lowmem/interop/peft.h"
#include "lowmem/io/checkpoint.h"
#include "lowmem/io/gguf.h"
#include "lowmem/models/llama.h"
#include "lowmem/text/tokenizer.h"
#include "lowmem/train/run.h"

namespace lowmem::train {
namespace {

namespace fs = std::filesystem;

// What save_pretrained / a tokenizer's save_pretrained put next to the
// weights; copied when present.
const char* const kTokenizerFiles[] = {"tokenizer.json",
                                       "tokenizer_config.json",
                                       "special_tokens_map.json",
                                       "tokenizer.model",
                                       "vocab.json",
                                       "merges.txt",
                                       "added_tokens.json",
                                       "generation_config.json",
                                       "chat_template.jinja"};

template <class F>
auto as_usage(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const c10::Error& e) {
    throw ConfigError(e.what_without_backtrace());
  }
}

// The run's configuration and its weights file (or checkpoint directory).
std::pair<Config, std::string> locate_run(const std::string& source) {
  if (!fs::is_directory(source)) {
    throw ConfigError("export source " + quote(source) +
                      " is not a directory (a training run, a checkpoint or "
                      "a lowmem merge output)");
  }
  const std::string root = source + "/checkpoints";
  std::string ckpt;
  if (io::has_checkpoint(root)) {
    ckpt = io::resolve_checkpoint(root);
  } else if (io::has_checkpoint(source)) {
    ckpt = io::resolve_checkpoint(source);
  }
  Config c;
  if (!ckpt.empty()) {
    c.apply_yaml_file(ckpt + "/info.txt");
    return {c, ckpt};
  }
  if (fs::is_regular_file(source + "/config.yaml") &&
      fs::is_regular_file(source + "/model.safetensors")) {
    c.apply_yaml_file(source + "/config.yaml");
    return {c, source + "/model.safetensors"};
  }
  throw ConfigError("export source " + quote(source) +
                    " holds no checkpoint (checkpoints/, manifest.json or "
                    "LATEST) and no merged model (config.yaml + "
                    "model.safetensors)");
}

// A tokenizer path of the run: the option, else the Hugging Face directory,
// else jsonl.tokenizer; "" if none.
std::string tokenizer_source(Config& c, const ExportOptions& o) {
  if (!o.tokenizer().empty()) return o.tokenizer();
  if (c.model == "hf") {
    const std::string dir = c.get("hf.path");
    for (const char* f : {"tokenizer.json", "tokenizer.model"}) {
      if (fs::is_regular_file(dir + "/" + f)) return dir;
    }
  }
  if (c.data == "jsonl") return c.get("jsonl.tokenizer");
  return "";
}

c10::optional<c10::ScalarType> export_dtype(const std::string& name) {
  if (name == "auto") return c10::nullopt;
  return as_usage([&] { return interop::hf_dtype_from_name(name); });
}

// Renames the finished temporary `tmp` to `out`; an existing `out` (only
// with overwrite) is moved aside first and removed once `out` is in place.
void publish(const fs::path& tmp, const fs::path& out) {
  if (!fs::exists(out)) {
    fs::rename(tmp, out);
    return;
  }
  fs::path old = out;
  old += ".old-export-" + std::to_string(::getpid());
  fs::rename(out, old);
  fs::rename(tmp, out);
  std::error_code ec;
  fs::remove_all(old, ec);
}

std::vector<std::string> list_files(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    out.push_back(e.path().filename().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

void copy_tokenizer_files(const std::string& from, const fs::path& dir) {
  const fs::path src =
      fs::is_directory(from) ? fs::path(from) : fs::path(from).parent_path();
  for (const char* f : kTokenizerFiles) {
    if (fs::is_regular_file(src / f)) fs::copy_file(src / f, dir / f);
  }
}

void write_hf(TrainedModel& t, models::Llama& llama, const fs::path& dir,
              const ExportOptions& o) {
  auto dtype = export_dtype(o.dtype());
  interop::HfConfig hc;
  if (t.config.model == "hf") {
    hc = interop::read_hf_config(t.config.get("hf.path"));
    if (!dtype) dtype = hc.torch_dtype;
    hc.llama = llama.config();
  } else {
    hc = as_usage([&] { return interop::hf_config_for(llama.config()); });
  }
  interop::save_hf_checkpoint(
      llama, hc, dir.string(),
      interop::HfSaveOptions()
          .max_shard_size(parse_shard_size(o.max_shard_size()))
          .dtype(dtype));
  const std::string tok = tokenizer_source(t.config, o);
  if (!tok.empty()) copy_tokenizer_files(tok, dir);
}

void write_gguf(TrainedModel& t, models::Llama& llama, const fs::path& path,
                const ExportOptions& o) {
  const io::GgmlType type =
      as_usage([&] { return io::ggml_type_from_name(o.type()); });
  const std::string tok = tokenizer_source(t.config, o);
  if (tok.empty()) {
    throw ConfigError(
        "--format gguf needs a tokenizer: the run's Hugging Face directory "
        "has no tokenizer.json; name one with --tokenizer");
  }
  const auto tokenizer = text::Tokenizer::from_file(tok);
  std::string name = "lowmem";
  if (t.config.model == "hf") {
    name = fs::path(t.config.get("hf.path"))
               .lexically_normal()
               .filename()
               .string();
    if (name.empty()) name = "lowmem";
  }
  interop::export_gguf(
      path.string(), llama, tokenizer,
      interop::GgufExportOptions().type(type).name(name + "-lowmem"));
}

}  // namespace

TrainedModel load_trained_model(const std::string& source) {
  auto [c, weights] = locate_run(source);
  if (c.method == "projected-adapter") {
    throw ConfigError(
        "export of a projected-adapter run is not supported (its "
        "projections are not rebuilt from a checkpoint)");
  }
  c.device = "cpu";
  c.init = "";
  c.init_exclude = "";
  c.out_dir = "";
  c.resume = "";
  c.metrics = "";
  TrainedModel t;
  t.model = build_model(c);
  t.adapter = detail::apply_method(c, t.model).adapter;
  load_weights(*t.model, weights);
  t.config = c;
  t.weights = weights;
  return t;
}

int64_t parse_shard_size(const std::string& text) {
  size_t pos = 0;
  while (pos < text.size() &&
         (std::isdigit(static_cast<unsigned char>(text[pos])) ||
          text[pos] == '.')) {
    ++pos;
  }
  std::string unit = text.substr(pos);
  std::transform(unit.begin(), unit.end(), unit.begin(),
                 [](unsigned char ch) { return std::toupper(ch); });
  static const std::pair<const char*, double> kUnits[] = {
      {"", 1.0},       {"B", 1.0},         {"KB", 1e3},
      {"MB", 1e6},     {"GB", 1e9},        {"TB", 1e12},
      {"KIB", 1024.0}, {"MIB", 1048576.0}, {"GIB", 1073741824.0}};
  double scale = 0.0;
  for (const auto& [u, s] : kUnits) {
    if (unit == u) scale = s;
  }
  double value = 0.0;
  try {
    value = pos > 0 ? std::stod(text.substr(0, pos)) : 0.0;
  } catch (const std::exception&) {
    value = 0.0;
  }
  const double bytes = std::floor(value * scale);
  if (pos == 0 || scale == 0.0 || !(bytes >= 1.0) || bytes > 9.0e18) {
    throw ConfigError(
        "--max-shard-size must be a size such as 5GB, 500MB, "
        "2GiB or a byte count, got " +
        quote(text));
  }
  return static_cast<int64_t>(bytes);
}

ExportResult export_model(const std::string& source, const std::string& out,
                          const ExportOptions& o) {
  const std::string& f = o.format();
  if (f != "hf" && f != "peft" && f != "gguf") {
    throw ConfigError("--format must be hf, peft or gguf, got " + quote(f));
  }
  if (out.empty()) throw ConfigError("--out is empty");
  export_dtype(o.dtype());  // usage errors before any work
  parse_shard_size(o.max_shard_size());
  as_usage([&] { return io::ggml_type_from_name(o.type()); });
  const fs::path dest = fs::path(out).lexically_normal();
  if (fs::exists(dest) && !o.overwrite()) {
    throw ConfigError("the output " + quote(out) +
                      " exists; pass --overwrite to replace it");
  }
  if (fs::exists(dest) && fs::is_directory(dest) != (f != "gguf")) {
    throw ConfigError("the output " + quote(out) + " is a " +
                      (f == "gguf" ? "directory" : "file") + "; --format " + f +
                      " writes a " + (f == "gguf" ? "file" : "directory"));
  }
  TrainedModel t = load_trained_model(source);
  auto* llama = dynamic_cast<models::Llama*>(t.model.get());
  if (llama == nullptr) {
    throw ConfigError(
        "export needs a Llama-family model (model hf or "
        "llama); this run's model is " +
        quote(t.config.model));
  }
  if (f == "peft" && !t.adapter) {
    throw ConfigError(
        "--format peft needs a run with adapters (method lora, "
        "lotr or snell); this run's method is " +
        quote(t.config.method) + " (use --format hf)");
  }
  ExportResult r;
  r.out = out;
  r.weights = t.weights;
  if (dest.has_parent_path()) fs::create_directories(dest.parent_path());
  fs::path tmp = dest;
  tmp += ".tmp-export-" + std::to_string(::getpid());
  try {
    if (f == "peft") {
      const std::string base = !o.base_model().empty() ? o.base_model()
                               : t.config.model == "hf"
                                   ? t.config.get("hf.path")
                                   : std::string();
      interop::save_peft_adapter(*t.adapter, tmp.string(), base,
                                 export_dtype(o.dtype()));
    } else {
      if (t.adapter) t.adapter->merge_and_unload();
      if (f == "hf") write_hf(t, *llama, tmp, o);
      if (f == "gguf") write_gguf(t, *llama, tmp, o);
    }
    r.files = f == "gguf" ? std::vector<std::string>{dest.filename().string()}
                          : list_files(tmp);
    publish(tmp, dest);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  return r;
}

}  // namespace lowmem::train
