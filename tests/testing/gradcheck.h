// Central-difference gradient checks in float64.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <vector>

namespace lowmem::testing {

/// Compares autograd's gradient of the scalar f(inputs) w.r.t. each input
/// (float64, requires_grad) with central differences (step eps). Returns the
/// largest |analytic - numeric| / (atol + rtol |numeric|) over all elements.
double gradcheck(const std::function<at::Tensor(const std::vector<at::Tensor>&)>& f,
                 const std::vector<at::Tensor>& inputs, double eps = 1e-6,
                 double rtol = 1e-5, double atol = 1e-8);

}  // namespace lowmem::testing
