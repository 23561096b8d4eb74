#include "bounded.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "lowmem/core/check.h"
#include "lowmem/core/input.h"

namespace lowmem::text::detail {

std::string read_file_bounded(const std::string& path, int64_t max_bytes,
                              const std::string& what) {
  struct stat st {};
  LOWMEM_CHECK(::stat(path.c_str(), &st) == 0, "[text] cannot open ", what,
               " '", quote_for_error(path), "': ", std::strerror(errno));
  LOWMEM_CHECK(S_ISREG(st.st_mode), "[text] ", what, " '",
               quote_for_error(path), "' is not a regular file");
  LOWMEM_CHECK(static_cast<int64_t>(st.st_size) <= max_bytes, "[text] ", what,
               " '", quote_for_error(path), "' is ", st.st_size,
               " bytes, over the limit of ", max_bytes);
  std::ifstream in(path, std::ios::binary);
  LOWMEM_CHECK(in.is_open(), "[text] cannot open ", what, " '",
               quote_for_error(path), "': ", std::strerror(errno));
  std::string s;
  s.resize(static_cast<size_t>(st.st_size));
  in.read(s.data(), static_cast<std::streamsize>(s.size()));
  LOWMEM_CHECK(in.gcount() == static_cast<std::streamsize>(s.size()), "[text] ",
               what, " '", quote_for_error(path), "' changed while read");
  // The file may have grown since stat(): never read past the limit.
  LOWMEM_CHECK(in.peek() == std::char_traits<char>::eof(), "[text] ", what,
               " '", quote_for_error(path), "' grew past ", s.size(),
               " bytes while read");
  return s;
}

nlohmann::json parse_json(std::string_view text, const JsonLimits& limits,
                          const std::string& what) {
  LOWMEM_CHECK(static_cast<int64_t>(text.size()) <= limits.max_bytes, "[text] ",
               what, " is ", text.size(), " bytes, over the limit of ",
               limits.max_bytes);
  const int max_depth = limits.max_depth;
  bool too_deep = false;
  nlohmann::json::parser_callback_t cb =
      [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json&) {
        if ((event == nlohmann::json::parse_event_t::object_start ||
             event == nlohmann::json::parse_event_t::array_start) &&
            depth >= max_depth) {
          too_deep = true;
          throw std::runtime_error("depth");
        }
        return true;
      };
  try {
    return nlohmann::json::parse(text.begin(), text.end(), cb);
  } catch (const nlohmann::json::parse_error& e) {
    LOWMEM_CHECK(false, "[text] ", what, " is not valid JSON: ", e.what());
  } catch (const std::runtime_error&) {
    LOWMEM_CHECK(!too_deep, "[text] ", what,
                 " nests arrays/objects deeper than ", max_depth, " levels");
    throw;
  }
  return {};
}

std::string quote_for_error(std::string_view s, size_t max_chars) {
  return clip(s, max_chars);
}

}  // namespace lowmem::text::detail
