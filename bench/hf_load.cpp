// Peak resident memory while loading a Hugging Face checkpoint
// (interop/hf_checkpoint.h), against the bound the loader promises: the
// model's bytes in the target dtype + its largest tensor + 10 %, above what
// the process held before loading.
//
//   /usr/bin/python3 bench/hf_load_fixture.py /tmp/hf_bench      (1.14 GB,
//   bf16) build/bench/hf_load /tmp/hf_bench [bfloat16|float32|float16|auto]
//
// Prints the RSS before, the peak RSS after loading (getrusage ru_maxrss), the
// model's bytes, the largest tensor, the bound and whether the peak is within
// it; exits 1 if not.
#include <chrono>
#include <cstdio>
#include <string>

#include "lowmem/core/memory.h"
#include "lowmem/interop/hf_checkpoint.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: hf_load DIR [dtype]\n");
    return 2;
  }
  const std::string dir = argv[1];
  const std::string dtype = argc > 2 ? argv[2] : "bfloat16";
  try {
    auto options = lowmem::interop::HfLoadOptions();
    if (dtype == "auto")
      options.dtype(c10::nullopt);
    else
      options.dtype(lowmem::interop::hf_dtype_from_name(dtype));
    const int64_t before = lowmem::MemoryTracker::current_rss_bytes();
    const int64_t hwm_before = lowmem::MemoryTracker::peak_rss_bytes();
    const auto t0 = std::chrono::steady_clock::now();
    auto model = lowmem::interop::load_hf_model(dir, options);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
            .count();
    const int64_t peak = lowmem::MemoryTracker::peak_rss_bytes();
    int64_t bytes = 0, largest = 0;
    for (const auto& p : model->parameters()) {
      bytes += static_cast<int64_t>(p.nbytes());
      largest = std::max<int64_t>(largest, static_cast<int64_t>(p.nbytes()));
    }
    const double bound = static_cast<double>(before) +
                         1.1 * static_cast<double>(bytes + largest);
    auto mib = [](double b) { return b / (1024.0 * 1024.0); };
    std::printf(
        "loaded %s as %s in %.1f s\n"
        "RSS before        %10.1f MiB (peak so far %.1f MiB)\n"
        "peak RSS          %10.1f MiB\n"
        "model bytes       %10.1f MiB\n"
        "largest tensor    %10.1f MiB\n"
        "bound             %10.1f MiB  (before + 1.1 x (model + largest))\n"
        "peak - before     %10.1f MiB = %.3f x model bytes\n"
        "%s\n",
        dir.c_str(), dtype.c_str(), seconds, mib(before), mib(hwm_before),
        mib(peak), mib(bytes), mib(largest), mib(bound), mib(peak - before),
        static_cast<double>(peak - before) / static_cast<double>(bytes),
        peak <= bound ? "within the bound" : "ABOVE the bound");
    return peak <= bound ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hf_load: %s\n", e.what());
    return 1;
  }
}
