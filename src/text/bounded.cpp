#include "bounded.h"

#include "lowmem/core/input.h"

namespace lowmem::text::detail {

std::string quote_for_error(std::string_view s, size_t max_chars) {
  return clip(s, max_chars);
}

}  // namespace lowmem::text::detail
