// Golden trajectories recorded from the official implementations
// (tests/golden/*.pt, copied from ../shared/golden; see tests/golden/README.md).
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <string>

namespace lowmem::testing {

/// Path of a file under the source tree (tests run from any directory).
std::string source_path(const std::string& relative);

/// Loads a torch.save'd dict[str, Tensor] (.pt) written by Python.
std::map<std::string, at::Tensor> load_tensor_dict(const std::string& path);

/// Max over elements of |a - b| / (atol + rtol * |b|); <= 1 means close.
double closeness(const at::Tensor& a, const at::Tensor& b, double rtol,
                 double atol);

}  // namespace lowmem::testing
