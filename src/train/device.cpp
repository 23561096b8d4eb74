#include "lowmem/train/device.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/cuda.h>

#include "lowmem/train/fields.h"

namespace lowmem::train {
namespace {

std::string first_line(const std::string& s) {
  return s.substr(0, s.find('\n'));
}

}  // namespace

c10::Device parse_device(const std::string& text) {
  c10::Device d(c10::kCPU);
  try {
    d = c10::Device(text);
  } catch (const c10::Error& e) {
    throw ConfigError("bad device '" + text +
                      "': expected cpu, cuda or cuda:N (" +
                      first_line(e.what_without_backtrace()) + ")");
  }
  if (d.is_cpu() && d.has_index() && d.index() != 0) {
    throw ConfigError("bad device '" + text + "': the CPU is cpu (or cpu:0)");
  }
  if (d.type() == c10::kMeta) {
    throw ConfigError("device '" + text +
                      "' holds no data: a run cannot train on it");
  }
  return d;
}

c10::Device resolve_device(const std::string& text) {
  const c10::Device d = parse_device(text);
  if (d.is_cpu()) {
    return d;
  }
  if (d.is_cuda()) {
    const auto n = static_cast<int64_t>(torch::cuda::device_count());
    if (n == 0) {
#if defined(LOWMEM_WITH_CUDA)
      throw ConfigError("device '" + text +
                        "' is not available: no CUDA GPU is visible");
#else
      throw ConfigError("device '" + text +
                        "' is not available: this LibTorch is a CPU-only "
                        "build (no CUDA support)");
#endif
    }
    if (d.has_index() && d.index() >= n) {
      throw ConfigError("device '" + text + "' is not available: this "
                        "machine has " + std::to_string(n) +
                        " CUDA device(s), cuda:0 to cuda:" +
                        std::to_string(n - 1));
    }
    return d;
  }
  // Other backends (mps, xpu, ...): whether a tensor can live there.
  try {
    (void)at::empty({1}, at::TensorOptions().device(d));
  } catch (const c10::Error& e) {
    throw ConfigError("device '" + text + "' is not available here: " +
                      first_line(e.what_without_backtrace()));
  }
  return d;
}

}  // namespace lowmem::train
