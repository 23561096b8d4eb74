#include "lowmem/optim/per_param.h"

#include <torch/serialize/archive.h>

#include <atomic>
#include <sstream>
#include <string>
#include <type_traits>

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
