// lowmem: the command line. A thin dispatcher over the subcommands that
// register themselves in command_registry() (train, info, merge, ...); all
// training logic lives in the library (lowmem/train/run.h).
#include <c10/util/Exception.h>

#include <algorithm>
#include <iostream>

#include "command.h"
#include "lowmem/core/input.h"
#include "lowmem/core/memory.h"
#include "lowmem/train/fields.h"

int main(int argc, char** argv) {
  using namespace lowmem::tools;
  lowmem::keep_freed_cpu_memory();  // reuse activation buffers (core/memory.h)
  program_args().assign(argv + 1, argv + argc);
  CLI::App app{"lowmem: memory-efficient training on LibTorch"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Help for every subcommand");
  auto& commands = command_registry();
  std::sort(commands.begin(), commands.end(),
            [](const Command& a, const Command& b) { return a.name < b.name; });
  std::vector<std::pair<CLI::App*, std::function<int()>>> subs;
  for (auto& c : commands) {
    CLI::App* sub = app.add_subcommand(c.name, c.help);
    subs.emplace_back(sub, c.setup(*sub));
  }
  // An unknown subcommand is named (CLI11 would only say that one is needed).
  if (argc > 1 && argv[1][0] != '-' &&
      std::none_of(commands.begin(), commands.end(),
                   [&](const Command& c) { return c.name == argv[1]; })) {
    std::string known;
    for (const auto& c : commands) {
      known += (known.empty() ? "" : ", ") + c.name;
    }
    print_error("unknown command " + lowmem::quote(argv[1]) +
                " (commands: " + known + ")");
    return kExitUsage;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    print_error(e.what());
    return kExitUsage;
  }
  try {
    for (auto& [sub, run] : subs) {
      if (sub->parsed()) {
        return run();
      }
    }
  } catch (const lowmem::train::ConfigError& e) {
    print_error(e.what());
    return kExitUsage;
  } catch (const c10::Error& e) {
    print_error(e.what_without_backtrace());
    return kExitFailure;
  } catch (const std::bad_alloc&) {
    print_error(
        "out of memory (std::bad_alloc); lower the sizes of the "
        "model, batch or data");
    return kExitFailure;
  } catch (const std::exception& e) {
    print_error(e.what());
    return kExitFailure;
  }
  return kExitUsage;
}
