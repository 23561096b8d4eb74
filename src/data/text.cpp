#include "lowmem/data/text.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>

#include "lowmem/core/check.h"
#include "lowmem/core/input.h"

namespace lowmem::data {

namespace fs = std::filesystem;

namespace {

std::string fortunes_hint(const std::string& path) {
  if (fs::path(path).lexically_normal() == fs::path(kDefaultTextCorpus)) {
    return " (the default corpus comes from the Debian package 'fortunes': "
           "apt-get install fortunes)";
  }
  return "";
}

// The file's bytes, at most `budget` of them (core/input.h); "" for a binary
// file (a NUL byte: reading stops at the first chunk holding one, so
// /dev/zero costs one chunk).
std::string read_text_file(const fs::path& p, uint64_t budget, bool* binary) {
  std::string s;
  *binary = !read_file_limited(
      p.string(), budget, "[data] text corpus file (limit for the corpus)", s,
      [](std::string_view chunk) {
        return std::memchr(chunk.data(), 0, chunk.size()) == nullptr;
      });
  return *binary ? std::string() : s;
}

}  // namespace

TextCorpus::TextCorpus(const std::string& path, double val_fraction)
    : path_(path) {
  std::error_code ec;
  LOWMEM_CHECK(fs::exists(path, ec), "[data] text corpus '", path,
               "' does not exist", fortunes_hint(path));
  std::vector<std::string> candidates;
  if (fs::is_directory(path, ec)) {
    for (auto it = fs::recursive_directory_iterator(
             path, fs::directory_options::follow_directory_symlink, ec);
         !ec && it != fs::recursive_directory_iterator();
         it.increment(ec)) {
      if (it->is_regular_file(ec)) candidates.push_back(it->path().string());
    }
    LOWMEM_CHECK(!ec, "[data] cannot list '", path, "': ", ec.message());
    std::sort(candidates.begin(), candidates.end());
  } else {
    candidates.push_back(path);
  }
  read(candidates, val_fraction, fortunes_hint(path));
}

TextCorpus TextCorpus::from_files(const std::vector<std::string>& files,
                                  const std::string& name,
                                  double val_fraction) {
  LOWMEM_CHECK(!files.empty(), "[data] text corpus '", clip(name),
               "' names no files");
  TextCorpus c{Unread{}};
  c.path_ = name;
  c.read(files, val_fraction, "");
  return c;
}

void TextCorpus::read(const std::vector<std::string>& candidates,
                      double val_fraction, const std::string& hint) {
  LOWMEM_CHECK(val_fraction > 0.0 && val_fraction < 1.0,
               "[data] val_fraction must be in (0, 1), got ", val_fraction);
  std::error_code ec;
  std::string all;
  std::set<fs::path> seen;
  for (const auto& name : candidates) {
    const fs::path p(name);
    fs::path canon = fs::weakly_canonical(p, ec);
    if (!seen.insert(ec ? p : canon).second)
      continue;
    bool binary = false;
    std::string s =
        read_text_file(p, kMaxTextCorpusBytes - all.size(), &binary);
    if (binary) {
      ++skipped_;
      continue;
    }
    if (s.empty()) continue;
    files_.push_back(p.string());
    all += s;
  }
  LOWMEM_CHECK(!all.empty(), "[data] text corpus '", path_,
               "' contains no text files (", candidates.size(), " files, ",
               skipped_, " binary)", hint);
  bytes_ = at::empty({static_cast<int64_t>(all.size())}, at::kByte);
  std::memcpy(bytes_.data_ptr<uint8_t>(), all.data(), all.size());
  split_ = static_cast<int64_t>(
      std::llround(static_cast<double>(all.size()) * (1.0 - val_fraction)));
  LOWMEM_CHECK(split_ >= 2 && size() - split_ >= 2, "[data] text corpus '",
               path_, "' is too small to split (", size(), " bytes)");
}

at::Tensor TextCorpus::train() const {
  return bytes_.slice(0, 0, split_);
}

at::Tensor TextCorpus::validation() const {
  return bytes_.slice(0, split_);
}

std::string TextCorpus::describe() const {
  std::ostringstream s;
  s << path_ << ": " << size() << " bytes, " << files_.size() << " files ("
    << split_ << " train, " << size() - split_ << " validation)";
  return s.str();
}

namespace {
std::array<double, 256> byte_histogram(const at::Tensor& bytes) {
  LOWMEM_CHECK(
      bytes.scalar_type() == at::kByte,
      "[data] expected uint8 bytes, got ",
      bytes.scalar_type());
  at::Tensor b = bytes.contiguous();
  std::array<double, 256> h{};
  const uint8_t* p = b.data_ptr<uint8_t>();
  for (int64_t i = 0; i < b.numel(); ++i)
    h[p[i]] += 1.0;
  return h;
}
}  // namespace

double unigram_entropy(const at::Tensor& bytes) {
  auto h = byte_histogram(bytes);
  const double n = static_cast<double>(bytes.numel());
  LOWMEM_CHECK(n > 0, "[data] unigram_entropy of an empty split");
  double e = 0.0;
  for (double c : h) {
    if (c > 0)
      e -= c / n * std::log(c / n);
  }
  return e;
}

double unigram_cross_entropy(const at::Tensor& fit, const at::Tensor& eval) {
  auto f = byte_histogram(fit), g = byte_histogram(eval);
  const double nf = static_cast<double>(fit.numel()) + 256.0;
  const double ng = static_cast<double>(eval.numel());
  LOWMEM_CHECK(ng > 0, "[data] unigram_cross_entropy on an empty split");
  double e = 0.0;
  for (int i = 0; i < 256; ++i) {
    if (g[i] > 0)
      e -= g[i] / ng * std::log((f[i] + 1.0) / nf);
  }
  return e;
}

uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

TextBatches::TextBatches(
    at::Tensor split, TextBatchOptions options, std::string name)
    : split_(std::move(split)), options_(options), name_(std::move(name)) {
  LOWMEM_CHECK(split_.defined() && split_.dim() == 1 &&
                   (split_.scalar_type() == at::kByte ||
                    split_.scalar_type() == at::kInt ||
                    split_.scalar_type() == at::kLong),
               "[data] text split must be uint8 [N] (bytes) or int32/int64 "
               "[N] (token ids)");
  if (split_.scalar_type() == at::kInt) split_ = split_.to(at::kLong);
  LOWMEM_CHECK(
      options_.context() > 0,
      "[data] context must be > 0, got ",
      options_.context());
  LOWMEM_CHECK(
      options_.batch_size() > 0,
      "[data] batch_size must be > 0, got ",
      options_.batch_size());
  LOWMEM_CHECK(split_.numel() >= options_.context() + 1, "[data] ", name_,
               " split has ", split_.numel(),
               (split_.scalar_type() == at::kByte ? " bytes" : " tokens"),
               ", fewer than context + 1 = ", options_.context() + 1);
  split_ = split_.contiguous();
}

int64_t TextBatches::windows() const {
  return (split_.numel() - 1) / options_.context();
}

Batch TextBatches::next() {
  const int64_t B = options_.batch_size(), T = options_.context();
  const int64_t n_offsets = split_.numel() - T;  // valid offsets 0..n_offsets-1
  at::Tensor input = at::empty({B, T}, at::kLong);
  at::Tensor target = at::empty({B, T}, at::kLong);
  const bool bytes = split_.scalar_type() == at::kByte;
  const uint8_t* src8 = bytes ? split_.data_ptr<uint8_t>() : nullptr;
  const int64_t* src64 = bytes ? nullptr : split_.data_ptr<int64_t>();
  auto src = [src8, src64](int64_t i) { return src8 ? src8[i] : src64[i]; };
  int64_t* in = input.data_ptr<int64_t>();
  int64_t* tg = target.data_ptr<int64_t>();
  const uint64_t stream = mix64(options_.seed() ^ 0x7465787442617463ULL);
  for (int64_t b = 0; b < B; ++b) {
    int64_t offset;
    if (options_.random()) {
      uint64_t r =
          mix64(stream + mix64(static_cast<uint64_t>(position_ * B + b)));
      offset = static_cast<int64_t>(r % static_cast<uint64_t>(n_offsets));
    } else {
      offset = ((position_ * B + b) % windows()) * T;
    }
    for (int64_t t = 0; t < T; ++t) {
      in[b * T + t] = src(offset + t);
      tg[b * T + t] = src(offset + t + 1);
    }
  }
  ++position_;
  return {input, target};
}

void TextBatches::seek(int64_t position) {
  LOWMEM_CHECK(
      position >= 0, "[data] seek position must be >= 0, got ", position);
  position_ = position;
}

std::string TextBatches::describe() const {
  std::ostringstream s;
  s << name_ << ": " << split_.numel() << " bytes, " << options_.batch_size()
    << " x " << options_.context()
    << (options_.random() ? " random" : " sequential") << " windows, seed "
    << options_.seed();
  return s.str();
}

}  // namespace lowmem::data
