// Each data-parallel rank reads its own part of a lowmem::data::BatchSource.
// No paper. Positions are global (in batches of the wrapped source), so a
// checkpoint written with W ranks resumes with any other number of ranks.
#pragma once

#include "lowmem/data/batch.h"

#include <memory>

namespace lowmem::dist {

enum class ShardMode {
  /// Every rank draws the same batch and keeps rows
  /// [rank*B/W, (rank+1)*B/W): W ranks train on exactly the batches one
  /// process would see (B must be divisible by W). The default: a W-process
  /// run reproduces the 1-process run with the same global batch.
  kSplitBatch,
  /// Rank r keeps batch r of every W consecutive batches of the source (the
  /// global batch is W source batches; each rank decodes all W, keeps one).
  kStride,
};

class ShardedSource final : public data::BatchSource {
 public:
  ShardedSource(
      std::shared_ptr<data::BatchSource> inner,
      int rank,
      int world_size,
      ShardMode mode = ShardMode::kSplitBatch);

  data::Batch next() override;
  /// Batches drawn from the wrapped source (global, not per rank).
  int64_t position() const override;
  /// Continues from a global position (any world size).
  void seek(int64_t position) override;
  std::string describe() const override;

 private:
  std::shared_ptr<data::BatchSource> inner_;
  int rank_;
  int world_size_;
  ShardMode mode_;
};

}  // namespace lowmem::dist
