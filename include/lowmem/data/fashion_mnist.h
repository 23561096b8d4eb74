// Fashion-MNIST (Xiao et al. 2017, arXiv:1708.07747) from the gzipped IDX
// files of the Debian package `dataset-fashion-mnist`
// (/usr/share/datasets/fashion-mnist), read with zlib; class subsets and
// N-examples-per-class samples for a VTAB-1k-style transfer protocol; and a
// resumable, epoch-shuffled BatchSource over any in-memory image set.
#pragma once

#include "lowmem/data/batch.h"

#include <torch/arg.h>

#include <cstdint>
#include <string>
#include <vector>

namespace lowmem::data {

inline constexpr const char* kDefaultFashionMnist =
    "/usr/share/datasets/fashion-mnist";

/// Channel statistics of the Fashion-MNIST training images (pixels / 255).
inline constexpr double kFashionMnistMean = 0.2860;
inline constexpr double kFashionMnistStd = 0.3530;

struct FashionMnistOptions {
  /// Folder with {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz.
  TORCH_ARG(std::string, root) = kDefaultFashionMnist;
  /// true: the 60000 training images; false: the 10000 test images.
  TORCH_ARG(bool, train) = true;
  /// Classes to keep (0..9), in this order; empty: all ten.
  TORCH_ARG(std::vector<int64_t>, classes) = {};
  /// Examples per kept class, drawn without replacement by `seed`; 0: all.
  TORCH_ARG(int64_t, per_class) = 0;
  /// Relabel the kept classes 0..k-1 in the order of `classes`.
  TORCH_ARG(bool, remap_labels) = true;
  /// (x/255 - mean) / std; false: x/255 in [0, 1].
  TORCH_ARG(bool, normalize) = true;
  TORCH_ARG(uint64_t, seed) = 0;
};

/// An image set in memory: images [N, 1, 28, 28] float, labels [N] int64.
struct ImageSet {
  at::Tensor images;
  at::Tensor labels;
  int64_t size() const {
    return labels.defined() ? labels.size(0) : 0;
  }
};

/// Raw IDX contents after gunzip: dims from the header and the uint8 payload.
struct IdxFile {
  std::vector<int64_t> dims;
  at::Tensor data;  // uint8, shaped `dims`
};

/// Parses the bytes of one (gunzipped) IDX file; type 0x08 = unsigned byte
/// only, rank 1..4. Throws "[data] <source>: ..." on bad magic, type or rank,
/// a truncated header, or a payload shorter or longer than the header says.
IdxFile parse_idx(const std::string& raw, const std::string& source);

/// Reads one IDX file (gzipped or not, at most 1 GiB unzipped) with
/// parse_idx. Throws "[data] <path>: ..." also on a missing file or bad gzip.
IdxFile read_idx(const std::string& path);

/// Loads the split, then selects classes and per-class samples. The examples
/// stay in file order (the per-class sample is sorted back into file order).
ImageSet load_fashion_mnist(const FashionMnistOptions& options = {});

/// The ten class names, index = label.
const std::vector<std::string>& fashion_mnist_classes();

struct ImageBatchOptions {
  TORCH_ARG(int64_t, batch_size) = 64;
  TORCH_ARG(uint64_t, seed) = 0;
  /// Reshuffle every epoch by (seed, epoch); false: file order.
  TORCH_ARG(bool, shuffle) = true;
};

/// Batches over an ImageSet, epochs concatenated (a batch may straddle two
/// epochs), so every batch has batch_size examples.
class ImageBatches final : public BatchSource {
 public:
  ImageBatches(
      ImageSet set, ImageBatchOptions options, std::string name = "images");
  Batch next() override;
  int64_t position() const override {
    return position_;
  }
  void seek(int64_t position) override;
  std::string describe() const override;
  const ImageSet& set() const {
    return set_;
  }

 private:
  const std::vector<int64_t>& order(int64_t epoch);
  ImageSet set_;
  ImageBatchOptions options_;
  std::string name_;
  int64_t position_ = 0;
  int64_t cached_epoch_ = -1;
  std::vector<int64_t> order_;
};

}  // namespace lowmem::data
