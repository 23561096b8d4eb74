// `lowmem export`: a trained model (run directory, checkpoint or merge
// output) as a Hugging Face directory, a PEFT adapter or a GGUF file
// (lowmem/train/export.h).
#include "lowmem/train/export.h"

#include <iostream>

#include "command.h"

namespace lowmem::tools {
namespace {

struct ExportArgs {
  std::string source, out, format = "hf", dtype = "auto",
                           max_shard_size = "5GB", type = "f16", tokenizer,
                           base_model;
  bool overwrite = false;
};

const RegisterCommand kExport{Command{
    "export",
    "Write a trained Llama-family model (a training run directory, a "
    "checkpoint or a lowmem merge output) as a Hugging Face directory "
    "(--format hf, adapters merged), a PEFT adapter (--format peft) or a "
    "GGUF file for llama.cpp (--format gguf)",
    [](CLI::App& sub) -> std::function<int()> {
      auto a = std::make_shared<ExportArgs>();
      sub.add_option("source", a->source,
                     "Training run directory (out_dir), checkpoint, or "
                     "lowmem merge output")
          ->required();
      sub.add_option("--out", a->out,
                     "Output: a directory (hf, peft) or a .gguf file")
          ->required();
      sub.add_option("--format", a->format, "hf | peft | gguf")
          ->capture_default_str();
      sub.add_option("--dtype", a->dtype,
                     "hf, peft: auto | float32 | float16 | bfloat16 (auto: "
                     "the source directory's torch_dtype / the adapter's)")
          ->capture_default_str();
      sub.add_option("--max-shard-size", a->max_shard_size,
                     "hf: largest weight file (5GB, 500MB, 2GiB, bytes)")
          ->capture_default_str();
      sub.add_option("--type", a->type, "gguf: f32 | f16 | bf16 | q8_0")
          ->capture_default_str();
      sub.add_option("--tokenizer", a->tokenizer,
                     "Tokenizer folder or file (default: the run's Hugging "
                     "Face directory, else jsonl.tokenizer)");
      sub.add_option("--base-model", a->base_model,
                     "peft: base_model_name_or_path (default: hf.path)");
      sub.add_flag("--overwrite", a->overwrite, "Replace an existing output");
      return [a] {
        const auto r =
            train::export_model(a->source, a->out,
                                train::ExportOptions()
                                    .format(a->format)
                                    .dtype(a->dtype)
                                    .max_shard_size(a->max_shard_size)
                                    .type(a->type)
                                    .tokenizer(a->tokenizer)
                                    .base_model(a->base_model)
                                    .overwrite(a->overwrite));
        std::cout << "exported " << r.weights << " as " << a->format << " -> "
                  << r.out << "\n";
        for (const auto& f : r.files) std::cout << "  " << f << "\n";
        return kExitOk;
      };
    }}};

}  // namespace
}  // namespace lowmem::tools
