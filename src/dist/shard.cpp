#include "lowmem/dist/shard.h"

#include "lowmem/core/check.h"

#include <ATen/ATen.h>

namespace lowmem::dist {

ShardedSource::ShardedSource(
    std::shared_ptr<data::BatchSource> inner,
    int rank,
    int world_size,
    ShardMode mode)
    : inner_(std::move(inner)), rank_(rank), world_size_(world_size), mode_(mode) {
  LOWMEM_CHECK(inner_ != nullptr, "[dist] ShardedSource needs a source");
  LOWMEM_CHECK(
      world_size_ >= 1 && rank_ >= 0 && rank_ < world_size_,
      "[dist] ShardedSource rank must be in [0, ",
      world_size_,
      "), got ",
      rank_);
}

data::Batch ShardedSource::next() {
  if (mode_ == ShardMode::kStride) {
    data::Batch mine;
    for (int r = 0; r < world_size_; ++r) {
      auto b = inner_->next();
      if (r == rank_) {
        mine = std::move(b);
      }
    }
    return mine;
  }
  auto b = inner_->next();
  if (world_size_ == 1) {
    return b;
  }
  const int64_t rows = b.input.size(0);
  LOWMEM_CHECK(
      rows % world_size_ == 0,
      "[dist] the global batch size (",
      rows,
      ") must be divisible by the number of ranks (",
      world_size_,
      ") to split it");
  const int64_t chunk = rows / world_size_;
  data::Batch out;
  out.input = b.input.narrow(0, chunk * rank_, chunk);
  if (b.target.defined()) {
    out.target = b.target.narrow(0, chunk * rank_, chunk);
  }
  return out;
}

int64_t ShardedSource::position() const {
  return inner_->position();
}

void ShardedSource::seek(int64_t position) {
  inner_->seek(position);
}

std::string ShardedSource::describe() const {
  return inner_->describe() + " [rank " + std::to_string(rank_) + " of " +
      std::to_string(world_size_) +
      (mode_ == ShardMode::kSplitBatch ? ", split batch]" : ", stride]");
}

}  // namespace lowmem::dist
