// libFuzzer entry for one target, chosen at build time (LOWMEM_FUZZ_TARGET,
// fuzz/CMakeLists.txt builds one program per target). A rejection whose
// message exceeds kMaxFuzzMessageBytes aborts, so libFuzzer records it.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const lowmem::fuzz::Target* target =
      lowmem::fuzz::find_target(LOWMEM_FUZZ_TARGET);
  if (target == nullptr) {
    std::fprintf(stderr, "unknown fuzz target %s\n", LOWMEM_FUZZ_TARGET);
    std::abort();
  }
  const std::string input(reinterpret_cast<const char*>(data), size);
  const std::string msg = lowmem::fuzz::run_target(*target, input);
  if (msg.size() > lowmem::fuzz::kMaxFuzzMessageBytes) {
    std::fprintf(stderr, "error message of %zu bytes (limit %zu): %.300s...\n",
                 msg.size(), lowmem::fuzz::kMaxFuzzMessageBytes, msg.c_str());
    std::abort();
  }
  return 0;
}
