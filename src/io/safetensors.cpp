#include "lowmem/io/safetensors.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "lowmem/core/check.h"
#include "lowmem/core/json.h"
#include "lowmem/io/atomic_file.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "lowmem's safetensors code assumes a little-endian host"
#endif

namespace lowmem::io {
namespace {

using json = nlohmann::json;

struct DtypeName {
  const char* name;
  c10::ScalarType type;
};

// The dtypes LibTorch 1.13 can represent (safetensors also defines U16, U32,
// U64 and F8_* which have no 1.13 scalar type).
constexpr DtypeName kDtypes[] = {
    {"F64", c10::ScalarType::Double}, {"F32", c10::ScalarType::Float},
    {"F16", c10::ScalarType::Half},   {"BF16", c10::ScalarType::BFloat16},
    {"I64", c10::ScalarType::Long},   {"I32", c10::ScalarType::Int},
    {"I16", c10::ScalarType::Short},  {"I8", c10::ScalarType::Char},
    {"U8", c10::ScalarType::Byte},    {"BOOL", c10::ScalarType::Bool},
};

std::string supported_list() {
  std::string s;
  for (const auto& d : kDtypes) {
    if (!s.empty()) s += ", ";
    s += d.name;
  }
  return s;
}

uint64_t read_u64_le(const char* p) {
  uint64_t v = 0;
  std::memcpy(&v, p, 8);  // little-endian host (checked above)
  return v;
}

// Checked a*b for sizes; false on overflow.
bool mul_overflow(uint64_t a, uint64_t b, uint64_t* out) {
  return __builtin_mul_overflow(a, b, out);
}

void write_safetensors(std::ostream& out,
                       const std::map<std::string, at::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // Header: one entry per tensor in name order; data laid out in that order.
  json header = json::object();
  if (!metadata.empty()) {
    json meta = json::object();
    for (const auto& kv : metadata) meta[kv.first] = kv.second;
    header["__metadata__"] = meta;
  }
  std::vector<at::Tensor> cpu;
  cpu.reserve(tensors.size());
  uint64_t offset = 0;
  for (const auto& kv : tensors) {
    LOWMEM_CHECK(kv.first != "__metadata__",
                 "[safetensors] a tensor may not be named '__metadata__'");
    LOWMEM_CHECK(kv.second.defined(), "[safetensors] tensor '", kv.first,
                 "' is undefined");
    at::Tensor t = kv.second.detach();
    if (t.is_sparse()) t = t.to_dense();
    t = t.to(at::kCPU).contiguous();
    uint64_t nbytes = static_cast<uint64_t>(t.numel()) * t.element_size();
    json entry;
    entry["dtype"] = safetensors_dtype_name(t.scalar_type());
    entry["shape"] = t.sizes().vec();
    entry["data_offsets"] = {offset, offset + nbytes};
    header[kv.first] = entry;
    offset += nbytes;
    cpu.push_back(std::move(t));
  }
  std::string text = header.dump();
  // Pad with spaces so the data section starts 8-byte aligned (as the
  // reference writer does).
  text.append((8 - text.size() % 8) % 8, ' ');
  uint64_t n = text.size();
  char len[8];
  std::memcpy(len, &n, 8);
  out.write(len, 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const auto& t : cpu) {
    out.write(static_cast<const char*>(t.data_ptr()),
              static_cast<std::streamsize>(t.numel() * t.element_size()));
  }
}

SafetensorsEntry parse_entry(const std::string& name, const json& v,
                             const std::string& source) {
  const std::string where =
      "[safetensors] " + source + ": tensor " + quote(name);
  LOWMEM_CHECK(v.is_object(), where, " must be a JSON object, got ",
               clip_json(v));
  SafetensorsEntry e;
  e.name = name;
  auto d = v.find("dtype");
  LOWMEM_CHECK(d != v.end() && d->is_string(), where,
               " has no string field \"dtype\"");
  {
    const std::string dn = d->get<std::string>();
    bool known = false;
    for (const auto& k : kDtypes) known = known || dn == k.name;
    LOWMEM_CHECK(known, where, " has an unknown or unsupported dtype ",
                 quote(dn), " (supported: ", supported_list(), ")");
    e.dtype = safetensors_dtype_from_name(dn);
  }
  auto s = v.find("shape");
  LOWMEM_CHECK(s != v.end() && s->is_array(), where,
               " has no array field \"shape\"");
  LOWMEM_CHECK(s->size() <= kMaxSafetensorsRank, where, " has ", s->size(),
               " dims, over the limit of ", kMaxSafetensorsRank, ": ",
               clip_json(*s));
  uint64_t numel = 1;
  bool overflow = false;
  for (const auto& dim : *s) {
    LOWMEM_CHECK(dim.is_number_unsigned() ||
                     (dim.is_number_integer() && dim.get<int64_t>() >= 0),
                 where, " has a bad shape entry ", clip_json(dim),
                 " (dims are non-negative integers)");
    uint64_t x = dim.get<uint64_t>();
    LOWMEM_CHECK(x <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
                 where, " dim ", x, " is too large");
    e.shape.push_back(static_cast<int64_t>(x));
    overflow = overflow || mul_overflow(numel, x, &numel);
  }
  auto o = v.find("data_offsets");
  LOWMEM_CHECK(o != v.end() && o->is_array() && o->size() == 2, where,
               " needs \"data_offsets\": [begin, end]");
  for (const auto& x : *o) {
    LOWMEM_CHECK(x.is_number_unsigned() ||
                     (x.is_number_integer() && x.get<int64_t>() >= 0),
                 where, " has a bad data offset ", clip_json(x));
  }
  e.begin = (*o)[0].get<uint64_t>();
  e.end = (*o)[1].get<uint64_t>();
  LOWMEM_CHECK(e.begin <= e.end, where, " has data_offsets [", e.begin, ", ",
               e.end, "] with begin > end");
  uint64_t nbytes = 0;
  overflow = overflow ||
             mul_overflow(numel, c10::elementSize(e.dtype), &nbytes);
  LOWMEM_CHECK(!overflow, where, " shape ", clip_json(*s), " overflows");
  LOWMEM_CHECK(nbytes == e.end - e.begin, where, " of dtype ",
               d->get<std::string>(), " and shape ", clip_json(*s), " needs ",
               nbytes, " bytes but data_offsets [", e.begin, ", ", e.end,
               "] span ", e.end - e.begin);
  return e;
}

}  // namespace

std::string safetensors_dtype_name(c10::ScalarType t) {
  for (const auto& d : kDtypes) {
    if (d.type == t) return d.name;
  }
  LOWMEM_CHECK(false, "[safetensors] dtype ", c10::toString(t),
               " cannot be stored (supported: ", supported_list(), ")");
  return {};
}

c10::ScalarType safetensors_dtype_from_name(const std::string& name) {
  for (const auto& d : kDtypes) {
    if (name == d.name) return d.type;
  }
  LOWMEM_CHECK(false, "[safetensors] unknown or unsupported dtype \"", name,
               "\" (supported: ", supported_list(), ")");
  return c10::ScalarType::Undefined;
}

std::string serialize_safetensors(
    const std::map<std::string, at::Tensor>& tensors,
    const std::map<std::string, std::string>& metadata) {
  std::ostringstream out(std::ios::binary);
  write_safetensors(out, tensors, metadata);
  return out.str();
}

SafetensorsHeader parse_safetensors_header(const std::string& prefix,
                                           uint64_t file_size,
                                           const std::string& source) {
  const std::string where = "[safetensors] " + source + ": ";
  LOWMEM_CHECK(file_size >= 8 && prefix.size() >= 8, where, "file of ",
               file_size, " bytes is too small (needs an 8-byte header length)");
  SafetensorsHeader h;
  h.header_bytes = read_u64_le(prefix.data());
  LOWMEM_CHECK(h.header_bytes <= kMaxSafetensorsHeaderBytes, where,
               "header length ", h.header_bytes, " exceeds the limit of ",
               kMaxSafetensorsHeaderBytes, " bytes");
  LOWMEM_CHECK(h.header_bytes <= file_size - 8, where, "header length ",
               h.header_bytes, " exceeds the file size ", file_size,
               " (truncated file?)");
  LOWMEM_CHECK(h.header_bytes >= 2, where, "header length ", h.header_bytes,
               " is too small for a JSON object");
  LOWMEM_CHECK(prefix.size() >= 8 + h.header_bytes, where, "only ",
               prefix.size(), " bytes given for a header of ", h.header_bytes);
  h.data_bytes = file_size - 8 - h.header_bytes;
  const char* text = prefix.data() + 8;
  LOWMEM_CHECK(text[0] == '{', where, "header does not start with '{'");

  // Size, nesting depth (128, as serde_json in the reference) and duplicate
  // keys are checked by core/json.h before or while parsing.
  JsonLimits limits;
  limits.max_bytes = kMaxSafetensorsHeaderBytes;
  limits.reject_duplicate_keys = true;
  json header;
  try {
    header = parse_json(std::string_view(text, h.header_bytes), source, limits);
  } catch (const c10::Error& e) {
    LOWMEM_CHECK(false, where, "bad header: ", e.msg());
  }
  LOWMEM_CHECK(header.is_object(), where, "header must be a JSON object");

  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      LOWMEM_CHECK(it->is_object(), where,
                   "\"__metadata__\" must be an object of strings");
      for (auto m = it->begin(); m != it->end(); ++m) {
        LOWMEM_CHECK(m->is_string(), where, "metadata value of ",
                     quote(m.key()), " must be a string, got ", clip_json(*m));
        h.metadata[m.key()] = m->get<std::string>();
      }
      continue;
    }
    h.entries.push_back(parse_entry(it.key(), *it, source));
  }

  // The data section must be covered exactly: no overlaps, no gaps.
  std::sort(h.entries.begin(), h.entries.end(),
            [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  uint64_t pos = 0;
  const SafetensorsEntry* prev = nullptr;
  for (const auto& e : h.entries) {
    LOWMEM_CHECK(e.end <= h.data_bytes, where, "tensor ", quote(e.name),
                 " data_offsets [", e.begin, ", ", e.end,
                 "] exceed the data section of ", h.data_bytes,
                 " bytes (truncated file?)");
    LOWMEM_CHECK(e.begin >= pos, where, "tensor ", quote(e.name), " [", e.begin,
                 ", ", e.end, ") overlaps tensor ",
                 quote(prev ? prev->name : ""), " which ends at ", pos);
    LOWMEM_CHECK(e.begin == pos, where, "gap of ", e.begin - pos,
                 " bytes before tensor ", quote(e.name), " at offset ", pos);
    pos = e.end;
    prev = &e;
  }
  LOWMEM_CHECK(pos == h.data_bytes, where, "data section has ",
               h.data_bytes - pos, " unused trailing bytes after offset ", pos);
  return h;
}

SafetensorsFile parse_safetensors(const std::string& bytes,
                                  const std::string& source) {
  SafetensorsHeader h = parse_safetensors_header(bytes, bytes.size(), source);
  SafetensorsFile f;
  f.metadata = h.metadata;
  const char* data = bytes.data() + 8 + h.header_bytes;
  for (const auto& e : h.entries) {
    at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(e.dtype));
    if (e.end > e.begin) std::memcpy(t.data_ptr(), data + e.begin, e.end - e.begin);
    f.tensors.emplace(e.name, std::move(t));
  }
  return f;
}

namespace {

struct OpenFile {
  std::ifstream in;
  uint64_t size = 0;
  std::string prefix;
};

OpenFile open_and_read_header(const std::string& path, SafetensorsHeader* h) {
  OpenFile f;
  f.in.open(path, std::ios::binary | std::ios::ate);
  LOWMEM_CHECK(f.in.is_open(), "[safetensors] cannot open '", path,
               "': ", std::strerror(errno));
  f.size = static_cast<uint64_t>(f.in.tellg());
  f.in.seekg(0);
  uint64_t n = 0;
  char len[8] = {};
  if (f.size >= 8) {
    f.in.read(len, 8);
    n = read_u64_le(len);
  }
  f.prefix.assign(len, 8);
  // Validate the length before allocating for it.
  if (f.size >= 8 && n <= kMaxSafetensorsHeaderBytes && n <= f.size - 8) {
    f.prefix.resize(8 + n);
    f.in.read(&f.prefix[8], static_cast<std::streamsize>(n));
    LOWMEM_CHECK(f.in.good(), "[safetensors] ", path,
                 ": reading the header failed");
  }
  *h = parse_safetensors_header(f.prefix, f.size, path);
  return f;
}

}  // namespace

SafetensorsHeader read_safetensors_header(const std::string& path) {
  SafetensorsHeader h;
  open_and_read_header(path, &h);
  return h;
}

SafetensorsFile load_safetensors(const std::string& path) {
  SafetensorsHeader h;
  OpenFile f = open_and_read_header(path, &h);
  SafetensorsFile out;
  out.metadata = h.metadata;
  const uint64_t base = 8 + h.header_bytes;
  for (const auto& e : h.entries) {
    at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(e.dtype));
    if (e.end > e.begin) {
      f.in.seekg(static_cast<std::streamoff>(base + e.begin));
      f.in.read(static_cast<char*>(t.data_ptr()),
                static_cast<std::streamsize>(e.end - e.begin));
      LOWMEM_CHECK(f.in.good(), "[safetensors] ", path, ": reading tensor '",
                   e.name, "' failed");
    }
    out.tensors.emplace(e.name, std::move(t));
  }
  return out;
}

void save_safetensors(const std::string& path,
                      const std::map<std::string, at::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  // Convert (and validate dtypes) before touching the file system.
  for (const auto& kv : tensors) {
    LOWMEM_CHECK(kv.second.defined(), "[safetensors] ", path, ": tensor '",
                 kv.first, "' is undefined");
    safetensors_dtype_name(kv.second.scalar_type());
  }
  atomic_write_file(path, [&](std::ostream& out) {
    write_safetensors(out, tensors, metadata);
  });
}

}  // namespace lowmem::io
