#include "lowmem/io/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "lowmem/io/atomic_file.h"
#include "testing/errors.h"

namespace {

using lowmem::io::load_safetensors;
using lowmem::io::parse_safetensors;
using lowmem::io::save_safetensors;
using lowmem::io::serialize_safetensors;

// A scratch directory removed at the end of each test.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/lowmem_io_XXXXXX";
    char* d = ::mkdtemp(tmpl);
    EXPECT_NE(d, nullptr);
    path_ = d ? d : "/tmp";
  }
  ~TempDir() { std::system(("rm -rf '" + path_ + "'").c_str()); }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Builds a raw file from a header string and a data section.
std::string raw(const std::string& header, const std::string& data) {
  uint64_t n = header.size();
  std::string out(8, '\0');
  std::memcpy(&out[0], &n, 8);
  return out + header + data;
}

// Expects parse_safetensors(bytes) to throw with `substr` in the message.
void expect_rejected(const std::string& bytes, const std::string& substr) {
  try {
    parse_safetensors(bytes, "bad.safetensors");
    ADD_FAILURE() << "accepted; expected an error containing '" << substr << "'";
  } catch (const c10::Error& e) {
    std::string msg = e.what_without_backtrace();
    EXPECT_NE(msg.find(substr), std::string::npos) << msg;
    EXPECT_NE(msg.find("bad.safetensors"), std::string::npos) << msg;
  }
}

TEST(Safetensors, RoundTripsEveryDtype) {
  torch::manual_seed(0);
  std::map<std::string, at::Tensor> t;
  t["f64"] = torch::randn({3, 4}, torch::kDouble);
  t["f32"] = torch::randn({5}, torch::kFloat);
  t["f16"] = torch::randn({2, 3}).to(torch::kHalf);
  t["bf16"] = torch::randn({2, 2, 2}).to(torch::kBFloat16);
  t["i64"] = torch::randint(-1000, 1000, {7}, torch::kLong);
  t["i32"] = torch::randint(-1000, 1000, {2, 3}, torch::kInt);
  t["i16"] = torch::randint(-1000, 1000, {4}, torch::kShort);
  t["i8"] = torch::randint(-100, 100, {4}, torch::kChar);
  t["u8"] = torch::randint(0, 255, {6}, torch::kByte);
  t["bool"] = torch::rand({9}) > 0.5;
  t["scalar"] = torch::tensor(3.5, torch::kFloat);  // shape []
  t["empty"] = torch::empty({0, 3});                 // zero bytes
  t["transposed"] = torch::randn({3, 2}).t();        // non-contiguous input
  TempDir dir;
  std::string path = dir.file("all.safetensors");
  save_safetensors(path, t, {{"format", "pt"}});
  auto f = load_safetensors(path);
  ASSERT_EQ(f.tensors.size(), t.size());
  for (const auto& kv : t) {
    ASSERT_TRUE(f.tensors.count(kv.first)) << kv.first;
    const at::Tensor& got = f.tensors.at(kv.first);
    EXPECT_EQ(got.scalar_type(), kv.second.scalar_type()) << kv.first;
    EXPECT_EQ(got.sizes(), kv.second.sizes()) << kv.first;
    EXPECT_TRUE(torch::equal(got, kv.second)) << kv.first;
  }
  EXPECT_EQ(f.metadata.at("format"), "pt");
  // The in-memory parser agrees with the streaming file reader.
  auto g = parse_safetensors(lowmem::io::read_file(path), path);
  EXPECT_TRUE(torch::equal(g.tensors.at("f64"), t["f64"]));
}

TEST(Safetensors, WriterLayoutFollowsTheFormat) {
  std::string bytes = serialize_safetensors(
      {{"b", torch::ones({2}, torch::kFloat)}, {"a", torch::zeros({1}, torch::kDouble)}},
      {{"k", "v"}});
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);  // padded so data is 8-byte aligned
  EXPECT_EQ(bytes.size(), 8 + n + 8 + 8);
  auto header = nlohmann::json::parse(bytes.substr(8, n));
  EXPECT_EQ(header["__metadata__"]["k"], "v");
  EXPECT_EQ(header["a"]["dtype"], "F64");
  EXPECT_EQ(header["a"]["data_offsets"], nlohmann::json({0, 8}));
  EXPECT_EQ(header["b"]["dtype"], "F32");
  EXPECT_EQ(header["b"]["shape"], nlohmann::json({2}));
  EXPECT_EQ(header["b"]["data_offsets"], nlohmann::json({8, 16}));
}

TEST(Safetensors, ReadsAFileWrittenByTheReferenceLibraryLayout) {
  // Hand-built like Python's safetensors.torch.save: unpadded header allowed,
  // metadata optional, keys in any order.
  float vals[3] = {1.5f, -2.0f, 0.25f};
  std::string data(reinterpret_cast<const char*>(vals), 12);
  std::string hdr =
      R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},"__metadata__":{"format":"pt"}})";
  auto f = parse_safetensors(raw(hdr, data));
  EXPECT_TRUE(torch::equal(f.tensors.at("w"), torch::tensor({1.5f, -2.0f, 0.25f})));
  EXPECT_EQ(f.metadata.at("format"), "pt");
}

TEST(Safetensors, MetadataOnlyAndEmptyFiles) {
  auto f = parse_safetensors(serialize_safetensors({}, {{"a", "b"}}));
  EXPECT_TRUE(f.tensors.empty());
  EXPECT_EQ(f.metadata.at("a"), "b");
  auto g = parse_safetensors(serialize_safetensors({}));
  EXPECT_TRUE(g.tensors.empty() && g.metadata.empty());
}

TEST(Safetensors, RejectsTruncatedFiles) {
  std::string good = serialize_safetensors({{"w", torch::ones({4})}});
  expect_rejected(good.substr(0, 5), "too small");
  expect_rejected(good.substr(0, 20), "exceeds the file size");
  expect_rejected(good.substr(0, good.size() - 1), "exceed the data section");
  // Truncated on disk too.
  TempDir dir;
  std::string path = dir.file("t.safetensors");
  lowmem::io::atomic_write_file(path, good.substr(0, good.size() - 3));
  try {
    load_safetensors(path);
    ADD_FAILURE() << "truncated file accepted";
  } catch (const c10::Error& e) {
    std::string msg = e.what_without_backtrace();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  }
}

TEST(Safetensors, RejectsOversizedHeaders) {
  std::string bytes(16, '\0');
  uint64_t n = lowmem::io::kMaxSafetensorsHeaderBytes + 1;
  std::memcpy(&bytes[0], &n, 8);
  expect_rejected(bytes, "exceeds the limit");
  n = 1000;  // below the limit but larger than the file
  std::memcpy(&bytes[0], &n, 8);
  expect_rejected(bytes, "exceeds the file size");
}

TEST(Safetensors, RejectsBadJson) {
  expect_rejected(raw(R"({"w": {"dtype": "F32",)", ""), "invalid JSON");
  expect_rejected(raw(R"([1, 2])", ""), "does not start with '{'");
  expect_rejected(raw(R"({"w": 3})", ""), "must be a JSON object");
  expect_rejected(raw(R"({"__metadata__": {"a": 1}})", ""), "must be a string");
  expect_rejected(
      raw(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
          std::string(8, '\0')),
      "duplicate key 'w'");
  expect_rejected(raw(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0')),
                  "\"dtype\"");
}

// Issue 20: a deeply nested header crashed every reader (stack overflow
// while the offending value was formatted); values were echoed whole.
TEST(Safetensors, HostileHeadersGiveOneShortError) {
  using lowmem::testing::deep_json;
  using lowmem::testing::expect_short_error;
  const std::string deep = "{\"w\": " + deep_json(300000) + "}";
  expect_short_error([&] { parse_safetensors(raw(deep, ""), "deep"); },
                     "nesting deeper than the limit of 128 levels");
  TempDir dir;
  lowmem::io::atomic_write_file(dir.file("deep.safetensors"), raw(deep, ""));
  expect_short_error([&] { load_safetensors(dir.file("deep.safetensors")); },
                     "nesting deeper");
  // A 20 MB value is echoed clipped, with its length.
  const std::string big = std::string(20 << 20, 'x');
  expect_short_error(
      [&] { parse_safetensors(raw("{\"w\": \"" + big + "\"}", ""), "big"); },
      "must be a JSON object, got \"xxx");
  expect_short_error(
      [&] {
        parse_safetensors(raw("{\"w\": {\"dtype\": \"" + big + "\"}}", ""),
                          "big");
      },
      "unknown or unsupported dtype 'xxx");
  expect_short_error(
      [&] { parse_safetensors(raw("{\"" + big + "\": 1}", ""), "big"); },
      "(20971520 bytes)");
  // 100k dims: over the rank limit, the shape clipped.
  std::string dims = "[1";
  for (int i = 1; i < 100000; ++i) dims += ",1";
  dims += "]";
  expect_short_error(
      [&] {
        parse_safetensors(raw("{\"w\": {\"dtype\": \"F32\", \"shape\": " +
                                  dims + ", \"data_offsets\": [0, 4]}}",
                              std::string(4, '\0')),
                          "dims");
      },
      "has 100000 dims, over the limit of 64: [1,1,1");
}

TEST(Safetensors, RejectsWrongDtypes) {
  expect_rejected(
      raw(R"({"w":{"dtype":"F12","shape":[1],"data_offsets":[0,4]}})",
          std::string(4, '\0')),
      "unsupported dtype 'F12'");
  expect_rejected(
      raw(R"({"w":{"dtype":"U32","shape":[1],"data_offsets":[0,4]}})",
          std::string(4, '\0')),
      "'U32'");
  // Right length for F32, wrong for F64.
  expect_rejected(raw(R"({"w":{"dtype":"F64","shape":[1],"data_offsets":[0,4]}})",
                      std::string(4, '\0')),
                  "needs 8 bytes");
  EXPECT_THROW(serialize_safetensors({{"c", torch::zeros({2}, torch::kComplexFloat)}}),
               c10::Error);
}

TEST(Safetensors, RejectsBadOffsets) {
  const std::string d8(8, '\0');
  expect_rejected(raw(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", d8 + d8),
                  "unused trailing bytes");
  expect_rejected(raw(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", d8),
                  "gap of 4 bytes");
  expect_rejected(
      raw(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
          d8 + d8),
      "overlaps tensor 'a'");
  expect_rejected(raw(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", d8),
                  "begin > end");
  expect_rejected(raw(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", d8),
                  "data_offsets");
  expect_rejected(raw(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", d8),
                  "bad shape entry");
  expect_rejected(
      raw(R"({"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}})", d8),
      "overflows");
}

TEST(AtomicFile, ReplacesAndLeavesNoTemporaryOnFailure) {
  TempDir dir;
  std::string path = dir.file("x.bin");
  lowmem::io::atomic_write_file(path, std::string("first"));
  EXPECT_EQ(lowmem::io::read_file(path), "first");
  EXPECT_THROW(lowmem::io::atomic_write_file(path,
                                             [](std::ostream& out) {
                                               out << "partial";
                                               throw std::runtime_error("boom");
                                             }),
               std::runtime_error);
  EXPECT_EQ(lowmem::io::read_file(path), "first");  // old content kept
  // Only x.bin remains in the directory (no stray temporaries).
  std::string ls_out = dir.file("ls.txt");
  std::system(("ls -A '" + dir.path() + "' > '" + ls_out + "'").c_str());
  EXPECT_EQ(lowmem::io::read_file(ls_out), "ls.txt\nx.bin\n");
  EXPECT_THROW(lowmem::io::atomic_write_file(dir.file("no/such/dir/f"), std::string("x")),
               c10::Error);
}

}  // namespace
