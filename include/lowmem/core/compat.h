// Internal: what differs between the LibTorch versions lowmem builds against
// (1.13 from Debian up to the 2.x of current CUDA wheels). Not public API.
#pragma once

#include <torch/version.h>

/// True when the LibTorch being compiled against is at least major.minor.
#define LOWMEM_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) ||         \
   (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))
