#include "lowmem/io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>

#include "lowmem/core/check.h"

namespace lowmem::io {
namespace {

std::string dir_of(const std::string& path) {
  auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string base_of(const std::string& path) {
  auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string temp_name(const std::string& path) {
  static std::atomic<unsigned> counter{0};
  std::ostringstream s;
  s << dir_of(path) << "/." << base_of(path) << ".tmp-" << ::getpid() << "-"
    << counter.fetch_add(1);
  return s.str();
}

std::string errno_text() { return std::strerror(errno); }

void fsync_path(const std::string& p, int flags, const std::string& what,
                const std::string& target) {
  int fd = ::open(p.c_str(), flags);
  LOWMEM_CHECK(fd >= 0, "[io] ", target, ": cannot open ", what, " '", p,
               "' to fsync: ", errno_text());
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  LOWMEM_CHECK(rc == 0, "[io] ", target, ": fsync of ", what, " failed: ",
               std::strerror(err));
}

}  // namespace

void atomic_write_file(const std::string& path,
                       const std::function<void(std::ostream&)>& writer) {
  LOWMEM_CHECK(!path.empty() && path.back() != '/',
               "[io] atomic_write_file needs a file path, got '", path, "'");
  const std::string tmp = temp_name(path);
  try {
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      LOWMEM_CHECK(out.is_open(), "[io] ", path, ": cannot create temporary '",
                   tmp, "': ", errno_text());
      writer(out);
      out.flush();
      LOWMEM_CHECK(out.good(), "[io] ", path, ": writing '", tmp,
                   "' failed (disk full?)");
      out.close();
      LOWMEM_CHECK(!out.fail(), "[io] ", path, ": closing '", tmp, "' failed");
    }
    fsync_path(tmp, O_WRONLY, "temporary file", path);
    LOWMEM_CHECK(::rename(tmp.c_str(), path.c_str()) == 0, "[io] ", path,
                 ": rename from '", tmp, "' failed: ", errno_text());
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
  // Make the rename itself durable.
  fsync_path(dir_of(path), O_RDONLY | O_DIRECTORY, "directory", path);
}

void atomic_write_file(const std::string& path, const std::string& bytes) {
  atomic_write_file(path, [&](std::ostream& out) {
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  });
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  LOWMEM_CHECK(in.is_open(), "[io] cannot open '", path, "': ", errno_text());
  std::string s((std::istreambuf_iterator<char>(in)),
                std::istreambuf_iterator<char>());
  LOWMEM_CHECK(!in.bad(), "[io] reading '", path, "' failed");
  return s;
}

}  // namespace lowmem::io
