#include "lowmem/core/threads.h"

#include <ATen/Parallel.h>
#include <sched.h>

#include <thread>

namespace lowmem {

int hardware_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  unsigned h = std::thread::hardware_concurrency();
  return h > 0 ? static_cast<int>(h) : 1;
}

void set_default_threads(int n) {
  at::set_num_threads(n > 0 ? n : hardware_cores());
}

}  // namespace lowmem
