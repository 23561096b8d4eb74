// Error conventions: library code throws c10::Error through TORCH_CHECK with a
// message tagged by component and naming the bad value; it never prints or
// exits. Only tools/ catches and maps errors to exit codes.
#pragma once

#include <c10/util/Exception.h>

/// LOWMEM_CHECK(cond, "[came] lr must be >= 0, got ", lr) — throws c10::Error.
#define LOWMEM_CHECK(cond, ...) TORCH_CHECK(cond, __VA_ARGS__)
