// JSON from outside data, with limits enforced before parsing: a maximum size
// and a maximum nesting depth (checked by a linear pre-scan, so no file can
// drive a recursion: nlohmann's parser keeps its own stack, but copying,
// comparing and dump() of a value recurse once per nesting level, and a few
// hundred thousand '[' overflowed the stack in dump() while an error message
// was being formatted). Values echoed in messages go through clip_json(),
// which does bounded work on any value.
//
// Limits follow the references: serde_json (serde-rs/json, src/de.rs,
// `remaining_depth: 128`), the JSON parser of huggingface/safetensors and
// huggingface/tokenizers, refuses more than 128 nested levels; so do we.
// nlohmann-json 3.11 (Debian nlohmann-json3-dev) parses.
#pragma once

#include <climits>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "lowmem/core/input.h"

namespace lowmem {

/// Deepest nesting accepted (serde_json's recursion limit).
inline constexpr int kMaxJsonDepth = 128;
/// Default size limit of a JSON document (configs, manifests, adapter and
/// model configs); readers of larger documents (tokenizer.json) pass theirs.
inline constexpr uint64_t kMaxJsonBytes = 16ull << 20;

struct JsonLimits {
  uint64_t max_bytes = kMaxJsonBytes;
  int max_depth = kMaxJsonDepth;
  /// Reject an object that repeats a key (at any depth). nlohmann, like
  /// Python's json, would keep the last one silently.
  bool reject_duplicate_keys = false;
};

/// The deepest nesting of arrays and objects in `text` (string contents
/// skipped), scanning linearly and stopping as soon as the depth exceeds
/// `stop_above`; `*offset` (if given) receives the byte offset where the
/// returned depth was first reached. For a valid JSON prefix this is exactly
/// the parser's nesting, so it bounds what the parser would build.
int json_nesting_depth(std::string_view text, int stop_above = INT_MAX,
                       size_t* offset = nullptr);

/// Parses `text` (named `source` in errors) after checking its size and
/// depth against `limits`. Throws c10::Error "[json] <source>: ..." naming
/// the limit exceeded or the syntax error (its text clipped).
nlohmann::json parse_json(std::string_view text, const std::string& source,
                          const JsonLimits& limits = {});

/// read_file_limited(path, limits.max_bytes) + parse_json.
nlohmann::json read_json_file(const std::string& path,
                              const JsonLimits& limits = {});

/// At most `max_bytes` of `value` as compact JSON, with "..." when cut. The
/// work is bounded whatever the value's size or depth (nesting deeper than 16
/// levels is written as [...] / {...}).
std::string clip_json(const nlohmann::json& value,
                      size_t max_bytes = kMaxQuotedBytes);

// Typed optional members of a JSON object from outside data. nlohmann's
// `value(key, fallback)` throws its own json::type_error when the member has
// another type (or the value is not an object), which a reader must not leak:
// these throw c10::Error "<where>: \"key\" must be a <kind>, got <clipped
// value>" instead. An absent or null member gives `fallback`.

/// The member `key` of `object` (nullptr when absent or null); throws naming
/// `where` when `object` is not an object.
const nlohmann::json* json_member(const nlohmann::json& object, const char* key,
                                  std::string_view where);
bool json_bool_or(const nlohmann::json& object, const char* key, bool fallback,
                  std::string_view where);
std::string json_string_or(const nlohmann::json& object, const char* key,
                           std::string_view fallback, std::string_view where);
/// An integer member (a float with an integral value is not accepted).
int64_t json_int_or(const nlohmann::json& object, const char* key,
                    int64_t fallback, std::string_view where);
/// Any member, or null when absent.
nlohmann::json json_any_or_null(const nlohmann::json& object, const char* key,
                                std::string_view where);

}  // namespace lowmem
