// Internal: bounded reading of outside files and JSON for the text layer
// (sizes checked before reading, nesting depth while parsing) and quoting of
// echoed values in errors. To be replaced by hostile's core/input.h and
// core/json.h once they land (coord/hostile.md).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace lowmem::text::detail {

struct JsonLimits {
  int64_t max_bytes = int64_t{16} << 20;
  int max_depth = 64;
};

/// Reads at most `max_bytes` bytes of `path` (checked before reading).
std::string read_file_bounded(const std::string& path, int64_t max_bytes,
                              const std::string& what = "file");

/// Parses `text` as JSON within `limits`; errors name `what`.
nlohmann::json parse_json(std::string_view text, const JsonLimits& limits,
                          const std::string& what);

/// `s` for an error message: at most `max_chars` bytes, cut at a UTF-8
/// boundary ("..." when cut), control characters escaped.
std::string quote_for_error(std::string_view s, size_t max_chars = 200);

}  // namespace lowmem::text::detail
