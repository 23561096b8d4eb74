// Names of the floating dtypes lowmem reads and writes, in one table: the
// spelling of Hugging Face's config.json `torch_dtype` ("bfloat16"), the short
// one of lowmem's flags and reports ("bf16"), and torch's aliases ("half").
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/Optional.h>

#include <string>

namespace lowmem {

/// "float32", "float16", "bfloat16" or "float64"; nullptr for other types.
const char* dtype_long_name(c10::ScalarType t);
/// "fp32", "fp16", "bf16" or "fp64"; nullptr for other types.
const char* dtype_short_name(c10::ScalarType t);
/// The dtype either name (or the alias "float", "half", "double") spells;
/// nullopt for anything else (callers name the key in their error).
c10::optional<c10::ScalarType> dtype_from_name(const std::string& name);

}  // namespace lowmem
