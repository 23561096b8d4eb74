// Subcommand registry of the `lowmem` program. Each tools/<name>.cpp registers
// itself with a static RegisterCommand, so adding a subcommand (e.g.
// `lowmem compare`) never touches main.cpp.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

#include "lowmem/train/config.h"

namespace lowmem::tools {

/// Exit codes: 0 ok, 1 failure (library error), 2 usage error.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;
/// Longest error line printed (library messages clip each value to about 200
/// bytes; this bounds the whole line).
inline constexpr size_t kMaxErrorLineBytes = 2000;

struct Command {
  std::string name;
  std::string help;
  /// Adds options to `sub`; returns what runs after a successful parse.
  std::function<std::function<int()>(CLI::App& sub)> setup;
};

std::vector<Command>& command_registry();

struct RegisterCommand {
  explicit RegisterCommand(Command c) {
    command_registry().push_back(std::move(c));
  }
};

/// Config flags for `sub`: --recipe FILE plus one --<key> per configuration
/// key (top-level keys also as --kebab-case), grouped by section, defaults in
/// the help text. resolve() applies the recipe, then the flags given.
class ConfigFlags {
 public:
  explicit ConfigFlags(CLI::App& sub);
  /// Defaults <- recipe <- flags, validated. Throws train::ConfigError.
  train::Config resolve() const;

 private:
  struct Flag {
    std::string key;
    CLI::Option* option;
    std::string value;
    bool is_bool = false;
  };
  std::string recipe_;
  std::vector<std::unique_ptr<Flag>> flags_;
};

/// The command line as main() received it (argv[1..]); re-launching workers
/// (`lowmem train --nproc-per-node N`) passes it on.
std::vector<std::string>& program_args();

/// "lowmem: error: ..." on stderr (first line of `what`).
void print_error(const std::string& what);

}  // namespace lowmem::tools
