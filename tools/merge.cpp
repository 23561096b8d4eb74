// `lowmem merge`: base model (a Hugging Face directory or a full run's
// checkpoint) + adapter directory -> merged model.
#include <iostream>

#include "command.h"
#include "lowmem/train/run.h"

namespace lowmem::tools {
namespace {

struct MergeArgs {
  std::string base, adapter, out;
};

const RegisterCommand kMerge{Command{
    "merge",
    "Fold an adapter (lowmem train --method lora|lotr|snell writes "
    "OUT_DIR/adapter) into its base checkpoint: writes OUT/model.safetensors "
    "and OUT/config.yaml",
    [](CLI::App& sub) -> std::function<int()> {
      auto a = std::make_shared<MergeArgs>();
      sub.add_option("--base", a->base,
                     "Base model: a Hugging Face directory (config.json + "
                     "safetensors) or a checkpoint (a checkpoints root or "
                     "step directory) of a full-model run")
          ->required();
      sub.add_option("--adapter", a->adapter,
                     "Adapter directory (adapter_model.safetensors + "
                     "adapter_config.json)")
          ->required()
          ->check(CLI::ExistingDirectory);
      sub.add_option("--out", a->out, "Output directory")->required();
      return [a] {
        const int64_t n = train::merge_adapter(a->base, a->adapter, a->out);
        std::cout << "merged " << a->adapter << " into " << a->base << ": "
                  << n << " tensors -> " << a->out << "/model.safetensors\n";
        return kExitOk;
      };
    }}};

}  // namespace
}  // namespace lowmem::tools
