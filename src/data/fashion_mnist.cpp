#include "lowmem/data/fashion_mnist.h"

#include <ATen/ATen.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <sstream>

#include "lowmem/core/check.h"
#include "lowmem/core/input.h"
#include "lowmem/data/text.h"

namespace lowmem::data {

namespace fs = std::filesystem;

namespace {

// The largest IDX file read (Fashion-MNIST's training images are 47 MB): a
// gzip bomb stops here.
constexpr uint64_t kMaxIdxBytes = uint64_t{1} << 30;

std::string fashion_mnist_hint(const std::string& path) {
  if (fs::path(path).parent_path().lexically_normal() ==
          fs::path(kDefaultFashionMnist) ||
      fs::path(path).lexically_normal() == fs::path(kDefaultFashionMnist)) {
    return " (the default data comes from the Debian package "
           "'dataset-fashion-mnist': apt-get install dataset-fashion-mnist)";
  }
  return "";
}

std::string gunzip(const std::string& path) {
  std::error_code ec;
  LOWMEM_CHECK(fs::is_regular_file(path, ec), "[data] ", path,
               ": file does not exist", fashion_mnist_hint(path));
  gzFile f = gzopen(path.c_str(), "rb");
  LOWMEM_CHECK(f != nullptr, "[data] ", path, ": cannot open");
  std::string out;
  char buf[1 << 16];
  while (true) {
    if (out.size() > kMaxIdxBytes) {
      gzclose(f);
      LOWMEM_CHECK(false, "[data] ", path, ": decompresses to more than ",
                   kMaxIdxBytes, " bytes (", format_limit(kMaxIdxBytes),
                   "), the limit of an IDX file");
    }
    int n = gzread(f, buf, sizeof(buf));
    if (n < 0) {
      int err = 0;
      std::string msg = gzerror(f, &err);
      gzclose(f);
      LOWMEM_CHECK(false, "[data] ", path, ": corrupt or truncated gzip (", msg,
                   ")", fashion_mnist_hint(path));
    }
    if (n == 0)
      break;
    out.append(buf, static_cast<size_t>(n));
  }
  int err = 0;
  const char* msg = gzerror(f, &err);
  std::string m = msg ? msg : "";
  int rc = gzclose(f);
  LOWMEM_CHECK(err == Z_OK && rc == Z_OK, "[data] ", path,
               ": corrupt or truncated gzip (", m.empty() ? "close failed" : m,
               ")", fashion_mnist_hint(path));
  return out;
}

uint32_t be32(const unsigned char* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) |
         (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

// train-images-idx3-ubyte.gz, falling back to the uncompressed name.
std::string idx_path(const std::string& root, const std::string& stem) {
  fs::path gz = fs::path(root) / (stem + ".gz");
  std::error_code ec;
  if (!fs::exists(gz, ec) && fs::exists(fs::path(root) / stem, ec)) {
    return (fs::path(root) / stem).string();
  }
  return gz.string();
}

}  // namespace

IdxFile parse_idx(const std::string& raw, const std::string& source) {
  const auto* p = reinterpret_cast<const unsigned char*>(raw.data());
  LOWMEM_CHECK(raw.size() >= 4, "[data] ", source, ": not an IDX file (",
               raw.size(), " bytes)");
  LOWMEM_CHECK(p[0] == 0 && p[1] == 0, "[data] ", source,
               ": bad IDX magic (first bytes ", int(p[0]), " ", int(p[1]),
               ", expected 0 0)");
  LOWMEM_CHECK(p[2] == 0x08, "[data] ", source, ": IDX type 0x", std::hex,
               int(p[2]), std::dec, " unsupported (only 0x08 unsigned byte)");
  const int ndim = p[3];
  LOWMEM_CHECK(ndim >= 1 && ndim <= 4, "[data] ", source, ": bad IDX rank ",
               ndim);
  const size_t header = 4 + 4 * static_cast<size_t>(ndim);
  LOWMEM_CHECK(raw.size() >= header, "[data] ", source,
               ": IDX header truncated");
  IdxFile out;
  for (int d = 0; d < ndim; ++d) {
    out.dims.push_back(be32(p + 4 + 4 * d));
  }
  // The product of the dims, zeros counted as 1, bounds the tensor's strides
  // as well as its size: a header such as [0, 2^32 - 1, 2^32 - 1] (no bytes,
  // strides past 2^63) is rejected too. Each factor is < 2^32, so checking
  // after each step cannot overflow.
  int64_t count = 1;
  int64_t extent = 1;
  for (const int64_t dim : out.dims) {
    extent *= std::max<int64_t>(dim, 1);
    count *= dim;
    LOWMEM_CHECK(extent <= static_cast<int64_t>(kMaxIdxBytes), "[data] ",
                 source, ": IDX dims ", at::IntArrayRef(out.dims),
                 " exceed the limit of ", kMaxIdxBytes, " bytes (",
                 format_limit(kMaxIdxBytes), ")");
  }
  LOWMEM_CHECK(raw.size() - header == static_cast<size_t>(count), "[data] ",
               source, ": IDX payload has ", raw.size() - header,
               " bytes, header says ", count);
  out.data = at::empty(out.dims, at::kByte);
  if (count > 0) {
    std::memcpy(out.data.data_ptr<uint8_t>(), p + header,
                static_cast<size_t>(count));
  }
  return out;
}

IdxFile read_idx(const std::string& path) {
  return parse_idx(gunzip(path), path);
}

const std::vector<std::string>& fashion_mnist_classes() {
  static const std::vector<std::string> names = {
      "T-shirt/top",
      "Trouser",
      "Pullover",
      "Dress",
      "Coat",
      "Sandal",
      "Shirt",
      "Sneaker",
      "Bag",
      "Ankle boot"};
  return names;
}

namespace {

// Position of each Fashion-MNIST class in `classes` (all ten when empty,
// filled in), -1 for classes not kept.
std::vector<int64_t> class_remap(std::vector<int64_t>& classes) {
  if (classes.empty()) {
    classes.resize(10);
    std::iota(classes.begin(), classes.end(), 0);
  }
  std::vector<int64_t> remap(10, -1);
  for (size_t i = 0; i < classes.size(); ++i) {
    LOWMEM_CHECK(
        classes[i] >= 0 && classes[i] <= 9,
        "[data] class ",
        classes[i],
        " out of range 0..9");
    LOWMEM_CHECK(
        remap[classes[i]] < 0, "[data] class ", classes[i], " listed twice");
    remap[classes[i]] = static_cast<int64_t>(i);
  }
  return remap;
}

// Indices of the examples kept: every example of the kept classes, or a
// seeded draw of per_class of each; in file order.
std::vector<int64_t> select_examples(const at::Tensor& lab,
                                     const std::vector<int64_t>& classes,
                                     const std::vector<int64_t>& remap,
                                     const FashionMnistOptions& o) {
  // Indices per class in file order, then a seeded partial Fisher-Yates draw.
  const int64_t* lp_ = lab.data_ptr<int64_t>();
  std::vector<std::vector<int64_t>> by_class(10);
  for (int64_t i = 0; i < lab.numel(); ++i) {
    if (remap[lp_[i]] >= 0)
      by_class[lp_[i]].push_back(i);
  }
  std::vector<int64_t> keep;
  for (int64_t c : classes) {
    auto& idx = by_class[c];
    if (o.per_class() > 0) {
      LOWMEM_CHECK(
          static_cast<int64_t>(idx.size()) >= o.per_class(),
          "[data] class ",
          c,
          " has ",
          idx.size(),
          " examples, fewer than per_class ",
          o.per_class());
      const uint64_t stream =
          mix64(o.seed() ^ mix64(static_cast<uint64_t>(c) + 1));
      for (int64_t i = 0; i < o.per_class(); ++i) {
        const uint64_t r = mix64(stream + static_cast<uint64_t>(i));
        const int64_t j =
            i + static_cast<int64_t>(r % static_cast<uint64_t>(idx.size() - i));
        std::swap(idx[i], idx[j]);
      }
      idx.resize(o.per_class());
    }
    keep.insert(keep.end(), idx.begin(), idx.end());
  }
  std::sort(keep.begin(), keep.end());
  return keep;
}

}  // namespace

ImageSet load_fashion_mnist(const FashionMnistOptions& o) {
  std::error_code ec;
  LOWMEM_CHECK(fs::is_directory(o.root(), ec), "[data] Fashion-MNIST folder '",
               o.root(), "' does not exist", fashion_mnist_hint(o.root()));
  const std::string prefix = o.train() ? "train" : "t10k";
  const std::string ip = idx_path(o.root(), prefix + "-images-idx3-ubyte");
  const std::string lp = idx_path(o.root(), prefix + "-labels-idx1-ubyte");
  IdxFile images = read_idx(ip);
  IdxFile labels = read_idx(lp);
  LOWMEM_CHECK(images.dims.size() == 3, "[data] ", ip,
               ": expected 3 dims [N, H, W], got ", images.dims.size());
  LOWMEM_CHECK(labels.dims.size() == 1 && labels.dims[0] == images.dims[0],
               "[data] ", lp, ": ",
               labels.dims.size() == 1 ? labels.dims[0] : -1, " labels for ",
               images.dims[0], " images");
  at::Tensor lab = labels.data.to(at::kLong);
  LOWMEM_CHECK(lab.numel() == 0 || lab.max().item<int64_t>() <= 9, "[data] ",
               lp, ": label ", lab.max().item<int64_t>(), " out of range 0..9");

  std::vector<int64_t> classes = o.classes();
  const std::vector<int64_t> remap = class_remap(classes);
  LOWMEM_CHECK(o.per_class() >= 0, "[data] per_class must be >= 0, got ",
               o.per_class());
  std::vector<int64_t> keep = select_examples(lab, classes, remap, o);
  at::Tensor sel = at::tensor(keep, at::kLong);

  ImageSet out;
  const int64_t H = images.dims[1], W = images.dims[2];
  out.images = images.data.index_select(0, sel)
                   .to(at::kFloat)
                   .div_(255.0)
                   .view({sel.numel(), 1, H, W});
  if (o.normalize())
    out.images.sub_(kFashionMnistMean).div_(kFashionMnistStd);
  out.labels = lab.index_select(0, sel);
  if (o.remap_labels()) {
    out.labels = at::tensor(remap, at::kLong).index_select(0, out.labels);
  }
  return out;
}

ImageBatches::ImageBatches(
    ImageSet set, ImageBatchOptions options, std::string name)
    : set_(std::move(set)), options_(options), name_(std::move(name)) {
  LOWMEM_CHECK(set_.size() > 0, "[data] ", name_, ": empty image set");
  LOWMEM_CHECK(
      set_.images.size(0) == set_.size(),
      "[data] ",
      name_,
      ": ",
      set_.images.size(0),
      " images for ",
      set_.size(),
      " labels");
  LOWMEM_CHECK(
      options_.batch_size() > 0,
      "[data] batch_size must be > 0, got ",
      options_.batch_size());
}

const std::vector<int64_t>& ImageBatches::order(int64_t epoch) {
  if (epoch == cached_epoch_)
    return order_;
  const int64_t n = set_.size();
  order_.resize(static_cast<size_t>(n));
  std::iota(order_.begin(), order_.end(), 0);
  if (options_.shuffle()) {
    const uint64_t stream = mix64(
        options_.seed() ^
        mix64(static_cast<uint64_t>(epoch) ^ 0x5368756666ULL));
    for (int64_t i = n - 1; i > 0; --i) {
      const uint64_t r = mix64(stream + static_cast<uint64_t>(i));
      std::swap(
          order_[i],
          order_[static_cast<int64_t>(r % static_cast<uint64_t>(i + 1))]);
    }
  }
  cached_epoch_ = epoch;
  return order_;
}

Batch ImageBatches::next() {
  const int64_t B = options_.batch_size(), n = set_.size();
  std::vector<int64_t> idx(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    const int64_t k = position_ * B + b;
    idx[b] = order(k / n)[k % n];
  }
  at::Tensor sel = at::tensor(idx, at::kLong);
  ++position_;
  return {set_.images.index_select(0, sel), set_.labels.index_select(0, sel)};
}

void ImageBatches::seek(int64_t position) {
  LOWMEM_CHECK(
      position >= 0, "[data] seek position must be >= 0, got ", position);
  position_ = position;
}

std::string ImageBatches::describe() const {
  std::ostringstream s;
  s << name_ << ": " << set_.size() << " images, batch "
    << options_.batch_size() << (options_.shuffle() ? ", shuffled" : "")
    << ", seed " << options_.seed();
  return s.str();
}

}  // namespace lowmem::data
