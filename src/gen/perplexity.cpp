#include "lowmem/gen/perplexity.h"

#include <ATen/ATen.h>

#include <cmath>

#include "lowmem/core/check.h"
#include "lowmem/models/layers.h"

namespace lowmem::gen {

double PerplexityResult::mean_loss() const {
  return tokens > 0 ? loss_sum / static_cast<double>(tokens) : 0.0;
}

double PerplexityResult::perplexity() const { return std::exp(mean_loss()); }

void add_sample(models::Model& model, const std::vector<int64_t>& ids,
                const std::vector<uint8_t>& mask, int64_t context,
                PerplexityResult& r) {
  LOWMEM_CHECK(context >= 1, "[perplexity] context must be >= 1, got ",
               context);
  LOWMEM_CHECK(mask.empty() || mask.size() == ids.size(),
               "[perplexity] the mask has ", mask.size(), " entries for ",
               ids.size(), " ids");
  auto params = model.parameters();
  LOWMEM_CHECK(!params.empty(), "[perplexity] the model has no parameters");
  const c10::Device device = params[0].device();
  ++r.samples;
  const int64_t n = static_cast<int64_t>(ids.size());
  for (int64_t s = 0; s + 1 < n; s += context) {
    const int64_t end = std::min(s + context + 1, n);
    std::vector<int64_t> input(ids.begin() + s, ids.begin() + end - 1);
    std::vector<int64_t> target(ids.begin() + s + 1, ids.begin() + end);
    bool any = mask.empty();
    for (int64_t i = s + 1; i < end && !mask.empty(); ++i) {
      if (mask[static_cast<size_t>(i)] == 0)
        target[static_cast<size_t>(i - s - 1)] = models::kIgnoreIndex;
      else
        any = true;
    }
    if (!any) continue;
    auto o = at::TensorOptions().dtype(at::kLong);
    const auto stats =
        model.evaluate(at::tensor(input, o).view({1, -1}).to(device),
                       at::tensor(target, o).view({1, -1}).to(device));
    r.loss_sum += stats.loss_sum;
    r.tokens += stats.count;
    ++r.windows;
  }
}

PerplexityResult perplexity(models::Model& model,
                            const data::JsonlDataset& dataset,
                            int64_t context) {
  PerplexityResult r;
  for (int64_t i = 0; i < dataset.size(); ++i) {
    const auto [p, n] = dataset.tokens(i);
    const uint8_t* m = dataset.mask(i);
    add_sample(model, std::vector<int64_t>(p, p + n),
               std::vector<uint8_t>(m, m + n), context, r);
  }
  return r;
}

}  // namespace lowmem::gen
