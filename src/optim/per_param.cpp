#include "lowmem/optim/per_param.h"

#include <c10/util/string_utils.h>
#include <torch/serialize/archive.h>

#include <atomic>

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

std::string state_key(const at::Tensor& param) {
  return c10::guts::to_string(param.unsafeGetTensorImpl());
}

void set_reference_path(bool on) {
  g_reference_path = on;
}
bool reference_path() {
  return g_reference_path;
}

}  // namespace lowmem::optim::detail
