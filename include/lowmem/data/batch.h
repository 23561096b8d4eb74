// The data interface the trainer consumes: a deterministic, resumable stream of
// batches. Every source restarts exactly from its saved position (checkpoints).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>

namespace lowmem::data {

/// One mini-batch. For text: input [B, T] int64 tokens, target [B, T] int64
/// (input shifted by one). For images: input [B, C, H, W] float, target [B]
/// int64 class labels. Packed text rows (data/jsonl.h) also carry their
/// layout (models::PackedLayout): segments [B, T] int64, the sample number of
/// each token within its row, and positions [B, T] int64, each token's
/// position within its sample; both undefined when every row is one sample
/// at positions 0..T-1. Targets of untrained tokens are -100 (ignore_index).
struct Batch {
  Batch() = default;
  Batch(at::Tensor input, at::Tensor target, at::Tensor segments = {},
        at::Tensor positions = {})
      : input(std::move(input)),
        target(std::move(target)),
        segments(std::move(segments)),
        positions(std::move(positions)) {}
  at::Tensor input;
  at::Tensor target;
  at::Tensor segments;
  at::Tensor positions;
};

/// A resumable batch stream. The position is an opaque integer cursor plus the
/// seed, enough to reproduce the same sequence of batches after a restart.
class BatchSource {
 public:
  virtual ~BatchSource() = default;
  /// The next batch (sources are infinite: epochs wrap, reshuffling by seed).
  virtual Batch next() = 0;
  /// Number of batches drawn so far (the data position).
  virtual int64_t position() const = 0;
  /// Continues as if `position` batches had been drawn.
  virtual void seek(int64_t position) = 0;
  /// A short description for logs ("fortunes: 1.2 MB, 2 files").
  virtual std::string describe() const = 0;
};

}  // namespace lowmem::data
