#include "lowmem/io/gguf.h"

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "lowmem/core/check.h"
#include "lowmem/core/input.h"
#include "lowmem/io/atomic_file.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "lowmem's GGUF code assumes a little-endian host"
#endif

namespace lowmem::io {
namespace {

constexpr int64_t kQ8Block = 32;        // QK8_0
constexpr uint64_t kQ8BlockBytes = 34;  // f16 scale + 32 int8

bool is_integer(GgufValueType t) {
  return gguf_value_type_bytes(t) != 0 && t != GgufValueType::kFloat32 &&
         t != GgufValueType::kFloat64;
}

bool known_value_type(uint32_t code) {
  return code <= static_cast<uint32_t>(GgufValueType::kFloat64);
}

// Range of an integer type as int64 (u64 handled by the caller).
std::pair<int64_t, int64_t> int_range(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8:
      return {0, 255};
    case GgufValueType::kInt8:
      return {-128, 127};
    case GgufValueType::kBool:
      return {0, 1};
    case GgufValueType::kUint16:
      return {0, 65535};
    case GgufValueType::kInt16:
      return {-32768, 32767};
    case GgufValueType::kUint32:
      return {0, int64_t{4294967295}};
    case GgufValueType::kInt32:
      return {std::numeric_limits<int32_t>::min(),
              std::numeric_limits<int32_t>::max()};
    case GgufValueType::kUint64:
      return {0, std::numeric_limits<int64_t>::max()};
    default:
      return {std::numeric_limits<int64_t>::min(),
              std::numeric_limits<int64_t>::max()};
  }
}

uint64_t int_bits(GgufValueType type, int64_t v) {
  LOWMEM_CHECK(is_integer(type), "[gguf] ", gguf_value_type_name(type),
               " is not an integer type");
  const auto range = int_range(type);
  LOWMEM_CHECK(v >= range.first && v <= range.second, "[gguf] value ", v,
               " is out of range for ", gguf_value_type_name(type));
  return static_cast<uint64_t>(v);
}

uint64_t f32_bits(float v) {
  uint32_t b = 0;
  std::memcpy(&b, &v, 4);
  return b;
}

uint64_t f64_bits(double v) {
  uint64_t b = 0;
  std::memcpy(&b, &v, 8);
  return b;
}

}  // namespace

uint64_t gguf_value_type_bytes(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
      return 2;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kFloat32:
      return 4;
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
    case GgufValueType::kFloat64:
      return 8;
    default:
      return 0;
  }
}

std::string gguf_value_type_name(GgufValueType t) {
  static const char* kNames[] = {"u8",  "i8",  "u16",  "i16", "u32",
                                 "i32", "f32", "bool", "str", "arr",
                                 "u64", "i64", "f64"};
  const auto code = static_cast<uint32_t>(t);
  if (code < sizeof(kNames) / sizeof(kNames[0])) return kNames[code];
  return "type " + std::to_string(code);
}

GgufValue::GgufValue(GgufValueType type, bool array, std::vector<uint64_t> bits,
                     std::vector<std::string> strings)
    : type_(type),
      array_(array),
      bits_(std::move(bits)),
      strings_(std::move(strings)) {
  LOWMEM_CHECK(known_value_type(static_cast<uint32_t>(type)) &&
                   type != GgufValueType::kArray,
               "[gguf] bad value type ", gguf_value_type_name(type));
  const size_t n =
      type == GgufValueType::kString ? strings_.size() : bits_.size();
  LOWMEM_CHECK(
      type == GgufValueType::kString ? bits_.empty() : strings_.empty(),
      "[gguf] a ", gguf_value_type_name(type),
      " value holds elements of another kind");
  LOWMEM_CHECK(array_ || n == 1, "[gguf] a scalar holds ", n, " elements");
}

GgufValue GgufValue::integer(GgufValueType type, int64_t v) {
  return GgufValue(type, false, {int_bits(type, v)}, {});
}
GgufValue GgufValue::uint32(uint32_t v) {
  return GgufValue(GgufValueType::kUint32, false, {v}, {});
}
GgufValue GgufValue::int32(int32_t v) {
  return integer(GgufValueType::kInt32, v);
}
GgufValue GgufValue::uint64(uint64_t v) {
  return GgufValue(GgufValueType::kUint64, false, {v}, {});
}
GgufValue GgufValue::float32(float v) {
  return GgufValue(GgufValueType::kFloat32, false, {f32_bits(v)}, {});
}
GgufValue GgufValue::float64(double v) {
  return GgufValue(GgufValueType::kFloat64, false, {f64_bits(v)}, {});
}
GgufValue GgufValue::boolean(bool v) {
  return GgufValue(GgufValueType::kBool, false, {v ? 1u : 0u}, {});
}
GgufValue GgufValue::string(std::string v) {
  return GgufValue(GgufValueType::kString, false, {}, {std::move(v)});
}
GgufValue GgufValue::integers(GgufValueType type,
                              const std::vector<int64_t>& v) {
  std::vector<uint64_t> bits;
  bits.reserve(v.size());
  for (int64_t x : v) bits.push_back(int_bits(type, x));
  return GgufValue(type, true, std::move(bits), {});
}
GgufValue GgufValue::float32s(const std::vector<float>& v) {
  std::vector<uint64_t> bits;
  bits.reserve(v.size());
  for (float x : v) bits.push_back(f32_bits(x));
  return GgufValue(GgufValueType::kFloat32, true, std::move(bits), {});
}
GgufValue GgufValue::strings(std::vector<std::string> v) {
  return GgufValue(GgufValueType::kString, true, {}, std::move(v));
}

size_t GgufValue::size() const {
  return type_ == GgufValueType::kString ? strings_.size() : bits_.size();
}

const std::string& GgufValue::str(size_t i) const {
  LOWMEM_CHECK(type_ == GgufValueType::kString,
               "[gguf] expected a string, got ", describe());
  LOWMEM_CHECK(i < strings_.size(), "[gguf] index ", i, " past ", describe());
  return strings_[i];
}

const std::vector<std::string>& GgufValue::strs() const {
  LOWMEM_CHECK(type_ == GgufValueType::kString, "[gguf] expected strings, got ",
               describe());
  return strings_;
}

int64_t GgufValue::as_int(size_t i) const {
  LOWMEM_CHECK(is_integer(type_), "[gguf] expected an integer, got ",
               describe());
  LOWMEM_CHECK(i < bits_.size(), "[gguf] index ", i, " past ", describe());
  const uint64_t b = bits_[i];
  LOWMEM_CHECK(
      type_ != GgufValueType::kUint64 ||
          b <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
      "[gguf] u64 value ", b, " does not fit an int64");
  return static_cast<int64_t>(b);
}

uint64_t GgufValue::as_uint(size_t i) const {
  if (type_ == GgufValueType::kUint64) {
    LOWMEM_CHECK(i < bits_.size(), "[gguf] index ", i, " past ", describe());
    return bits_[i];
  }
  const int64_t v = as_int(i);
  LOWMEM_CHECK(v >= 0, "[gguf] expected a non-negative integer, got ", v);
  return static_cast<uint64_t>(v);
}

double GgufValue::as_double(size_t i) const {
  if (type_ == GgufValueType::kFloat32 || type_ == GgufValueType::kFloat64) {
    LOWMEM_CHECK(i < bits_.size(), "[gguf] index ", i, " past ", describe());
    if (type_ == GgufValueType::kFloat64) {
      double d = 0;
      std::memcpy(&d, &bits_[i], 8);
      return d;
    }
    const auto b = static_cast<uint32_t>(bits_[i]);
    float f = 0;
    std::memcpy(&f, &b, 4);
    return f;
  }
  if (type_ == GgufValueType::kUint64) return static_cast<double>(as_uint(i));
  return static_cast<double>(as_int(i));
}

std::string GgufValue::describe() const {
  const std::string t = gguf_value_type_name(type_);
  if (array_) return "arr[" + t + "," + std::to_string(size()) + "]";
  if (type_ == GgufValueType::kString) return "str " + quote(strings_[0]);
  std::ostringstream s;
  s << t << " ";
  if (type_ == GgufValueType::kFloat32 || type_ == GgufValueType::kFloat64) {
    s << as_double();
  } else if (type_ == GgufValueType::kUint64) {
    s << bits_[0];
  } else {
    s << static_cast<int64_t>(bits_[0]);
  }
  return s.str();
}

bool GgufValue::operator==(const GgufValue& o) const {
  return type_ == o.type_ && array_ == o.array_ && bits_ == o.bits_ &&
         strings_ == o.strings_;
}

const GgufValue* gguf_find(const GgufMetadata& metadata, std::string_view key) {
  for (const auto& kv : metadata) {
    if (kv.first == key) return &kv.second;
  }
  return nullptr;
}

std::string ggml_type_name(GgmlType t) {
  switch (t) {
    case GgmlType::kF32:
      return "F32";
    case GgmlType::kF16:
      return "F16";
    case GgmlType::kQ8_0:
      return "Q8_0";
    case GgmlType::kBF16:
      return "BF16";
  }
  return "ggml type " + std::to_string(static_cast<uint32_t>(t));
}

GgmlType ggml_type_from_name(const std::string& name) {
  std::string upper = name;
  for (char& c : upper) c = static_cast<char>(std::toupper(c));
  for (GgmlType t :
       {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16, GgmlType::kQ8_0}) {
    if (upper == ggml_type_name(t)) return t;
  }
  LOWMEM_CHECK(false, "[gguf] unknown tensor type ", quote(name),
               " (known: f32, f16, bf16, q8_0)");
  return GgmlType::kF32;
}

uint64_t ggml_row_bytes(GgmlType t, int64_t n) {
  LOWMEM_CHECK(n >= 0, "[gguf] negative row length ", n);
  switch (t) {
    case GgmlType::kF32:
      return static_cast<uint64_t>(n) * 4;
    case GgmlType::kF16:
    case GgmlType::kBF16:
      return static_cast<uint64_t>(n) * 2;
    case GgmlType::kQ8_0:
      LOWMEM_CHECK(n % kQ8Block == 0, "[gguf] Q8_0 rows hold a multiple of ",
                   kQ8Block, " values, got ", n);
      return static_cast<uint64_t>(n / kQ8Block) * kQ8BlockBytes;
  }
  LOWMEM_CHECK(false, "[gguf] unsupported ", ggml_type_name(t));
  return 0;
}

at::Tensor quantize_q8_0(const at::Tensor& x) {
  LOWMEM_CHECK(
      x.defined() && at::isFloatingType(x.scalar_type()) && x.dim() >= 1,
      "[gguf] Q8_0 quantizes a float tensor of rank >= 1");
  const int64_t n = x.numel();
  LOWMEM_CHECK(x.size(-1) % kQ8Block == 0,
               "[gguf] Q8_0 needs the last dim "
               "to be a multiple of ",
               kQ8Block, ", got shape ", x.sizes());
  const at::Tensor f = x.detach().to(at::kCPU, at::kFloat).contiguous();
  LOWMEM_CHECK(at::isfinite(f).all().item<bool>(),
               "[gguf] Q8_0 needs finite values");
  const int64_t blocks = n / kQ8Block;
  at::Tensor out = at::empty({blocks * static_cast<int64_t>(kQ8BlockBytes)},
                             at::TensorOptions().dtype(at::kByte));
  const float* src = f.data_ptr<float>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  for (int64_t b = 0; b < blocks; ++b) {
    const float* v = src + b * kQ8Block;
    uint8_t* o = dst + b * static_cast<int64_t>(kQ8BlockBytes);
    float amax = 0.0f;
    for (int64_t j = 0; j < kQ8Block; ++j)
      amax = std::max(amax, std::fabs(v[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const uint16_t dh = c10::Half(d).x;
    std::memcpy(o, &dh, 2);
    for (int64_t j = 0; j < kQ8Block; ++j) {
      const auto q = static_cast<int8_t>(std::round(v[j] * id));
      std::memcpy(o + 2 + j, &q, 1);
    }
  }
  return out;
}

at::Tensor dequantize_q8_0(const at::Tensor& blocks,
                           const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  LOWMEM_CHECK(!shape.empty() && shape.back() % kQ8Block == 0,
               "[gguf] Q8_0 shape must end in a multiple of ", kQ8Block);
  const at::Tensor b = blocks.to(at::kCPU).contiguous();
  LOWMEM_CHECK(b.scalar_type() == at::kByte &&
                   static_cast<uint64_t>(b.numel()) ==
                       static_cast<uint64_t>(n / kQ8Block) * kQ8BlockBytes,
               "[gguf] Q8_0 data of ", b.numel(), " bytes does not fit shape ",
               c10::IntArrayRef(shape));
  at::Tensor out = at::empty(shape, at::TensorOptions().dtype(at::kFloat));
  const uint8_t* src = b.data_ptr<uint8_t>();
  float* dst = out.data_ptr<float>();
  for (int64_t i = 0; i < n / kQ8Block; ++i) {
    const uint8_t* blk = src + i * static_cast<int64_t>(kQ8BlockBytes);
    c10::Half d;
    std::memcpy(&d.x, blk, 2);
    const float scale = static_cast<float>(d);
    for (int64_t j = 0; j < kQ8Block; ++j) {
      int8_t q = 0;
      std::memcpy(&q, blk + 2 + j, 1);
      dst[i * kQ8Block + j] = static_cast<float>(q) * scale;
    }
  }
  return out;
}

}  // namespace lowmem::io
