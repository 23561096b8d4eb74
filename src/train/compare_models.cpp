// The model-based suites of `lowmem compare`: pretrain (GPT from scratch on
// text) and finetune (ViT on Fashion-MNIST from a cached base model).
#include <filesystem>

#include "compare_internal.h"

namespace lowmem::train::compare::detail {

void add_model_suites(std::vector<Suite>& s) {
  for (const char* name : {"pretrain", "finetune"}) {
    Suite t;
    t.name = name;
    t.metric = std::string(name) == "pretrain" ? "val_loss" : "val_accuracy";
    t.unavailable = [](const CompareOptions&) {
      return std::string("lowmem::models (GPT, ViT) is not in this build yet");
    };
    s.push_back(t);
  }
}

}  // namespace lowmem::train::compare::detail
