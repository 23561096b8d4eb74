// Perplexity of a language model on held-out text: mean next-token
// cross-entropy (nats) over the tokens a sample trains (data/jsonl.h's loss
// mask: a text file's or "text" row's every token after BOS, a completion's
// or an assistant reply's tokens), and exp of it. Samples longer than the
// context are cut into windows of `context` inputs that do not overlap (each
// token predicted once, from at most `context` tokens before it, restarting
// at each window): transformers' "Perplexity of fixed-length models" guide
// with stride = max_length (docs/source/en/perplexity.md), which notes that
// overlapping windows (a smaller stride) give a lower, better-conditioned
// figure at more cost.
#pragma once

#include <cstdint>
#include <vector>

#include "lowmem/data/jsonl.h"

namespace lowmem::models {
class Model;
}

namespace lowmem::gen {

struct PerplexityResult {
  double loss_sum = 0.0;  // summed cross-entropy (nats) of the counted tokens
  int64_t tokens = 0;     // tokens counted
  int64_t samples = 0;    // samples read
  int64_t windows = 0;    // forwards run
  /// loss_sum / tokens (0 when nothing was counted).
  double mean_loss() const;
  /// exp(mean_loss()).
  double perplexity() const;
};

/// Adds one sample (ids, and per id whether it is counted as a target; an
/// empty mask counts every id after the first) to `result`, window by window
/// (model.evaluate under no_grad, on the device of its parameters).
void add_sample(models::Model& model, const std::vector<int64_t>& ids,
                const std::vector<uint8_t>& mask, int64_t context,
                PerplexityResult& result);

/// Every sample of `dataset` (both splits).
PerplexityResult perplexity(models::Model& model,
                            const data::JsonlDataset& dataset, int64_t context);

}  // namespace lowmem::gen
