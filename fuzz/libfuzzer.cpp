// libFuzzer entry for one target, chosen at build time (LOWMEM_FUZZ_TARGET,
// fuzz/CMakeLists.txt builds one program per target). A rejection whose
// message exceeds kMaxFuzzMessageBytes aborts, so libFuzzer records it.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>

#include <c10/util/Logging.h>

#include "targets.h"

// LibTorch 1.13 symbolizes a full C++ backtrace into every c10::Error it
// constructs (newer releases do it lazily). Rejecting hostile input is the
// readers' normal path, so that symbolization was most of each execution's
// time; the targets only read what_without_backtrace(), so the fuzz programs
// fetch none.
extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  c10::SetStackTraceFetcher(std::function<std::string()>([] {
    return std::string();
  }));
  return 0;
}

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
