// Forwarding header (TRANSITIONAL): ProjectedLinear moved to
// lowmem/projection/projected_linear.h (namespace lowmem::projection), so that
// optim's adapter-form driver needs no adapters header. Include that header;
// this one is removed once no caller is left.
#pragma once

#include "lowmem/projection/projected_linear.h"

namespace lowmem::adapters {
using projection::inject_projected;
using projection::ProjectedLinear;
}  // namespace lowmem::adapters
