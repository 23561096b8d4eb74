// Internal: optimizer state as safetensors (tensors) plus a JSON tree
// (everything else), instead of a LibTorch pickle archive, so loading a
// checkpoint never runs the pickle reader on a file (issue 20: it allocated
// gigabytes on corrupt files before failing, and its errors named no file).
//
// torch::optim::Optimizer::save/load speak torch::serialize archives. Both
// archive classes wrap a torch::jit::Module whose attributes are the written
// values (tensors, scalars, lists, nested archives), and neither exposes it.
// We reach that member through the explicit-instantiation access rule
// ([temp.spec.general]/6: names in an explicit instantiation are not access
// checked), so an OutputArchive is walked in memory and an InputArchive is
// filled in memory: no serialisation, no copy of the state. If a LibTorch
// release renames the member, this file stops compiling (checked on 1.13 and
// 2.11, where it is `module_` in both classes).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/util/Optional.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string>

namespace torch::serialize {
class InputArchive;
class OutputArchive;
}  // namespace torch::serialize

namespace lowmem::io::detail {

/// Flattens what Optimizer::save wrote: tensors into `tensors` (named by
/// their path in the archive, "state/<key>/exp_avg"), everything else into a
/// JSON array of [name, kind, value] entries: kind "tensor" (value: its name
/// in `tensors`), "archive" (a nested array), "none", "bool", "int",
/// "double" (a number, or "nan"/"inf"/"-inf"), "str", "tuple" (an array of
/// [kind, value] pairs), or "list" (the same, plus the element type as a
/// fourth item: "int", "float", "bool", "str", "Tensor"). Throws naming the
/// path for a value of another type.
nlohmann::json flatten_archive(torch::serialize::OutputArchive& archive,
                               std::map<std::string, at::Tensor>& tensors);

/// Rebuilds an archive from flatten_archive's output into `out`, tensors moved
/// to `device` when given. Checks every entry (kinds, types, tensor names);
/// errors name `source`.
void unflatten_archive(const nlohmann::json& tree,
                       const std::map<std::string, at::Tensor>& tensors,
                       const c10::optional<c10::Device>& device,
                       const std::string& source,
                       torch::serialize::InputArchive& out);

}  // namespace lowmem::io::detail
