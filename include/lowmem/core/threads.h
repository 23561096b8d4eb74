// Thread defaults: torch's intra-op pool sized to the machine's cores.
#pragma once

namespace lowmem {

/// Number of hardware cores (sched affinity aware), at least 1.
int hardware_cores();
/// Sets torch's intra-op threads to `n` (<= 0: hardware_cores()).
void set_default_threads(int n = 0);

}  // namespace lowmem
