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

}  // namespace lowmem::testing
