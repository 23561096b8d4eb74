// GGUF writer and reader: the byte layout of a hand-checked file, round
// trips of every value and tensor type, Q8_0 against its definition, and the
// reader's refusals. Loading in llama.cpp itself is checked in
// tests/interop/gguf_llama_cpp_test.cpp.
#include "lowmem/io/gguf.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstring>
#include <sstream>

#include "lowmem/io/atomic_file.h"
#include "testing/errors.h"
#include "testing/files.h"

namespace {

using lowmem::io::GgmlType;
using lowmem::io::GgufHeader;
using lowmem::io::GgufMetadata;
using lowmem::io::GgufTensor;
using lowmem::io::GgufValue;
using lowmem::io::GgufValueType;
using lowmem::testing::expect_error_containing;

std::string serialize(const GgufMetadata& m, const std::vector<GgufTensor>& t) {
  std::ostringstream out(std::ios::binary);
  lowmem::io::write_gguf(out, m, t);
  return out.str();
}

GgufHeader parse(const std::string& bytes,
                 const lowmem::io::GgufLimits& limits = {}) {
  std::istringstream in(bytes, std::ios::binary);
  return lowmem::io::parse_gguf_header(in, bytes.size(), "test.gguf", limits);
}

void expect_gguf_rejected(const std::string& bytes, const std::string& needle,
                          const lowmem::io::GgufLimits& limits = {}) {
  expect_error_containing([&] { parse(bytes, limits); }, needle);
}

// Little-endian pieces for hand-built files.
std::string u32(uint32_t v) {
  return std::string(reinterpret_cast<const char*>(&v), 4);
}
std::string u64(uint64_t v) {
  return std::string(reinterpret_cast<const char*>(&v), 8);
}
std::string str(const std::string& s) { return u64(s.size()) + s; }

TEST(Gguf, WritesTheDocumentedByteLayout) {
  // One u32 key, one string key, a 2x3 F32 tensor and a 3-element F16 one.
  const at::Tensor w = torch::arange(6, torch::kFloat).reshape({2, 3});
  const at::Tensor b = torch::tensor({1.0f, -2.0f, 0.5f});
  const std::string bytes =
      serialize({{"general.alignment", GgufValue::uint32(32)},
                 {"general.name", GgufValue::string("tiny")}},
                {{"w", w, GgmlType::kF32}, {"b", b, GgmlType::kF16}});
  std::string expected = "GGUF" + u32(3) + u64(2) + u64(2);
  expected += str("general.alignment") + u32(4) + u32(32);
  expected += str("general.name") + u32(8) + str("tiny");
  // dims innermost first: [3, 2]; type F32 = 0, offset 0.
  expected += str("w") + u32(2) + u64(3) + u64(2) + u32(0) + u64(0);
  // 24 bytes of w padded to 32: b at offset 32, type F16 = 1.
  expected += str("b") + u32(1) + u64(3) + u32(1) + u64(32);
  expected.append((32 - expected.size() % 32) % 32, '\0');
  const size_t data_start = expected.size();
  for (int i = 0; i < 6; ++i) {
    const float f = static_cast<float>(i);
    expected.append(reinterpret_cast<const char*>(&f), 4);
  }
  expected.append(8, '\0');
  for (float f : {1.0f, -2.0f, 0.5f}) {
    const uint16_t h = c10::Half(f).x;
    expected.append(reinterpret_cast<const char*>(&h), 2);
  }
  expected.append(32 - 6, '\0');
  ASSERT_EQ(bytes.size(), expected.size());
  EXPECT_EQ(bytes, expected);
  const GgufHeader h = parse(bytes);
  EXPECT_EQ(h.data_offset, data_start);
  EXPECT_EQ(h.tensor("b").offset, 32u);
}

GgufMetadata every_value_type() {
  using T = GgufValueType;
  return {
      {"u8", GgufValue::integer(T::kUint8, 255)},
      {"i8", GgufValue::integer(T::kInt8, -128)},
      {"u16", GgufValue::integer(T::kUint16, 65535)},
      {"i16", GgufValue::integer(T::kInt16, -32768)},
      {"u32", GgufValue::uint32(4000000000u)},
      {"i32", GgufValue::int32(-2000000000)},
      {"f32", GgufValue::float32(-1.25e-7f)},
      {"bool", GgufValue::boolean(true)},
      {"str", GgufValue::string("héllo\nworld")},
      {"u64", GgufValue::uint64(~uint64_t{0})},
      {"i64", GgufValue::integer(T::kInt64, INT64_MIN)},
      {"f64", GgufValue::float64(3.141592653589793)},
      {"arr.i32", GgufValue::integers(T::kInt32, {1, -2, 3})},
      {"arr.u8", GgufValue::integers(T::kUint8, {0, 255})},
      {"arr.bool", GgufValue::integers(T::kBool, {1, 0, 1})},
      {"arr.f32", GgufValue::float32s({0.5f, -1e30f})},
      {"arr.str", GgufValue::strings({"a", "", "Ġthe"})},
      {"arr.empty", GgufValue::strings({})},
  };
}

TEST(Gguf, RoundTripsEveryValueAndTensorType) {
  torch::manual_seed(0);
  const at::Tensor a = torch::randn({4, 64});
  const at::Tensor c = torch::randn({2, 3, 32}, torch::kDouble);
  const at::Tensor d = torch::randn({5}).to(torch::kBFloat16);
  const at::Tensor e = torch::randn({64, 2}).t();  // non-contiguous
  const GgufMetadata meta = every_value_type();
  const std::vector<GgufTensor> tensors = {{"a.f32", a, GgmlType::kF32},
                                           {"c.q8", c, GgmlType::kQ8_0},
                                           {"d.bf16", d, GgmlType::kBF16},
                                           {"e.f16", e, GgmlType::kF16}};
  const auto dir = lowmem::testing::fresh_temp_dir("gguf_roundtrip");
  const std::string path = (dir / "m.gguf").string();
  lowmem::io::save_gguf(path, meta, tensors);
  const GgufHeader h = lowmem::io::read_gguf_header(path);
  EXPECT_EQ(h.version, 3u);
  EXPECT_EQ(h.alignment, 32u);
  ASSERT_EQ(h.metadata.size(), meta.size());
  for (size_t i = 0; i < meta.size(); ++i) {
    EXPECT_EQ(h.metadata[i].first, meta[i].first);
    EXPECT_TRUE(h.metadata[i].second == meta[i].second)
        << meta[i].first << ": " << h.metadata[i].second.describe();
  }
  EXPECT_EQ(h.at("i64").as_int(), INT64_MIN);
  EXPECT_EQ(h.at("u64").as_uint(), ~uint64_t{0});
  EXPECT_EQ(h.at("i8").as_int(), -128);
  EXPECT_EQ(h.at("arr.i32").as_int(1), -2);
  EXPECT_FLOAT_EQ(h.at("f32").as_double(), -1.25e-7f);
  EXPECT_EQ(h.at("arr.str").str(2), "Ġthe");
  for (const auto& t : h.tensors) EXPECT_EQ(t.offset % 32, 0u) << t.name;

  const auto read = [&](const char* n) {
    return lowmem::io::read_gguf_tensor(path, h, n);
  };
  EXPECT_TRUE(torch::equal(read("a.f32"), a));
  EXPECT_TRUE(torch::equal(read("d.bf16"), d));
  const at::Tensor e16 = read("e.f16");
  EXPECT_EQ(e16.scalar_type(), torch::kHalf);
  EXPECT_TRUE(torch::equal(e16, e.to(torch::kHalf)));
  const at::Tensor c8 = read("c.q8");
  EXPECT_EQ(c8.sizes(), c.sizes());
  EXPECT_TRUE(
      torch::equal(c8, lowmem::io::dequantize_q8_0(lowmem::io::quantize_q8_0(c),
                                                   c.sizes().vec())));
  // Q8_0's error is at most half a step (d / 2) per block, plus 127 times
  // the f16 rounding of d (relative 2^-11).
  const at::Tensor step =
      c.to(torch::kFloat).abs().reshape({-1, 32}).amax(1, true) / 127.0;
  EXPECT_TRUE(((c8 - c).abs().reshape({-1, 32}) <= step * 0.57 + 1e-6)
                  .all()
                  .item<bool>());
  std::filesystem::remove_all(dir);
}

TEST(Gguf, Q8ZeroFollowsItsDefinition) {
  // One block: amax 8, d = 8/127 stored as f16, q = roundf(x / d) with the
  // unrounded d (ggml-quants.c quantize_row_q8_0_ref).
  const at::Tensor x = torch::arange(-16, 16, torch::kFloat) * 0.5f;
  const at::Tensor q = lowmem::io::quantize_q8_0(x);
  ASSERT_EQ(q.numel(), 34);
  const float d = 8.0f / 127.0f;
  uint16_t scale = 0;
  std::memcpy(&scale, q.data_ptr<uint8_t>(), 2);
  EXPECT_EQ(scale, c10::Half(d).x);
  const float id = 1.0f / d;
  for (int j = 0; j < 32; ++j) {
    int8_t got = 0;
    std::memcpy(&got, q.data_ptr<uint8_t>() + 2 + j, 1);
    const float v = (static_cast<float>(j) - 16.0f) * 0.5f;
    EXPECT_EQ(got, static_cast<int8_t>(std::roundf(v * id))) << j;
  }
  int8_t first = 0;  // x = -8 = -amax
  std::memcpy(&first, q.data_ptr<uint8_t>() + 2, 1);
  EXPECT_EQ(first, -127);
  // An all-zero block has scale 0 and zeros.
  const at::Tensor z = lowmem::io::quantize_q8_0(torch::zeros({32}));
  EXPECT_EQ(z.sum().item<int64_t>(), 0);
}

// A small valid file for the refusal tests.
std::string small_file() {
  return serialize(
      {{"general.name", GgufValue::string("x")},
       {"arr", GgufValue::integers(GgufValueType::kInt32, {1, 2})}},
      {{"w", torch::ones({2, 32}), GgmlType::kQ8_0},
       {"b", torch::ones({3}), GgmlType::kF32}});
}

TEST(Gguf, RejectsEveryTruncation) {
  const std::string good = small_file();
  ASSERT_NO_THROW(parse(good));
  for (size_t n = 0; n < good.size(); ++n) {
    // Only the last tensor's padding may go missing (as llama.cpp's loader).
    if (n >= good.size() - (32 - 12)) continue;
    EXPECT_THROW(parse(good.substr(0, n)), c10::Error) << n;
  }
}

TEST(Gguf, RejectsBadHeaders) {
  const std::string good = small_file();
  std::string bad = good;
  bad[0] = 'X';
  expect_gguf_rejected(bad, "not a GGUF file");
  for (uint32_t v : {0u, 1u, 4u}) {
    bad = good;
    std::memcpy(&bad[4], &v, 4);
    expect_gguf_rejected(bad, "GGUF version " + std::to_string(v));
  }
  bad = good;
  const uint64_t many = uint64_t{1} << 40;
  std::memcpy(&bad[8], &many, 8);
  expect_gguf_rejected(bad, "tensors (limit");
  bad = good;
  std::memcpy(&bad[16], &many, 8);
  expect_gguf_rejected(bad, "metadata pairs (limit");
  // The first key's length.
  bad = good;
  std::memcpy(&bad[24], &many, 8);
  expect_gguf_rejected(bad, "bytes long (limit");
  expect_gguf_rejected(good, "metadata pairs (limit",
                       lowmem::io::GgufLimits().max_metadata(1));
  expect_gguf_rejected(good, "exceeds 64 bytes",
                       lowmem::io::GgufLimits().max_header_bytes(64));
}

TEST(Gguf, RejectsBadValues) {
  const std::string head = "GGUF" + u32(3) + u64(0) + u64(1) + str("k");
  expect_gguf_rejected(head + u32(13) + u32(0), "unknown value type 13");
  expect_gguf_rejected(head + u32(9) + u32(9) + u64(1), "array of arrays");
  expect_gguf_rejected(head + u32(9) + u32(4) + u64(uint64_t{1} << 30),
                       "elements (limit");
  expect_gguf_rejected(head + u32(9) + u32(4) + u64(1000) + u32(1),
                       "more than the bytes left");
  expect_gguf_rejected(head + u32(8) + u64(100) + "abc", "bytes long");
  const std::string dup = "GGUF" + u32(3) + u64(0) + u64(2) + str("k") +
                          u32(4) + u32(1) + str("k") + u32(4) + u32(2);
  expect_gguf_rejected(dup, "duplicate metadata key 'k'");
  const std::string align = "GGUF" + u32(3) + u64(0) + u64(1) +
                            str("general.alignment") + u32(4) + u32(48);
  expect_gguf_rejected(align, "not a power of two");
  const std::string align64 = "GGUF" + u32(3) + u64(0) + u64(1) +
                              str("general.alignment") + u32(10) + u64(64);
  expect_gguf_rejected(align64, "must be a u32");
}

// A file with one tensor info whose fields the caller chooses.
std::string one_tensor(const std::string& name, std::vector<uint64_t> dims,
                       uint32_t type, uint64_t offset, size_t data) {
  std::string s = "GGUF" + u32(3) + u64(1) + u64(0) + str(name) +
                  u32(static_cast<uint32_t>(dims.size()));
  for (uint64_t d : dims) s += u64(d);
  s += u32(type) + u64(offset);
  s.append((32 - s.size() % 32) % 32, '\0');
  return s + std::string(data, '\0');
}

TEST(Gguf, RejectsBadTensorInfos) {
  ASSERT_NO_THROW(parse(one_tensor("w", {4, 2}, 0, 0, 32)));
  expect_gguf_rejected(one_tensor(std::string(64, 'n'), {4}, 0, 0, 16),
                       "longer than 63 bytes");
  expect_gguf_rejected(one_tensor("w", {1, 1, 1, 1, 1}, 0, 0, 4), "rank 5");
  expect_gguf_rejected(one_tensor("w", {}, 0, 0, 4), "rank 0");
  expect_gguf_rejected(one_tensor("w", {0}, 0, 0, 4), "has dim 0");
  expect_gguf_rejected(
      one_tensor("w", {uint64_t{1} << 40, uint64_t{1} << 40}, 0, 0, 4),
      "too many elements");
  expect_gguf_rejected(one_tensor("w", {256}, 12, 0, 256), "ggml type 12");
  expect_gguf_rejected(one_tensor("w", {48}, 8, 0, 64), "not a multiple of 32");
  expect_gguf_rejected(one_tensor("w", {4}, 0, 32, 64),
                       "has offset 32, expected 0");
  expect_gguf_rejected(one_tensor("w", {4, 2}, 0, 0, 31), "runs past the end");
}

TEST(Gguf, WriterRefusesWhatLlamaCppCannotLoad) {
  const auto write = [](const GgufMetadata& m, const GgufTensor& t) {
    serialize(m, {t});
  };
  const at::Tensor ones = torch::ones({2, 32});
  expect_error_containing(
      [&] {
        write({{"k", GgufValue::uint32(1)}, {"k", GgufValue::uint32(2)}},
              {"w", ones});
      },
      "duplicate key 'k'");
  expect_error_containing(
      [&] {
        serialize({}, {{"w", ones}, {"w", ones}});
      },
      "duplicate tensor name 'w'");
  expect_error_containing(
      [&] {
        write({}, {std::string(64, 'n'), ones});
      },
      "(at most 63)");
  expect_error_containing(
      [&] {
        write({}, {"w", torch::ones({2}, torch::kLong)});
      },
      "(floats only)");
  expect_error_containing(
      [&] {
        write({}, {"w", torch::ones({2, 30}), GgmlType::kQ8_0});
      },
      "not a multiple of 32");
  expect_error_containing(
      [&] {
        write({}, {"w", torch::full({32}, NAN), GgmlType::kQ8_0});
      },
      "finite");
  expect_error_containing(
      [&] {
        write({{"general.alignment", GgufValue::uint32(24)}}, {"w", ones});
      },
      "power of two");
  expect_error_containing(
      [&] {
        write({}, {"w", torch::ones({1, 1, 1, 1, 1})});
      },
      "rank 5");
}

TEST(Gguf, HonoursGeneralAlignmentAndWritesAtomically) {
  const std::string bytes =
      serialize({{"general.alignment", GgufValue::uint32(64)}},
                {{"a", torch::ones({3})}, {"b", torch::ones({5})}});
  const GgufHeader h = parse(bytes);
  EXPECT_EQ(h.alignment, 64u);
  EXPECT_EQ(h.data_offset % 64, 0u);
  EXPECT_EQ(h.tensor("b").offset, 64u);
  // A failure half-way (the second tensor cannot be Q8_0) leaves the old file.
  const auto dir = lowmem::testing::fresh_temp_dir("gguf_atomic");
  const std::string path = (dir / "m.gguf").string();
  lowmem::io::atomic_write_file(path, std::string("old"));
  EXPECT_THROW(
      lowmem::io::save_gguf(path, {},
                            {{"a", torch::ones({32})},
                             {"b", torch::full({32}, NAN), GgmlType::kQ8_0}}),
      c10::Error);
  EXPECT_EQ(lowmem::testing::read_file(path), "old");
  std::filesystem::remove_all(dir);
}

}  // namespace
