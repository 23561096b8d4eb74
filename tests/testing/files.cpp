#include "testing/files.h"

#include <unistd.h>

#include <fstream>
#include <sstream>

namespace lowmem::testing {

std::filesystem::path fresh_temp_dir(const std::string& name) {
  namespace fs = std::filesystem;
  fs::path d = fs::temp_directory_path() /
               ("lowmem_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string write_corpus(const std::filesystem::path& dir) {
  const std::filesystem::path p = dir / "corpus.txt";
  std::ofstream f(p);
  for (int i = 0; i < 400; ++i) {
    f << "line " << i << ": the quick brown fox jumps over the lazy dog "
      << (i * 7919) % 1000 << "\n";
  }
  return p.string();
}

}  // namespace lowmem::testing
