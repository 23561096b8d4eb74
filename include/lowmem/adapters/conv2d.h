// Forwarding header (TRANSITIONAL): moved to lowmem/nn/conv2d.h (namespace
// lowmem::nn) when the nn layer was split out of adapters. Include that
// header and use nn:: names; this one is removed once no caller is left.
#pragma once

#include "lowmem/nn/conv2d.h"

namespace lowmem::adapters {
using nn::Conv2d;
using nn::Conv2dOptions;
}  // namespace lowmem::adapters
