// Atomic file replacement: write to a temporary file in the target's directory,
// flush + fsync it, rename it over the target, then fsync the directory. A
// reader sees either the old file or the complete new one, never a torn write.
#pragma once

#include <functional>
#include <iosfwd>
#include <string>

namespace lowmem::io {

/// Writes `path` atomically. `writer` fills the stream; if it throws, or the
/// stream fails, or any system call fails, the temporary file is removed, the
/// previous `path` (if any) is left as it was, and a c10::Error naming the file
/// and the failing step is thrown. The parent directory must exist.
void atomic_write_file(const std::string& path,
                       const std::function<void(std::ostream&)>& writer);

/// Same, for an in-memory byte string.
void atomic_write_file(const std::string& path, const std::string& bytes);

/// Reads a whole file into a string (throws "[io] cannot open <path>: ..." ).
std::string read_file(const std::string& path);

}  // namespace lowmem::io
