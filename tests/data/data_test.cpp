#include "lowmem/data/fashion_mnist.h"
#include "lowmem/data/text.h"

#include <torch/torch.h>

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include <zlib.h>

namespace {

namespace fs = std::filesystem;
using namespace lowmem::data;  // NOLINT

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           ("lowmem_data_test_" + std::to_string(::getpid()) + "_" +
            std::to_string(counter()++));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  static int& counter() {
    static int c = 0;
    return c;
  }
  void write(const std::string& name, const std::string& bytes) const {
    fs::create_directories((path / name).parent_path());
    std::ofstream(path / name, std::ios::binary) << bytes;
  }
};

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what();
  }
  return "";
}

TEST(TextCorpus, ReadsFolderRecursivelyInSortedOrderSkippingBinary) {
  TempDir d;
  d.write("b.txt", "BBBB");
  d.write("a/z.txt", "AAAA");
  d.write("a/idx.dat", std::string("\0\0\0\2abc", 7));
  d.write("c.txt", "CCCCCCCCCCCC");
  fs::create_symlink(d.path / "c.txt", d.path / "c.u8");
  TextCorpus c(d.path.string(), 0.25);
  EXPECT_EQ(c.files().size(), 3u);
  EXPECT_EQ(c.skipped_binary(), 1);
  std::string all(
      reinterpret_cast<const char*>(c.bytes().data_ptr<uint8_t>()),
      static_cast<size_t>(c.size()));
  EXPECT_EQ(all, "AAAABBBBCCCCCCCCCCCC");
  EXPECT_EQ(c.train().numel(), 15);
  EXPECT_EQ(c.validation().numel(), 5);
  EXPECT_EQ(c.validation()[0].item<int64_t>(), 'C');
}

TEST(TextCorpus, ClearErrors) {
  std::string e = error_of([] { TextCorpus c("/nonexistent/lowmem/corpus"); });
  EXPECT_NE(
      e.find("[data] text corpus '/nonexistent/lowmem/corpus' does not exist"),
      std::string::npos)
      << e;
  EXPECT_EQ(e.find("fortunes"), std::string::npos);  // no package hint
  TempDir empty;
  e = error_of([&] { TextCorpus c(empty.path.string()); });
  EXPECT_NE(e.find("contains no text files"), std::string::npos) << e;
  EXPECT_NE(e.find(empty.path.string()), std::string::npos) << e;
}

TEST(TextCorpus, FromFilesReadsExactlyThoseInOrder) {
  TempDir d;
  d.write("a.txt", "AAAA");
  d.write("b.txt", "BBBBBBBB");
  d.write("bin.dat", std::string("\0\1", 2));
  d.write("c.txt", "CCCC");
  const auto p = [&](const char* n) { return (d.path / n).string(); };
  // Order as given, a binary file skipped, a repeat read once.
  TextCorpus c =
      TextCorpus::from_files({p("c.txt"), p("a.txt"), p("bin.dat"), p("c.txt")},
                             "fortunes [c,a]", 0.25);
  EXPECT_EQ(c.path(), "fortunes [c,a]");
  ASSERT_EQ(c.files().size(), 2u);
  EXPECT_EQ(c.files()[0], p("c.txt"));
  EXPECT_EQ(c.skipped_binary(), 1);
  std::string all(reinterpret_cast<const char*>(c.bytes().data_ptr<uint8_t>()),
                  static_cast<size_t>(c.size()));
  EXPECT_EQ(all, "CCCCAAAA");
  EXPECT_EQ(c.train().numel(), 6);
  EXPECT_EQ(c.validation().numel(), 2);
  EXPECT_NE(c.describe().find("fortunes [c,a]: 8 bytes, 2 files"),
            std::string::npos)
      << c.describe();
  std::string e = error_of([] { TextCorpus::from_files({}, "none"); });
  EXPECT_NE(e.find("[data] text corpus 'none' names no files"),
            std::string::npos)
      << e;
  e = error_of([&] { TextCorpus::from_files({p("bin.dat")}, "binary only"); });
  EXPECT_NE(e.find("'binary only' contains no text files (1 files, 1 binary)"),
            std::string::npos)
      << e;
  e = error_of([&] { TextCorpus::from_files({p("a.txt")}, "x", 1.5); });
  EXPECT_NE(e.find("val_fraction must be in (0, 1), got 1.5"),
            std::string::npos)
      << e;
}

TEST(TextCorpus, DefaultCorpusHintNamesDebianPackage) {
  if (fs::exists(kDefaultTextCorpus)) {
    TextCorpus c;  // the real fortunes corpus
    EXPECT_GT(c.size(), 1000000);
    for (const auto& f : c.files()) {
      EXPECT_NE(fs::path(f).extension(), ".dat") << f;
    }
    // Unigram floor of the validation split: a few bits per byte.
    double h = unigram_entropy(c.validation());
    EXPECT_GT(h / std::log(2.0), 3.0);
    EXPECT_LT(h / std::log(2.0), 6.0);
    EXPECT_GE(unigram_cross_entropy(c.train(), c.validation()), h);
  } else {
    std::string e = error_of([] { TextCorpus c; });
    EXPECT_NE(e.find("Debian package 'fortunes'"), std::string::npos) << e;
  }
}

TEST(TextCorpus, UnigramEntropyClosedForm) {
  // Four equally likely symbols: ln 4.
  auto b = torch::tensor({1, 2, 3, 4, 1, 2, 3, 4}, torch::kByte);
  EXPECT_NEAR(unigram_entropy(b), std::log(4.0), 1e-12);
  auto one = torch::full({10}, 7, torch::kByte);
  EXPECT_NEAR(unigram_entropy(one), 0.0, 1e-12);
}

at::Tensor ramp(int64_t n) {
  return torch::arange(n, torch::kLong).remainder(251).to(torch::kByte);
}

TEST(TextBatches, TargetsAreInputsShiftedByOne) {
  TextBatches src(
      ramp(1000), TextBatchOptions().context(8).batch_size(4).seed(1));
  Batch b = src.next();
  EXPECT_EQ(b.input.sizes(), (std::vector<int64_t>{4, 8}));
  EXPECT_EQ(b.input.scalar_type(), torch::kLong);
  using torch::indexing::Slice;
  EXPECT_TRUE(torch::equal(
      b.input.index({Slice(), Slice(1)}),
      b.target.index({Slice(), Slice(0, 7)})));
  EXPECT_EQ(src.position(), 1);
}

TEST(TextBatches, DeterministicAndSeekResumesExactly) {
  auto opts = TextBatchOptions().context(16).batch_size(3).seed(7);
  TextBatches a(ramp(5000), opts), b(ramp(5000), opts);
  std::vector<Batch> seq;
  for (int i = 0; i < 6; ++i)
    seq.push_back(a.next());
  for (int i = 0; i < 6; ++i)
    EXPECT_TRUE(torch::equal(seq[i].input, b.next().input));
  TextBatches c(ramp(5000), opts);
  c.seek(4);
  EXPECT_TRUE(torch::equal(c.next().input, seq[4].input));
  EXPECT_TRUE(torch::equal(c.next().target, seq[5].target));
  TextBatches other(
      ramp(5000), TextBatchOptions().context(16).batch_size(3).seed(8));
  EXPECT_FALSE(torch::equal(other.next().input, seq[0].input));
}

TEST(TextBatches, SequentialCoversTheSplitInOrder) {
  TextBatches s(
      ramp(41), TextBatchOptions().context(10).batch_size(2).random(false));
  EXPECT_EQ(s.windows(), 4);
  Batch b1 = s.next(), b2 = s.next(), b3 = s.next();
  EXPECT_EQ(b1.input[0][0].item<int64_t>(), 0);
  EXPECT_EQ(b1.input[1][0].item<int64_t>(), 10);
  EXPECT_EQ(b2.input[1][0].item<int64_t>(), 30);
  EXPECT_EQ(b2.target[1][9].item<int64_t>(), 40);
  EXPECT_EQ(b3.input[0][0].item<int64_t>(), 0);  // wraps
}

TEST(TextBatches, RejectsTooSmallSplit) {
  std::string e = error_of([] {
    TextBatches s(ramp(8), TextBatchOptions().context(8), "validation");
  });
  EXPECT_NE(e.find("validation split has 8 bytes"), std::string::npos) << e;
}

// --- IDX / Fashion-MNIST ------------------------------------------------

std::string be32(uint32_t v) {
  std::string s(4, '\0');
  s[0] = char(v >> 24), s[1] = char(v >> 16), s[2] = char(v >> 8),
  s[3] = char(v);
  return s;
}

void write_gz(const fs::path& p, const std::string& bytes) {
  gzFile f = gzopen(p.string().c_str(), "wb");
  ASSERT_NE(f, nullptr);
  gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(f);
}

// A fake split: n images of 28x28 whose pixels all equal the example index
// (mod 256) and labels i % 10.
void write_fake_split(const fs::path& root, const std::string& prefix, int n) {
  std::string img =
      std::string("\0\0\x08\x03", 4) + be32(n) + be32(28) + be32(28);
  std::string lab = std::string("\0\0\x08\x01", 4) + be32(n);
  for (int i = 0; i < n; ++i) {
    img += std::string(28 * 28, char(i % 256));
    lab += char(i % 10);
  }
  write_gz(root / (prefix + "-images-idx3-ubyte.gz"), img);
  write_gz(root / (prefix + "-labels-idx1-ubyte.gz"), lab);
}

TEST(FashionMnist, ClassSubsetPerClassSampleAndRemap) {
  TempDir d;
  write_fake_split(d.path, "train", 200);
  auto o = FashionMnistOptions()
               .root(d.path.string())
               .classes({7, 2})
               .per_class(5)
               .seed(3)
               .normalize(false);
  ImageSet s = load_fashion_mnist(o);
  ASSERT_EQ(s.size(), 10);
  EXPECT_EQ(s.images.sizes(), (std::vector<int64_t>{10, 1, 28, 28}));
  EXPECT_EQ(s.labels.eq(0).sum().item<int64_t>(), 5);  // class 7 -> 0
  EXPECT_EQ(s.labels.eq(1).sum().item<int64_t>(), 5);  // class 2 -> 1
  for (int64_t i = 0; i < 10; ++i) {
    int64_t pixel = std::lround(s.images[i][0][3][3].item<double>() * 255.0);
    int64_t original = pixel % 10;  // index i has label i % 10
    EXPECT_EQ(original, s.labels[i].item<int64_t>() == 0 ? 7 : 2);
  }
  // Same seed: same sample; another seed: another sample.
  EXPECT_TRUE(torch::equal(load_fashion_mnist(o).images, s.images));
  EXPECT_FALSE(torch::equal(load_fashion_mnist(o.seed(4)).images, s.images));
  // No remap keeps the original labels; all classes without per_class: all.
  auto all = load_fashion_mnist(
      FashionMnistOptions().root(d.path.string()).remap_labels(false));
  EXPECT_EQ(all.size(), 200);
  EXPECT_EQ(all.labels[17].item<int64_t>(), 7);
  EXPECT_NE(
      error_of([&] {
        load_fashion_mnist(o.per_class(21));
      }).find("class 7 has 20 examples, fewer than per_class 21"),
      std::string::npos);
}

TEST(FashionMnist, NormalizedPixels) {
  TempDir d;
  write_fake_split(d.path, "t10k", 3);
  auto s = load_fashion_mnist(
      FashionMnistOptions().root(d.path.string()).train(false));
  EXPECT_NEAR(
      s.images[2][0][0][0].item<double>(),
      (2.0 / 255.0 - kFashionMnistMean) / kFashionMnistStd,
      1e-6);
}

TEST(FashionMnist, MissingDirAndFilesNameThePath) {
  std::string e = error_of([] {
    load_fashion_mnist(FashionMnistOptions().root("/nonexistent/fmnist"));
  });
  EXPECT_NE(e.find("'/nonexistent/fmnist' does not exist"), std::string::npos)
      << e;
  TempDir empty;
  e = error_of([&] {
    load_fashion_mnist(FashionMnistOptions().root(empty.path.string()));
  });
  EXPECT_NE(
      e.find("train-images-idx3-ubyte.gz: file does not exist"),
      std::string::npos)
      << e;
}

TEST(FashionMnist, TruncatedGzipAndBadMagic) {
  TempDir d;
  write_fake_split(d.path, "train", 50);
  auto p = d.path / "train-images-idx3-ubyte.gz";
  std::ifstream in(p, std::ios::binary);
  std::string gz((std::istreambuf_iterator<char>(in)), {});
  d.write("train-images-idx3-ubyte.gz", gz.substr(0, gz.size() / 2));
  std::string e = error_of([&] { read_idx(p.string()); });
  EXPECT_NE(e.find(p.string()), std::string::npos) << e;
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;

  write_gz(
      p,
      std::string("\x01\x02\x08\x03", 4) + be32(1) + be32(2) + be32(2) +
          "abcd");
  e = error_of([&] { read_idx(p.string()); });
  EXPECT_NE(e.find("bad IDX magic"), std::string::npos) << e;

  write_gz(
      p, std::string("\0\0\x08\x03", 4) + be32(2) + be32(2) + be32(2) + "abc");
  e = error_of([&] { read_idx(p.string()); });
  EXPECT_NE(e.find("IDX payload has 3 bytes, header says 8"), std::string::npos)
      << e;
}

// parse_idx is read_idx after gunzip (the `idx` fuzz target feeds it bytes).
TEST(FashionMnist, ParseIdxChecksHeaderAgainstPayload) {
  const std::string hdr("\0\0\x08", 3);
  IdxFile f = parse_idx(hdr + '\x02' + be32(2) + be32(3) + "abcdef", "m.idx");
  EXPECT_EQ(f.dims, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(f.data.sizes(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(f.data[1][2].item<uint8_t>(), 'f');
  // No images: an empty tensor of the header's dims.
  f = parse_idx(hdr + '\x03' + be32(0) + be32(28) + be32(28), "e.idx");
  EXPECT_EQ(f.data.sizes(), (std::vector<int64_t>{0, 28, 28}));
  std::string e = error_of([&] { parse_idx(hdr + '\x05', "r.idx"); });
  EXPECT_NE(e.find("r.idx: bad IDX rank 5"), std::string::npos) << e;
  e = error_of([&] { parse_idx(hdr + '\x02' + be32(2), "t.idx"); });
  EXPECT_NE(e.find("t.idx: IDX header truncated"), std::string::npos) << e;
}

// Found while writing the `idx` fuzz target: a zero dim made the payload
// size 0 whatever the other dims, so [0, 2^32 - 1, 2^32 - 1] was accepted and
// at::empty got an empty tensor whose first stride, (2^32 - 1)^2, does not
// fit int64. Dims are now bounded with zeros counted as 1.
TEST(FashionMnist, ParseIdxRejectsDimsPastTheLimitEvenWithAZero) {
  const std::string hdr("\0\0\x08", 3);
  const std::string ff(4, '\xff');
  std::string e = error_of(
      [&] { parse_idx(hdr + '\x03' + be32(0) + ff + ff, "zero.idx"); });
  EXPECT_NE(e.find("zero.idx: IDX dims [0, 4294967295, 4294967295] exceed "
                   "the limit of 1073741824 bytes (1 GiB)"),
            std::string::npos)
      << e;
  // Each dim fits, their product (2^32) does not.
  e = error_of([&] {
    parse_idx(hdr + '\x03' + be32(0) + be32(65536) + be32(65536), "z.idx");
  });
  EXPECT_NE(e.find("z.idx: IDX dims [0, 65536, 65536] exceed"),
            std::string::npos)
      << e;
  e = error_of([&] { parse_idx(hdr + '\x04' + ff + ff + ff + ff, "big.idx"); });
  EXPECT_NE(e.find("big.idx: IDX dims [4294967295, 4294967295, 4294967295, "
                   "4294967295] exceed"),
            std::string::npos)
      << e;
}

TEST(FashionMnist, RealDatasetIfInstalled) {
  if (!fs::exists(kDefaultFashionMnist)) {
    std::string e = error_of([] { load_fashion_mnist(); });
    EXPECT_NE(e.find("dataset-fashion-mnist"), std::string::npos) << e;
    return;
  }
  auto test = load_fashion_mnist(FashionMnistOptions().train(false));
  EXPECT_EQ(test.size(), 10000);
  EXPECT_EQ(test.labels.bincount().min().item<int64_t>(), 1000);
  auto few =
      load_fashion_mnist(FashionMnistOptions().classes({5, 6}).per_class(10));
  EXPECT_EQ(few.size(), 20);
  EXPECT_NEAR(
      load_fashion_mnist(FashionMnistOptions().train(false).normalize(false))
          .images.mean()
          .item<double>(),
      kFashionMnistMean,
      0.01);
}

TEST(ImageBatches, EpochShufflesAndSeek) {
  ImageSet set{
      torch::arange(10, torch::kFloat).view({10, 1, 1, 1}),
      torch::arange(10, torch::kLong)};
  ImageBatches a(set, ImageBatchOptions().batch_size(4).seed(1));
  std::vector<int64_t> seen;
  std::vector<Batch> batches;
  for (int i = 0; i < 5; ++i) {
    batches.push_back(a.next());
    for (int64_t j = 0; j < 4; ++j)
      seen.push_back(batches.back().target[j].item<int64_t>());
  }
  // First epoch (examples 0..9) is a permutation of 0..9.
  std::vector<int64_t> first(seen.begin(), seen.begin() + 10);
  std::sort(first.begin(), first.end());
  for (int64_t i = 0; i < 10; ++i)
    EXPECT_EQ(first[i], i);
  std::vector<int64_t> second(seen.begin() + 10, seen.begin() + 20);
  EXPECT_NE(std::vector<int64_t>(seen.begin(), seen.begin() + 10), second);
  ImageBatches b(set, ImageBatchOptions().batch_size(4).seed(1));
  b.seek(3);
  EXPECT_TRUE(torch::equal(b.next().input, batches[3].input));
  ImageBatches plain(set, ImageBatchOptions().batch_size(3).shuffle(false));
  EXPECT_TRUE(torch::equal(
      plain.next().target, torch::tensor({0, 1, 2}, torch::kLong)));
}

}  // namespace
