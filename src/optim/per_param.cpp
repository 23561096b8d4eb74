#include "lowmem/optim/per_param.h"

#include <torch/serialize/archive.h>

#include <atomic>
#include <sstream>
#include <string>
#include <type_traits>

#include "lowmem/core/check.h"

namespace lowmem::optim::detail {

namespace {
std::atomic<bool> g_reference_path{false};
}

void FieldWriter::operator()(const char* name, double& v) const {
  archive.write(name, c10::IValue(v));
}
void FieldWriter::operator()(const char* name, bool& v) const {
  archive.write(name, c10::IValue(v));
}
void FieldWriter::operator()(const char* name, int64_t& v) const {
  archive.write(name, c10::IValue(v));
}
void FieldWriter::operator()(
    const char* name, c10::optional<double>& v) const {
  archive.write(name, v ? c10::IValue(*v) : c10::IValue());
}
void FieldWriter::operator()(const char* name, at::Tensor& v) const {
  if (v.defined()) archive.write(name, v, /*is_buffer=*/true);
}

void FieldReader::operator()(const char* name, double& v) const {
  c10::IValue iv;
  if (archive.try_read(name, iv)) v = iv.toDouble();
}
void FieldReader::operator()(const char* name, bool& v) const {
  c10::IValue iv;
  if (archive.try_read(name, iv)) v = iv.toBool();
}
void FieldReader::operator()(const char* name, int64_t& v) const {
  c10::IValue iv;
  if (archive.try_read(name, iv)) v = iv.toInt();
}
void FieldReader::operator()(
    const char* name, c10::optional<double>& v) const {
  c10::IValue iv;
  if (archive.try_read(name, iv)) {
    v = iv.isNone() ? c10::nullopt : c10::optional<double>(iv.toDouble());
  }
}
void FieldReader::operator()(const char* name, at::Tensor& v) const {
  at::Tensor t;
  v = archive.try_read(name, t, /*is_buffer=*/true) ? t : at::Tensor();
}

void FieldWriter::operator()(const char* name, BlockwiseQ8& v,
                             StateRole) const {
  if (!v.defined()) return;
  archive.write(std::string(name) + "_codes", v.codes, /*is_buffer=*/true);
  archive.write(std::string(name) + "_absmax", v.absmax, /*is_buffer=*/true);
}

void FieldReader::operator()(const char* name, BlockwiseQ8& v,
                             StateRole role) const {
  at::Tensor codes, absmax;
  const bool has_codes =
      archive.try_read(std::string(name) + "_codes", codes, true);
  const bool has_absmax =
      archive.try_read(std::string(name) + "_absmax", absmax, true);
  v = BlockwiseQ8();
  v.is_signed = role == StateRole::kLinear;
  if (!has_codes && !has_absmax) return;
  LOWMEM_CHECK(
      has_codes && has_absmax && codes.scalar_type() == at::kByte &&
          absmax.scalar_type() == at::kFloat && absmax.dim() == 1 &&
          absmax.numel() == (codes.numel() + kQ8BlockSize - 1) / kQ8BlockSize,
      "[optim] 8-bit state '", name,
      "' in the checkpoint is inconsistent (codes ",
      has_codes ? codes.sizes() : at::IntArrayRef{}, ", absmax ",
      has_absmax ? absmax.sizes() : at::IntArrayRef{}, ")");
  v.codes = codes.contiguous();
  v.absmax = absmax.contiguous();
}

void RoleVisitor::operator()(const char* name, BlockwiseQ8& q,
                             StateRole role) const {
  if (!q.defined()) {
    at::Tensor none;
    fn(name, none, role);
    return;
  }
  const at::Tensor before = q.dequantize();
  at::Tensor t = before;
  fn(name, t, role);
  if (!t.defined()) {
    q = BlockwiseQ8();
  } else if (!t.is_same(before)) {
    q = BlockwiseQ8::quantize(t, q.is_signed);
  }
}

namespace {
// Both forms compile only where instantiated, so each LibTorch sees its own.
template <class Key>
Key make_state_key(c10::TensorImpl* impl) {
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream s;  // what c10::guts::to_string did in LibTorch 1.x
    s << impl;
    return s.str();
  } else {
    return static_cast<Key>(impl);
  }
}
}  // namespace

StateKey state_key(const at::Tensor& param) {
  return make_state_key<StateKey>(param.unsafeGetTensorImpl());
}

void set_reference_path(bool on) {
  g_reference_path = on;
}
bool reference_path() {
  return g_reference_path;
}

}  // namespace lowmem::optim::detail
