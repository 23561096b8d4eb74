// GGUF, llama.cpp's model file (ggml-org/llama.cpp docs/gguf.md and
// ggml/src/gguf.cpp, version 3), own implementation: a little-endian header
// "GGUF", u32 version, u64 tensor count, u64 metadata count; metadata pairs
// (u64-length UTF-8 key, u32 value type, value; arrays carry a u32 element
// type and a u64 count); tensor infos (name, u32 n_dims, u64 dims innermost
// first, u32 ggml type, u64 offset into the data section); zero padding to
// general.alignment (u32, default 32); the data, each tensor padded to the
// alignment. Tensor types: F32, F16, BF16 and Q8_0 (blocks of 32 values: an
// f16 scale d = max|x| / 127 and 32 int8 round(x / d), as ggml-quants.c's
// quantize_row_q8_0_ref).
// Deviations: the reader bounds every count and length up front (GgufLimits;
// llama.cpp bounds them only by the file size and 2^30) and reads only the
// four tensor types above (k-quants and the rest are an error naming the type).
// Tensors are written in the order given, at offsets that are the running
// padded sum, as llama.cpp requires of a file it loads.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <cstdint>
#include <iosfwd>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace lowmem::io {

/// gguf_type codes (ggml/include/gguf.h).
enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

/// "u32", "str", ... as gguf.cpp names them ("type 99" for an unknown code).
std::string gguf_value_type_name(GgufValueType t);
/// Bytes of one element of a numeric type (0 for kString and kArray).
uint64_t gguf_value_type_bytes(GgufValueType t);

/// One metadata value: a scalar or an array of one element type (arrays of
/// arrays, which the format allows and llama.cpp refuses, are refused too).
class GgufValue {
 public:
  /// An integer scalar of `type` (u8..i64, bool); throws when `v` is out of
  /// the type's range. uint64 values above INT64_MAX: use uint64().
  static GgufValue integer(GgufValueType type, int64_t v);
  static GgufValue uint32(uint32_t v);
  static GgufValue int32(int32_t v);
  static GgufValue uint64(uint64_t v);
  static GgufValue float32(float v);
  static GgufValue float64(double v);
  static GgufValue boolean(bool v);
  static GgufValue string(std::string v);
  /// Arrays.
  static GgufValue integers(GgufValueType type, const std::vector<int64_t>& v);
  static GgufValue float32s(const std::vector<float>& v);
  static GgufValue strings(std::vector<std::string> v);

  /// The scalar's type, or the array's element type (never kArray).
  GgufValueType type() const { return type_; }
  bool is_array() const { return array_; }
  /// Elements (1 for a scalar).
  size_t size() const;

  /// Element i as a string; throws unless the type is kString.
  const std::string& str(size_t i = 0) const;
  const std::vector<std::string>& strs() const;
  /// Element i of an integer or bool value; throws for other types and for a
  /// u64 above INT64_MAX.
  int64_t as_int(size_t i = 0) const;
  /// Element i of an unsigned, or a non-negative signed, integer.
  uint64_t as_uint(size_t i = 0) const;
  /// Element i of a float type (integers are converted too).
  double as_double(size_t i = 0) const;

  /// A short description for messages: "u32 32", "arr[str,32000]".
  std::string describe() const;

  bool operator==(const GgufValue& o) const;
  bool operator!=(const GgufValue& o) const { return !(*this == o); }

  /// Raw form used by the reader and writer: numeric elements as their bits
  /// (integers sign-extended, f32 in the low 32 bits, f64 whole).
  GgufValue(GgufValueType type, bool array, std::vector<uint64_t> bits,
            std::vector<std::string> strings);
  const std::vector<uint64_t>& bits() const { return bits_; }

 private:
  GgufValueType type_ = GgufValueType::kUint32;
  bool array_ = false;
  std::vector<uint64_t> bits_;
  std::vector<std::string> strings_;
};

/// Metadata pairs in file order.
using GgufMetadata = std::vector<std::pair<std::string, GgufValue>>;

/// The value of `key`, or nullptr.
const GgufValue* gguf_find(const GgufMetadata& metadata, std::string_view key);

/// ggml_type codes of the tensor types lowmem writes and reads.
enum class GgmlType : uint32_t { kF32 = 0, kF16 = 1, kQ8_0 = 8, kBF16 = 30 };

/// "F32", "F16", "BF16", "Q8_0" (ggml_type_name spells them in lower case).
std::string ggml_type_name(GgmlType t);
/// From "F32", "f16", "bf16", "q8_0" (any case); throws naming the string.
GgmlType ggml_type_from_name(const std::string& name);
/// Bytes of a row of `n` values (n must be a multiple of 32 for Q8_0).
uint64_t ggml_row_bytes(GgmlType t, int64_t n);

/// Q8_0 blocks of `x` (any float dtype, last dim a multiple of 32) as a
/// uint8 tensor of 34 bytes per 32 values, in row-major order.
at::Tensor quantize_q8_0(const at::Tensor& x);
/// Inverse (up to the quantization): `blocks` from quantize_q8_0 or a file,
/// `shape` the values' shape; returns float32.
at::Tensor dequantize_q8_0(const at::Tensor& blocks,
                           const std::vector<int64_t>& shape);

/// A tensor to write: `tensor` (any float dtype and device, any layout) is
/// converted to `type`. Names are at most 63 bytes (GGML_MAX_NAME), ranks 1
/// to 4.
struct GgufTensor {
  std::string name;
  at::Tensor tensor;
  GgmlType type = GgmlType::kF32;
};

/// Writes a version-3 file to `out`, tensors in the order given, each
/// converted and written on its own (no whole-file buffer). The alignment is
/// general.alignment when present (a u32 power of two), else 32. Throws
/// c10::Error "[gguf] ..." naming the bad key or tensor: empty or duplicate
/// keys or names, a name over 63 bytes, rank 0 or above 4, a non-float
/// tensor, a Q8_0 row length not a multiple of 32, non-finite Q8_0 values.
void write_gguf(std::ostream& out, const GgufMetadata& metadata,
                const std::vector<GgufTensor>& tensors);
/// write_gguf to `path` atomically (io/atomic_file.h).
void save_gguf(const std::string& path, const GgufMetadata& metadata,
               const std::vector<GgufTensor>& tensors);

/// Bounds checked before anything is allocated.
struct GgufLimits {
  TORCH_ARG(uint64_t, max_tensors) = uint64_t{1} << 16;
  TORCH_ARG(uint64_t, max_metadata) = uint64_t{1} << 16;
  /// Bytes of one string (a key, a value, one array element).
  TORCH_ARG(uint64_t, max_string_bytes) = uint64_t{1} << 24;
  /// Elements of one array (vocabularies: Gemma-3 has 262144 tokens).
  TORCH_ARG(uint64_t, max_array_elements) = uint64_t{1} << 24;
  /// Bytes of everything before the data section.
  TORCH_ARG(uint64_t, max_header_bytes) = uint64_t{1} << 30;
};

/// One tensor of a file; `shape` outermost first (as torch; GGUF stores the
/// dims innermost first), `offset` relative to the data section.
struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> shape;
  GgmlType type = GgmlType::kF32;
  uint64_t offset = 0;
  uint64_t bytes = 0;
};

struct GgufHeader {
  uint32_t version = 3;
  uint32_t alignment = 32;
  GgufMetadata metadata;
  std::vector<GgufTensorInfo> tensors;
  uint64_t data_offset = 0;  // of the data section in the file
  uint64_t file_size = 0;

  const GgufValue* find(std::string_view key) const {
    return gguf_find(metadata, key);
  }
  /// The value of `key`; throws "[gguf] missing key ..." when absent.
  const GgufValue& at(std::string_view key) const;
  /// The info of tensor `name`; throws naming it when absent.
  const GgufTensorInfo& tensor(std::string_view name) const;
};

/// Parses the header of a file held in `in` (positioned at its start) of
/// `file_size` bytes; `source` names it in errors. Checks: magic, version 2
/// or 3, counts and lengths against `limits` and the bytes left, value types,
/// unique non-empty keys, general.alignment a u32 power of two, unique tensor
/// names under 64 bytes, ranks 1..4 with positive dims, supported tensor
/// types, Q8_0 rows a multiple of 32, offsets equal to the running padded sum,
/// and the data section inside the file.
GgufHeader parse_gguf_header(std::istream& in, uint64_t file_size,
                             const std::string& source,
                             const GgufLimits& limits = GgufLimits());
/// Same for a file on disk.
GgufHeader read_gguf_header(const std::string& path,
                            const GgufLimits& limits = GgufLimits());

/// Tensor `name` of the file at `path` whose header is `header`: F32, F16,
/// BF16 in their dtype, Q8_0 dequantized to float32; shape as the info.
at::Tensor read_gguf_tensor(const std::string& path, const GgufHeader& header,
                            const std::string& name);

}  // namespace lowmem::io
