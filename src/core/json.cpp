#include "lowmem/core/json.h"

#include <set>
#include <vector>

#include "lowmem/core/check.h"

namespace lowmem {
namespace {

using json = nlohmann::json;

constexpr int kClipDepth = 16;

void clip_into(const json& v, std::string& out, size_t budget, int depth) {
  if (out.size() > budget) {
    return;
  }
  switch (v.type()) {
    case json::value_t::object: {
      if (depth >= kClipDepth) {
        out += v.empty() ? "{}" : "{...}";
        return;
      }
      out += '{';
      bool first = true;
      for (auto it = v.begin(); it != v.end(); ++it) {
        if (out.size() > budget) {
          return;
        }
        if (!first) {
          out += ',';
        }
        first = false;
        out += json(it.key().substr(0, budget))
                   .dump(-1, ' ', false, json::error_handler_t::replace);
        out += ':';
        clip_into(*it, out, budget, depth + 1);
      }
      out += '}';
      return;
    }
    case json::value_t::array: {
      if (depth >= kClipDepth) {
        out += v.empty() ? "[]" : "[...]";
        return;
      }
      out += '[';
      bool first = true;
      for (const auto& x : v) {
        if (out.size() > budget) {
          return;
        }
        if (!first) {
          out += ',';
        }
        first = false;
        clip_into(x, out, budget, depth + 1);
      }
      out += ']';
      return;
    }
    case json::value_t::string: {
      const auto& s = v.get_ref<const std::string&>();
      out += json(s.substr(0, budget))
                 .dump(-1, ' ', false, json::error_handler_t::replace);
      return;
    }
    case json::value_t::binary:
      out += "<binary>";
      return;
    default:
      // Numbers, booleans, null: short, no recursion.
      out += v.dump();
      return;
  }
}

}  // namespace

int json_nesting_depth(std::string_view text, int stop_above, size_t* offset) {
  int depth = 0;
  int deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;  // skip the escaped character (\" in particular)
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > deepest) {
        deepest = depth;
        if (offset != nullptr) {
          *offset = i;
        }
        if (deepest > stop_above) {
          return deepest;
        }
      }
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

json parse_json(std::string_view text, const std::string& source,
                const JsonLimits& limits) {
  const std::string where = "[json] " + quote(source);
  LOWMEM_CHECK(text.size() <= limits.max_bytes, where, ": ", text.size(),
               " bytes exceed the limit of ", limits.max_bytes, " bytes (",
               format_limit(limits.max_bytes), ")");
  size_t at = 0;
  const int depth = json_nesting_depth(text, limits.max_depth, &at);
  LOWMEM_CHECK(depth <= limits.max_depth, where,
               ": nesting deeper than the limit of ", limits.max_depth,
               " levels (at byte ", at, ")");
  try {
    if (!limits.reject_duplicate_keys) {
      return json::parse(text.begin(), text.end());
    }
    // One key set per open object; the first repeated key is reported.
    std::vector<std::set<std::string>> keys;
    std::string duplicate;
    json::parser_callback_t cb = [&](int, json::parse_event_t ev, json& v) {
      switch (ev) {
        case json::parse_event_t::object_start:
          keys.emplace_back();
          break;
        case json::parse_event_t::object_end:
          if (!keys.empty()) {
            keys.pop_back();
          }
          break;
        case json::parse_event_t::key:
          if (!keys.empty() &&
              !keys.back().insert(v.get<std::string>()).second &&
              duplicate.empty()) {
            duplicate = v.get<std::string>();
          }
          break;
        default:
          break;
      }
      return true;
    };
    json j = json::parse(text.begin(), text.end(), cb);
    LOWMEM_CHECK(duplicate.empty(), where, ": duplicate key ",
                 quote(duplicate));
    return j;
  } catch (const json::exception& e) {
    // nlohmann echoes the last token read, which a file controls: clip it.
    LOWMEM_CHECK(false, where, ": invalid JSON: ", clip(e.what()));
  }
  return {};
}

json read_json_file(const std::string& path, const JsonLimits& limits) {
  const std::string text =
      read_file_limited(path, limits.max_bytes, "[json] file");
  return parse_json(text, path, limits);
}

std::string clip_json(const json& value, size_t max_bytes) {
  std::string out;
  clip_into(value, out, max_bytes, 0);
  if (out.size() <= max_bytes) {
    return out;
  }
  // Cut at a character boundary (dump() wrote valid UTF-8).
  size_t cut = max_bytes;
  while (cut > 0 && (static_cast<unsigned char>(out[cut]) & 0xC0) == 0x80) {
    --cut;
  }
  out.resize(cut);
  return out + "...";
}

const json* json_member(const json& object, const char* key,
                        std::string_view where) {
  LOWMEM_CHECK(object.is_object(), where, ": expected a JSON object, got ",
               clip_json(object));
  auto it = object.find(key);
  return it == object.end() || it->is_null() ? nullptr : &*it;
}

namespace {

// Always throws (callers' following get<>() is never reached).
void wrong_type(std::string_view where, const char* key, const char* kind,
                const json& value) {
  LOWMEM_CHECK(false, where, ": \"", key, "\" must be ", kind, ", got ",
               clip_json(value));
}

}  // namespace

bool json_bool_or(const json& object, const char* key, bool fallback,
                  std::string_view where) {
  const json* v = json_member(object, key, where);
  if (v == nullptr) return fallback;
  if (!v->is_boolean()) wrong_type(where, key, "a boolean", *v);
  return v->get<bool>();
}

std::string json_string_or(const json& object, const char* key,
                           std::string_view fallback, std::string_view where) {
  const json* v = json_member(object, key, where);
  if (v == nullptr) return std::string(fallback);
  if (!v->is_string()) wrong_type(where, key, "a string", *v);
  return v->get<std::string>();
}

int64_t json_int_or(const json& object, const char* key, int64_t fallback,
                    std::string_view where) {
  const json* v = json_member(object, key, where);
  if (v == nullptr) return fallback;
  if (!v->is_number_integer()) wrong_type(where, key, "an integer", *v);
  if (v->is_number_unsigned() &&
      v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
    wrong_type(where, key, "an integer below 2^63", *v);
  }
  return v->get<int64_t>();
}

json json_any_or_null(const json& object, const char* key,
                      std::string_view where) {
  const json* v = json_member(object, key, where);
  return v == nullptr ? json() : *v;
}

}  // namespace lowmem
