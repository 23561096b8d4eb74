// Internal: the text layer reads outside files and JSON through core's
// bounded readers (core/input.h read_file_limited, core/json.h parse_json:
// size checked before reading, nesting depth before parsing) and quotes
// echoed values in errors with core's clip().
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "lowmem/core/input.h"
#include "lowmem/core/json.h"

namespace lowmem::text::detail {

/// `s` for an error message: at most `max_chars` bytes, cut at a UTF-8
/// boundary ("..." when cut), control characters escaped.
std::string quote_for_error(std::string_view s, size_t max_chars = 200);

}  // namespace lowmem::text::detail
