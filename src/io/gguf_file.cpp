// The GGUF writer and the bounded reader (format notes in io/gguf.h).
#include <ATen/ATen.h>

#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "lowmem/core/check.h"
#include "lowmem/core/input.h"
#include "lowmem/io/atomic_file.h"
#include "lowmem/io/gguf.h"

namespace lowmem::io {
namespace {

constexpr char kMagic[4] = {'G', 'G', 'U', 'F'};
constexpr uint32_t kVersion = 3;
constexpr uint32_t kDefaultAlignment = 32;  // GGUF_DEFAULT_ALIGNMENT
constexpr size_t kMaxNameBytes = 63;        // GGML_MAX_NAME - 1
constexpr int kMaxDims = 4;                 // GGML_MAX_DIMS

uint64_t element_bytes(GgufValueType t) { return gguf_value_type_bytes(t); }

uint64_t pad_to(uint64_t n, uint64_t alignment) {
  return (n + alignment - 1) / alignment * alignment;
}

bool power_of_two(uint64_t a) { return a != 0 && (a & (a - 1)) == 0; }

// ---- writer ----------------------------------------------------------------

void put_u32(std::string& out, uint32_t v) {
  out.append(reinterpret_cast<const char*>(&v), 4);
}
void put_u64(std::string& out, uint64_t v) {
  out.append(reinterpret_cast<const char*>(&v), 8);
}
void put_string(std::string& out, const std::string& s) {
  put_u64(out, s.size());
  out += s;
}

void put_value(std::string& out, const GgufValue& v) {
  if (v.is_array()) {
    put_u32(out, static_cast<uint32_t>(GgufValueType::kArray));
    put_u32(out, static_cast<uint32_t>(v.type()));
    put_u64(out, v.size());
  } else {
    put_u32(out, static_cast<uint32_t>(v.type()));
  }
  if (v.type() == GgufValueType::kString) {
    for (const auto& s : v.strs()) put_string(out, s);
    return;
  }
  const uint64_t n = element_bytes(v.type());
  for (uint64_t bits : v.bits()) {
    out.append(reinterpret_cast<const char*>(&bits), n);  // little-endian
  }
}

uint32_t alignment_of(const GgufMetadata& metadata) {
  const GgufValue* a = gguf_find(metadata, "general.alignment");
  if (a == nullptr) return kDefaultAlignment;
  LOWMEM_CHECK(a->type() == GgufValueType::kUint32 && !a->is_array(),
               "[gguf] general.alignment must be a u32, got ", a->describe());
  LOWMEM_CHECK(power_of_two(a->as_uint()),
               "[gguf] general.alignment must be a power of two, got ",
               a->as_uint());
  return static_cast<uint32_t>(a->as_uint());
}

void check_metadata(const GgufMetadata& metadata) {
  std::set<std::string> seen;
  for (const auto& kv : metadata) {
    LOWMEM_CHECK(!kv.first.empty(), "[gguf] a metadata key is empty");
    LOWMEM_CHECK(seen.insert(kv.first).second, "[gguf] duplicate key ",
                 quote(kv.first));
  }
}

// The tensor's shape as GGUF stores it and its data converted to `type`.
struct Prepared {
  std::vector<int64_t> shape;
  at::Tensor bytes;  // contiguous CPU data in the file's layout
};

Prepared prepare(const GgufTensor& t) {
  at::Tensor x = t.tensor.detach();
  if (x.is_sparse()) x = x.to_dense();
  x = x.to(at::kCPU);
  Prepared p{x.sizes().vec(), {}};
  switch (t.type) {
    case GgmlType::kF32:
      p.bytes = x.to(at::kFloat).contiguous();
      break;
    case GgmlType::kF16:
      p.bytes = x.to(at::kHalf).contiguous();
      break;
    case GgmlType::kBF16:
      p.bytes = x.to(at::kBFloat16).contiguous();
      break;
    case GgmlType::kQ8_0:
      p.bytes = quantize_q8_0(x);
      break;
    default:
      LOWMEM_CHECK(false, "[gguf] tensor ", quote(t.name),
                   ": unsupported type ", ggml_type_name(t.type));
  }
  return p;
}

// What llama.cpp's loader requires of a tensor, checked before any byte is
// written.
void check_tensor(const GgufTensor& t) {
  const std::string where = "[gguf] tensor " + quote(t.name);
  LOWMEM_CHECK(!t.name.empty(), "[gguf] a tensor name is empty");
  LOWMEM_CHECK(t.name.size() <= kMaxNameBytes, where, " has a name of ",
               t.name.size(), " bytes (at most ", kMaxNameBytes, ")");
  LOWMEM_CHECK(t.tensor.defined(), where, " is undefined");
  LOWMEM_CHECK(t.tensor.dim() >= 1 && t.tensor.dim() <= kMaxDims, where,
               " has rank ", t.tensor.dim(), " (GGUF holds 1 to ", kMaxDims,
               ")");
  LOWMEM_CHECK(t.tensor.numel() > 0, where, " is empty (shape ",
               t.tensor.sizes(), ")");
  LOWMEM_CHECK(at::isFloatingType(t.tensor.scalar_type()), where, " has dtype ",
               t.tensor.scalar_type(), " (floats only)");
  LOWMEM_CHECK(t.type != GgmlType::kQ8_0 || t.tensor.size(-1) % 32 == 0, where,
               " of shape ", t.tensor.sizes(), " cannot be Q8_0: rows of ",
               t.tensor.size(-1), " values are not a multiple of 32");
}

uint64_t data_bytes(const GgufTensor& t) {
  const int64_t row = t.tensor.size(-1);
  const uint64_t rows =
      static_cast<uint64_t>(t.tensor.numel() / std::max<int64_t>(row, 1));
  return ggml_row_bytes(t.type, row) * rows;
}

std::string header_bytes(const GgufMetadata& metadata,
                         const std::vector<GgufTensor>& tensors,
                         uint32_t alignment) {
  std::string out(kMagic, 4);
  put_u32(out, kVersion);
  put_u64(out, tensors.size());
  put_u64(out, metadata.size());
  for (const auto& kv : metadata) {
    put_string(out, kv.first);
    put_value(out, kv.second);
  }
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    check_tensor(t);
    LOWMEM_CHECK(names.insert(t.name).second, "[gguf] duplicate tensor name ",
                 quote(t.name));
    put_string(out, t.name);
    put_u32(out, static_cast<uint32_t>(t.tensor.dim()));
    for (int64_t d = t.tensor.dim() - 1; d >= 0; --d) {
      put_u64(out, static_cast<uint64_t>(t.tensor.size(d)));  // innermost first
    }
    put_u32(out, static_cast<uint32_t>(t.type));
    put_u64(out, offset);
    offset += pad_to(data_bytes(t), alignment);
  }
  out.append(pad_to(out.size(), alignment) - out.size(), '\0');
  return out;
}

}  // namespace

void write_gguf(std::ostream& out, const GgufMetadata& metadata,
                const std::vector<GgufTensor>& tensors) {
  check_metadata(metadata);
  const uint32_t alignment = alignment_of(metadata);
  const std::string header = header_bytes(metadata, tensors, alignment);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  const std::string zeros(alignment, '\0');
  for (const auto& t : tensors) {
    const Prepared p = prepare(t);
    const auto n = static_cast<uint64_t>(p.bytes.numel()) *
                   static_cast<uint64_t>(p.bytes.element_size());
    TORCH_INTERNAL_ASSERT(n == data_bytes(t));
    out.write(static_cast<const char*>(p.bytes.data_ptr()),
              static_cast<std::streamsize>(n));
    out.write(zeros.data(),
              static_cast<std::streamsize>(pad_to(n, alignment) - n));
  }
  LOWMEM_CHECK(out.good(), "[gguf] writing the file failed");
}

void save_gguf(const std::string& path, const GgufMetadata& metadata,
               const std::vector<GgufTensor>& tensors) {
  atomic_write_file(
      path, [&](std::ostream& out) { write_gguf(out, metadata, tensors); });
}

// ---- reader ----------------------------------------------------------------

namespace {

// Reads from a stream of known size; every read is checked against the
// bytes left, so no length field makes it allocate past the file.
class Cursor {
 public:
  Cursor(std::istream& in, uint64_t size, std::string source,
         const GgufLimits& limits)
      : in_(in), size_(size), source_(std::move(source)), limits_(limits) {}

  void fail(const std::string& message) const {
    LOWMEM_CHECK(false, "[gguf] ", source_, ": ", message);
  }
  void check(bool ok, const std::string& message) const {
    if (!ok) fail(message);
  }
  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }
  const GgufLimits& limits() const { return limits_; }

  // `what` and `part` name the field in messages (built only on failure).
  void read(void* dst, uint64_t n, const std::string& what,
            const char* part = "") {
    if (n > left()) {
      fail(what + part + " needs " + std::to_string(n) + " bytes at offset " +
           std::to_string(pos_) + " but the file ends " +
           std::to_string(left()) + " bytes later");
    }
    if (pos_ + n > limits_.max_header_bytes()) {
      fail("the header exceeds " + format_limit(limits_.max_header_bytes()));
    }
    in_.read(static_cast<char*>(dst), static_cast<std::streamsize>(n));
    if (static_cast<uint64_t>(in_.gcount()) != n) {
      fail("read failed at offset " + std::to_string(pos_) + " (" + what +
           part + ")");
    }
    pos_ += n;
  }
  uint32_t u32(const std::string& what, const char* part = "") {
    uint32_t v = 0;
    read(&v, 4, what, part);
    return v;
  }
  uint64_t u64(const std::string& what, const char* part = "") {
    uint64_t v = 0;
    read(&v, 8, what, part);
    return v;
  }
  std::string string(const std::string& what) {
    const uint64_t n = u64(what, "'s length");
    if (n > limits_.max_string_bytes() || n > left()) {
      fail(what + " is " + std::to_string(n) + " bytes long (limit " +
           format_limit(limits_.max_string_bytes()) + ", " +
           std::to_string(left()) + " bytes left in the file)");
    }
    std::string s(static_cast<size_t>(n), '\0');
    read(s.data(), n, what);
    return s;
  }

 private:
  std::istream& in_;
  uint64_t size_;
  uint64_t pos_ = 0;
  std::string source_;
  GgufLimits limits_;
};

GgufValue read_value(Cursor& c, const std::string& key) {
  const std::string what = "the value of " + quote(key);
  uint32_t code = c.u32(what, "'s type");
  bool array = false;
  uint64_t count = 1;
  if (code == static_cast<uint32_t>(GgufValueType::kArray)) {
    array = true;
    code = c.u32(what, "'s element type");
    c.check(code != static_cast<uint32_t>(GgufValueType::kArray),
            what + " is an array of arrays (not supported by llama.cpp)");
    count = c.u64(what, "'s length");
    c.check(count <= c.limits().max_array_elements(),
            what + " has " + std::to_string(count) + " elements (limit " +
                std::to_string(c.limits().max_array_elements()) + ")");
  }
  const auto type = static_cast<GgufValueType>(code);
  c.check(code <= static_cast<uint32_t>(GgufValueType::kFloat64),
          what + " has an unknown value type " + std::to_string(code));
  // Each element takes at least one byte (8 for a string's length).
  const uint64_t least =
      type == GgufValueType::kString ? 8 : element_bytes(type);
  c.check(count <= c.left() / least,
          what + " has " + std::to_string(count) +
              " elements, more than the bytes left in the file hold");
  std::vector<uint64_t> bits;
  std::vector<std::string> strings;
  if (type == GgufValueType::kString) {
    strings.reserve(std::min<uint64_t>(count, 1 << 16));
    for (uint64_t i = 0; i < count; ++i) strings.push_back(c.string(what));
  } else {
    const uint64_t n = element_bytes(type);
    bits.reserve(std::min<uint64_t>(count, 1 << 16));
    for (uint64_t i = 0; i < count; ++i) {
      uint64_t raw = 0;
      c.read(&raw, n, what);
      if (type == GgufValueType::kBool) raw = raw != 0;  // as gguf.cpp
      const bool sign = type == GgufValueType::kInt8 ||
                        type == GgufValueType::kInt16 ||
                        type == GgufValueType::kInt32;
      if (sign && (raw >> (8 * n - 1)) != 0) raw |= ~uint64_t{0} << (8 * n);
      bits.push_back(raw);
    }
  }
  return GgufValue(type, array, std::move(bits), std::move(strings));
}

void read_metadata(Cursor& c, uint64_t n_kv, GgufHeader& h) {
  std::set<std::string> keys;
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = c.string("metadata key " + std::to_string(i));
    c.check(!key.empty(), "metadata key " + std::to_string(i) + " is empty");
    c.check(keys.insert(key).second, "duplicate metadata key " + quote(key));
    GgufValue v = read_value(c, key);
    h.metadata.emplace_back(std::move(key), std::move(v));
  }
  if (const GgufValue* a = h.find("general.alignment")) {
    c.check(a->type() == GgufValueType::kUint32 && !a->is_array(),
            "general.alignment must be a u32, got " + a->describe());
    c.check(power_of_two(a->as_uint()), "general.alignment " +
                                            std::to_string(a->as_uint()) +
                                            " is not a power of two");
    h.alignment = static_cast<uint32_t>(a->as_uint());
  }
}

GgufTensorInfo read_tensor_info(Cursor& c, uint64_t i) {
  GgufTensorInfo t;
  t.name = c.string("tensor name " + std::to_string(i));
  const std::string what = "tensor " + quote(t.name);
  c.check(!t.name.empty(), "tensor name " + std::to_string(i) + " is empty");
  c.check(t.name.size() <= kMaxNameBytes, what + " has a name longer than " +
                                              std::to_string(kMaxNameBytes) +
                                              " bytes");
  const uint32_t n_dims = c.u32(what + "'s rank");
  c.check(n_dims >= 1 && n_dims <= kMaxDims,
          what + " has rank " + std::to_string(n_dims) + " (1 to 4)");
  uint64_t numel = 1;
  t.shape.assign(n_dims, 0);
  for (uint32_t d = 0; d < n_dims; ++d) {
    const uint64_t ne = c.u64(what + "'s dims");
    c.check(ne >= 1 && ne <= static_cast<uint64_t>(
                                 std::numeric_limits<int64_t>::max()),
            what + " has dim " + std::to_string(ne));
    c.check(!__builtin_mul_overflow(numel, ne, &numel) &&
                numel <= static_cast<uint64_t>(
                             std::numeric_limits<int64_t>::max() / 4),
            what + " has too many elements");
    t.shape[n_dims - 1 - d] = static_cast<int64_t>(ne);  // torch order
  }
  const uint32_t code = c.u32(what + "'s type");
  const auto type = static_cast<GgmlType>(code);
  c.check(type == GgmlType::kF32 || type == GgmlType::kF16 ||
              type == GgmlType::kBF16 || type == GgmlType::kQ8_0,
          what + " has ggml type " + std::to_string(code) +
              ", which lowmem does not read (F32, F16, BF16, Q8_0)");
  t.type = type;
  c.check(type != GgmlType::kQ8_0 || t.shape.back() % 32 == 0,
          what + " is Q8_0 with rows of " + std::to_string(t.shape.back()) +
              " values, not a multiple of 32");
  t.bytes = ggml_row_bytes(type, t.shape.back()) *
            (numel / static_cast<uint64_t>(t.shape.back()));
  t.offset = c.u64(what + "'s offset");
  return t;
}

void read_tensor_infos(Cursor& c, uint64_t n_tensors, GgufHeader& h) {
  std::set<std::string> names;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t = read_tensor_info(c, i);
    c.check(names.insert(t.name).second,
            "duplicate tensor name " + quote(t.name));
    h.tensors.push_back(std::move(t));
  }
  h.data_offset = pad_to(c.pos(), h.alignment);
  uint64_t expected = 0;
  for (const auto& t : h.tensors) {
    c.check(t.offset == expected,
            "tensor " + quote(t.name) + " has offset " +
                std::to_string(t.offset) + ", expected " +
                std::to_string(expected) +
                " (tensors lie in order, each padded to the alignment)");
    c.check(t.bytes <= h.file_size &&
                h.data_offset + t.offset <= h.file_size - t.bytes,
            "tensor " + quote(t.name) + " (" + std::to_string(t.bytes) +
                " bytes at " + std::to_string(h.data_offset + t.offset) +
                ") runs past the end of the file (" +
                std::to_string(h.file_size) + " bytes)");
    expected += pad_to(t.bytes, h.alignment);
  }
}

}  // namespace

GgufHeader parse_gguf_header(std::istream& in, uint64_t file_size,
                             const std::string& source,
                             const GgufLimits& limits) {
  Cursor c(in, file_size, source, limits);
  GgufHeader h;
  h.file_size = file_size;
  char magic[4] = {0, 0, 0, 0};
  c.read(magic, 4, "the magic");
  c.check(std::memcmp(magic, kMagic, 4) == 0, "not a GGUF file (magic " +
                                                  quote(std::string(magic, 4)) +
                                                  ", expected 'GGUF')");
  h.version = c.u32("the version");
  c.check(h.version == 2 || h.version == 3, "GGUF version " +
                                                std::to_string(h.version) +
                                                " is not supported (2 or 3)");
  const uint64_t n_tensors = c.u64("the tensor count");
  const uint64_t n_kv = c.u64("the metadata count");
  c.check(n_tensors <= limits.max_tensors(),
          std::to_string(n_tensors) + " tensors (limit " +
              std::to_string(limits.max_tensors()) + ")");
  c.check(n_kv <= limits.max_metadata(),
          std::to_string(n_kv) + " metadata pairs (limit " +
              std::to_string(limits.max_metadata()) + ")");
  read_metadata(c, n_kv, h);
  read_tensor_infos(c, n_tensors, h);
  return h;
}

GgufHeader read_gguf_header(const std::string& path, const GgufLimits& limits) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  LOWMEM_CHECK(in.is_open(), "[gguf] cannot open ", quote(path), ": ",
               std::strerror(errno));
  const auto end = in.tellg();
  LOWMEM_CHECK(end >= 0, "[gguf] cannot size ", quote(path));
  in.seekg(0);
  return parse_gguf_header(in, static_cast<uint64_t>(end), path, limits);
}

const GgufValue& GgufHeader::at(std::string_view key) const {
  const GgufValue* v = find(key);
  LOWMEM_CHECK(v != nullptr, "[gguf] missing key ", quote(key));
  return *v;
}

const GgufTensorInfo& GgufHeader::tensor(std::string_view name) const {
  for (const auto& t : tensors) {
    if (t.name == name) return t;
  }
  LOWMEM_CHECK(false, "[gguf] no tensor ", quote(name));
  return tensors.front();
}

at::Tensor read_gguf_tensor(const std::string& path, const GgufHeader& header,
                            const std::string& name) {
  const GgufTensorInfo& info = header.tensor(name);
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  LOWMEM_CHECK(in.is_open(), "[gguf] cannot open ", quote(path), ": ",
               std::strerror(errno));
  LOWMEM_CHECK(static_cast<uint64_t>(in.tellg()) == header.file_size, "[gguf] ",
               quote(path), " changed size since its header was read");
  in.seekg(static_cast<std::streamoff>(header.data_offset + info.offset));
  at::Tensor raw;
  switch (info.type) {
    case GgmlType::kF32:
      raw = at::empty(info.shape, at::TensorOptions().dtype(at::kFloat));
      break;
    case GgmlType::kF16:
      raw = at::empty(info.shape, at::TensorOptions().dtype(at::kHalf));
      break;
    case GgmlType::kBF16:
      raw = at::empty(info.shape, at::TensorOptions().dtype(at::kBFloat16));
      break;
    case GgmlType::kQ8_0:
      raw = at::empty({static_cast<int64_t>(info.bytes)},
                      at::TensorOptions().dtype(at::kByte));
      break;
  }
  in.read(static_cast<char*>(raw.data_ptr()),
          static_cast<std::streamsize>(info.bytes));
  LOWMEM_CHECK(static_cast<uint64_t>(in.gcount()) == info.bytes, "[gguf] ",
               quote(path), ": short read of tensor ", quote(name));
  if (info.type == GgmlType::kQ8_0) return dequantize_q8_0(raw, info.shape);
  return raw;
}

}  // namespace lowmem::io
