// The option sections moved to lowmem/core/fields.h (namespace lowmem) so the
// optimizer and adapter registries (optim/registry.h, adapters/registry.h)
// can describe their options with them. The train names stay valid.
#pragma once

#include "lowmem/core/fields.h"

namespace lowmem::train {
using lowmem::ConfigError;
using lowmem::Field;
using lowmem::format_float;
using lowmem::parse_bool;
using lowmem::parse_float;
using lowmem::parse_int;
using lowmem::Section;
namespace detail {
using lowmem::detail::add_field;
}  // namespace detail
}  // namespace lowmem::train
