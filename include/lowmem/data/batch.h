// The data interface the trainer consumes: a deterministic, resumable stream of
// batches. Every source restarts exactly from its saved position (checkpoints).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

namespace lowmem::data {

/// One mini-batch. For text: input [B, T] int64 tokens, target [B, T] int64
/// (input shifted by one). For images: input [B, C, H, W] float, target [B]
/// int64 class labels.
struct Batch {
  at::Tensor input;
  at::Tensor target;
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
