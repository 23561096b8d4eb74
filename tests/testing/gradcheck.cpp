#include "testing/gradcheck.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <algorithm>

namespace lowmem::testing {

double gradcheck(const std::function<at::Tensor(const std::vector<at::Tensor>&)>& f,
                 const std::vector<at::Tensor>& inputs, double eps, double rtol,
                 double atol) {
  at::Tensor out = f(inputs);
  std::vector<at::Tensor> analytic =
      torch::autograd::grad({out}, inputs, {}, /*retain_graph=*/false,
                            /*create_graph=*/false, /*allow_unused=*/true);
  double worst = 0.0;
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < inputs.size(); ++i) {
    at::Tensor x = inputs[i];
    at::Tensor flat = x.view({-1});
    at::Tensor ga = analytic[i].defined() ? analytic[i].reshape({-1})
                                          : at::zeros_like(flat);
    for (int64_t k = 0; k < flat.numel(); ++k) {
      double orig = flat[k].item<double>();
      flat[k].fill_(orig + eps);
      double fp = f(inputs).item<double>();
      flat[k].fill_(orig - eps);
      double fm = f(inputs).item<double>();
      flat[k].fill_(orig);
      double num = (fp - fm) / (2 * eps);
      double an = ga[k].item<double>();
      worst = std::max(worst, std::abs(an - num) / (atol + rtol * std::abs(num)));
    }
  }
  return worst;
}

}  // namespace lowmem::testing
