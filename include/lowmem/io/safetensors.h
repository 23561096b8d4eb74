// Reader and writer for the safetensors format (huggingface/safetensors,
// docs "Format"): an 8-byte little-endian header length N, N bytes of JSON
// {"name": {"dtype", "shape", "data_offsets": [begin, end)}, "__metadata__":
// {str: str}}, then the data section. Own implementation, no Rust/Python.
// Deviations: U16/U32/U64 and the F8 dtypes are rejected (LibTorch 1.13 has no
// such scalar types); everything the spec requires of a valid file is checked.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace lowmem::io {

/// Largest header accepted, as the reference implementation (100 MB).
constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;
/// Most dims of one tensor (the reference sets none; PyTorch's kernels handle
/// at most 25, so 64 loses no real file and bounds what a header can ask for).
constexpr size_t kMaxSafetensorsRank = 64;

/// One tensor entry of a header. Offsets are relative to the data section.
struct SafetensorsEntry {
  std::string name;
  c10::ScalarType dtype = c10::ScalarType::Float;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

/// A parsed header: entries sorted by data offset, plus the metadata map.
struct SafetensorsHeader {
  std::vector<SafetensorsEntry> entries;
  std::map<std::string, std::string> metadata;
  uint64_t header_bytes = 0;  // N (JSON length incl. padding)
  uint64_t data_bytes = 0;    // size of the data section
};

/// Tensors (CPU, contiguous, by name) and the "__metadata__" map of a file.
struct SafetensorsFile {
  std::map<std::string, at::Tensor> tensors;
  std::map<std::string, std::string> metadata;
};

/// The safetensors dtype string ("F32", "BF16", ...) of a scalar type; throws
/// for types the format cannot hold here.
std::string safetensors_dtype_name(c10::ScalarType t);
/// Inverse of safetensors_dtype_name; throws naming the string if unknown.
c10::ScalarType safetensors_dtype_from_name(const std::string& name);

/// Serialises tensors (any device/layout; copied to contiguous CPU) and the
/// metadata into the safetensors byte layout: tensors ordered by name, header
/// padded with spaces to a multiple of 8 bytes.
std::string serialize_safetensors(
    const std::map<std::string, at::Tensor>& tensors,
    const std::map<std::string, std::string>& metadata = {});

/// Parses and validates an in-memory file; `source` names it in errors.
SafetensorsFile parse_safetensors(const std::string& bytes,
                                  const std::string& source = "<memory>");

/// Validates the header of a file of `file_size` bytes whose first bytes are
/// `prefix` (at least 8 + N bytes). Throws a c10::Error naming `source` and the
/// problem: size too small, oversized header, bad JSON, unknown dtype, shape
/// and byte range disagreeing, offsets outside the data section, overlaps or
/// gaps between tensors, duplicate names, non-string metadata.
SafetensorsHeader parse_safetensors_header(const std::string& prefix,
                                           uint64_t file_size,
                                           const std::string& source);

/// Reads only the header of a file on disk.
SafetensorsHeader read_safetensors_header(const std::string& path);

/// Reads a file: the header is validated first, then each tensor is read
/// straight into its own CPU storage (no whole-file buffer).
SafetensorsFile load_safetensors(const std::string& path);

/// Writes a file atomically (temporary file + fsync + rename).
void save_safetensors(const std::string& path,
                      const std::map<std::string, at::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace lowmem::io
