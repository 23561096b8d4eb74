// A user project: links lowmem::lowmem from the installed package.
#include <ATen/ATen.h>
#include <lowmem/core/memory.h>

#include <iostream>

int main() {
  lowmem::MemoryTracker tracker;
  int64_t before = tracker.current_bytes();
  at::Tensor t = at::empty({256}, at::kFloat);
  if (tracker.current_bytes() - before != 1024) return 1;
  std::cout << "consumer ok" << std::endl;
  return 0;
}
