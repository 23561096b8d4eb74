#include "testing/golden.h"

#include <ATen/ATen.h>
#include <torch/serialize.h>

#include <fstream>
#include <iterator>
#include <vector>

#include "lowmem/core/check.h"

namespace lowmem::testing {

std::string source_path(const std::string& relative) {
  return std::string(LOWMEM_SOURCE_DIR) + "/" + relative;
}

std::map<std::string, at::Tensor> load_tensor_dict(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  LOWMEM_CHECK(in.good(), "[golden] cannot open ", path);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)),
                          std::istreambuf_iterator<char>());
  c10::IValue v = torch::pickle_load(bytes);
  std::map<std::string, at::Tensor> out;
  for (const auto& kv : v.toGenericDict()) {
    out[kv.key().toStringRef()] = kv.value().toTensor();
  }
  return out;
}

double closeness(const at::Tensor& a, const at::Tensor& b, double rtol,
                 double atol) {
  at::Tensor da = a.to(at::kDouble), db = b.to(at::kDouble);
  return ((da - db).abs() / (atol + rtol * db.abs())).max().item<double>();
}

}  // namespace lowmem::testing
