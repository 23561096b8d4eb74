#include "lowmem/core/dtype.h"

namespace lowmem {
namespace {

struct DtypeNames {
  c10::ScalarType type;
  const char* long_name;
  const char* short_name;
  const char* alias;
};

constexpr DtypeNames kDtypes[] = {
    {c10::kFloat, "float32", "fp32", "float"},
    {c10::kHalf, "float16", "fp16", "half"},
    {c10::kBFloat16, "bfloat16", "bf16", "bfloat16"},
    {c10::kDouble, "float64", "fp64", "double"}};

const DtypeNames* find(c10::ScalarType t) {
  for (const auto& d : kDtypes) {
    if (d.type == t) return &d;
  }
  return nullptr;
}

}  // namespace

const char* dtype_long_name(c10::ScalarType t) {
  const DtypeNames* d = find(t);
  return d == nullptr ? nullptr : d->long_name;
}

const char* dtype_short_name(c10::ScalarType t) {
  const DtypeNames* d = find(t);
  return d == nullptr ? nullptr : d->short_name;
}

c10::optional<c10::ScalarType> dtype_from_name(const std::string& name) {
  for (const auto& d : kDtypes) {
    if (name == d.long_name || name == d.short_name || name == d.alias)
      return d.type;
  }
  return c10::nullopt;
}

}  // namespace lowmem
