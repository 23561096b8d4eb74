// Fuzz targets: one entry function per reader of outside data, shared by the
// libFuzzer programs (fuzz/libfuzzer.cpp, CMake option LOWMEM_FUZZ, built with
// clang, AddressSanitizer and UndefinedBehaviorSanitizer; scripts/fuzz.sh) and
// by the deterministic replay test of the default suite
// (tests/fuzz/replay_test.cpp: the checked-in seed corpus fuzz/corpus/<name>/
// plus thousands of mutated inputs, no libFuzzer, any compiler).
//
// A target feeds its input to the reader. The reader may reject it with one
// error (c10::Error or ConfigError): run_target returns that message, and
// both harnesses fail when it is longer than kMaxFuzzMessageBytes (a value
// echoed whole). Anything else (another exception, a crash, a sanitizer
// report, a hang) is a bug; a target that checks a property of what it read
// (config_json: write it back and read it again) throws std::logic_error when
// the property fails.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace lowmem::fuzz {

/// Longest error message a rejected input may produce.
inline constexpr size_t kMaxFuzzMessageBytes = 2000;

struct Target {
  const char* name;  // also the seed folder: fuzz/corpus/<name>/
  const char* help;
  std::function<void(const std::string& input)> run;
};

/// safetensors, manifest, adapter_config, tokenizer_json, gguf, recipe,
/// jsonl, chat_template, config_json, safetensors_index, idx (each with a seed
/// folder fuzz/corpus/<name>/).
const std::vector<Target>& targets();
/// The target called `name`, or nullptr.
const Target* find_target(std::string_view name);

/// Runs `t` on `input`: "" when accepted, else the error message of the
/// rejection (c10::Error without backtrace, or ConfigError). Other
/// exceptions propagate.
std::string run_target(const Target& t, const std::string& input);

}  // namespace lowmem::fuzz
