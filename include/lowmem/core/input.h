// Limits for reading outside data (files, flags, environment): a bounded
// whole-file reader and a quoting helper for error messages. Every layer that
// reads a file it did not write goes through these (docs/reliability.md lists
// each input, its limit and its error).
//
// - read_file_limited() checks the size of a regular file against the limit
//   before reading it, and reads anything else (FIFOs, /dev/zero, /proc files)
//   in chunks that stop one byte past the limit, so no input makes it allocate
//   more than the limit.
// - quote() echoes at most kMaxQuotedBytes of a value, with "..." and the full
//   length when cut, control characters escaped, so an error message stays
//   one short line whatever the file holds (the issue behind this: a 20 MB
//   JSON value echoed whole into one stderr line).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace lowmem {

/// Most bytes of a value an error message echoes (about 200 characters).
inline constexpr size_t kMaxQuotedBytes = 200;

/// `value` cut to at most `max_bytes` bytes (at a UTF-8 character boundary)
/// followed by "..." when cut; newlines, tabs, other control bytes and DEL
/// written as \n, \t, \xNN. No quotation marks.
std::string clip(std::string_view value, size_t max_bytes = kMaxQuotedBytes);

/// The non-empty items of a `sep`-separated list ("a,,b" -> {"a", "b"}),
/// as written (no trimming): flags and keys such as targets=q_proj,v_proj.
std::vector<std::string> split_list(std::string_view list, char sep = ',');

/// clip() in single quotes; when cut, the full length follows:
/// 'abc...' (20000000 bytes).
std::string quote(std::string_view value, size_t max_bytes = kMaxQuotedBytes);

/// Reads the file at `path` whole. Throws c10::Error "<what> '<path>': ..."
/// when it cannot be opened, is a directory, or holds more than `max_bytes`
/// bytes (a regular file is checked by its size before any read; other files
/// are read until EOF or one byte past the limit). `what` names the input in
/// messages, e.g. "[checkpoint] manifest" or "[train] recipe".
std::string read_file_limited(const std::string& path, uint64_t max_bytes,
                              const std::string& what);

/// Like read_file_limited, but hands every chunk read (at most 64 KiB each,
/// in order) to `accept` before keeping it; when `accept` returns false the
/// read stops there and the function returns false (`out` then holds the
/// bytes before that chunk). Used to give up early on input that is already
/// known to be unusable (a NUL byte in a text corpus read from /dev/zero).
bool read_file_limited(const std::string& path, uint64_t max_bytes,
                       const std::string& what, std::string& out,
                       const std::function<bool(std::string_view)>& accept);

/// "2.0 MiB"-style size for limit messages (exact bytes below 1 KiB).
std::string format_limit(uint64_t bytes);

}  // namespace lowmem
