#include "lowmem/core/input.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "lowmem/core/check.h"

namespace lowmem {
namespace {

// Start of the UTF-8 character holding byte `i` (continuation bytes are
// 10xxxxxx); `i` itself when it starts one.
size_t char_start(std::string_view s, size_t i) {
  size_t back = 0;
  while (i > 0 && back < 3 &&
         (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) {
    --i;
    ++back;
  }
  return i;
}

void append_escaped(std::string& out, std::string_view s) {
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02X", c);
      out += buf;
    } else {
      out += ch;
    }
  }
}

// Closes a file descriptor on scope exit.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) {
      ::close(fd);
    }
  }
};

}  // namespace

std::string clip(std::string_view value, size_t max_bytes) {
  std::string out;
  if (value.size() <= max_bytes) {
    append_escaped(out, value);
    return out;
  }
  append_escaped(out, value.substr(0, char_start(value, max_bytes)));
  out += "...";
  return out;
}

std::vector<std::string> split_list(std::string_view list, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= list.size()) {
    size_t end = list.find(sep, start);
    if (end == std::string_view::npos) end = list.size();
    if (end > start) out.emplace_back(list.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

std::string quote(std::string_view value, size_t max_bytes) {
  std::string out = "'" + clip(value, max_bytes) + "'";
  if (value.size() > max_bytes) {
    out += " (" + std::to_string(value.size()) + " bytes)";
  }
  return out;
}

std::string format_limit(uint64_t bytes) {
  const char* units[] = {"KiB", "MiB", "GiB", "TiB"};
  if (bytes < 1024) {
    return std::to_string(bytes) + " bytes";
  }
  double v = static_cast<double>(bytes) / 1024.0;
  int u = 0;
  while (v >= 1024.0 && u < 3) {
    v /= 1024.0;
    ++u;
  }
  char buf[48];
  std::snprintf(buf, sizeof(buf), "%.*f %s",
                v == static_cast<int64_t>(v) ? 0 : 1, v, units[u]);
  return buf;
}

bool read_file_limited(const std::string& path, uint64_t max_bytes,
                       const std::string& what, std::string& out,
                       const std::function<bool(std::string_view)>& accept) {
  out.clear();
  const std::string where = what + " " + quote(path);
  Fd f;
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  LOWMEM_CHECK(f.fd >= 0, where, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  LOWMEM_CHECK(::fstat(f.fd, &st) == 0, where,
               ": cannot stat: ", std::strerror(errno));
  LOWMEM_CHECK(!S_ISDIR(st.st_mode), where, " is a directory, not a file");
  const std::string limit_text = "the limit of " + std::to_string(max_bytes) +
                                 " bytes (" + format_limit(max_bytes) + ")";
  if (S_ISREG(st.st_mode)) {
    LOWMEM_CHECK(static_cast<uint64_t>(st.st_size) <= max_bytes, where,
                 ": its ", static_cast<uint64_t>(st.st_size), " bytes exceed ",
                 limit_text);
    out.reserve(static_cast<size_t>(st.st_size));
  }
  // Regular files may still grow while being read; every kind of file is
  // read in chunks that stop one byte past the limit.
  constexpr size_t kChunk = 64 * 1024;
  char buf[kChunk];
  while (true) {
    const uint64_t room = max_bytes - out.size() + 1;
    const size_t want = room < kChunk ? static_cast<size_t>(room) : kChunk;
    const ssize_t n = ::read(f.fd, buf, want);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    LOWMEM_CHECK(n >= 0, where, ": read failed: ", std::strerror(errno));
    if (n == 0) {
      return true;
    }
    LOWMEM_CHECK(out.size() + static_cast<size_t>(n) <= max_bytes, where,
                 ": more than ", limit_text, " (read stopped there)");
    const std::string_view chunk(buf, static_cast<size_t>(n));
    if (accept && !accept(chunk)) {
      return false;
    }
    out.append(chunk.data(), chunk.size());
  }
}

std::string read_file_limited(const std::string& path, uint64_t max_bytes,
                              const std::string& what) {
  std::string out;
  read_file_limited(path, max_bytes, what, out, {});
  return out;
}

}  // namespace lowmem
