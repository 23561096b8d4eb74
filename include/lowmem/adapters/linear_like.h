// Forwarding header (TRANSITIONAL): moved to lowmem/nn/linear.h (namespace
// lowmem::nn) when the nn layer was split out of adapters. Include that
// header and use nn:: names; this one is removed once no caller is left.
#pragma once

#include "lowmem/nn/linear.h"
