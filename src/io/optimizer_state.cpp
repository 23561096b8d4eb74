#include "optimizer_state.h"

#include <torch/serialize/archive.h>

#include <cmath>
#include <vector>

#include "lowmem/core/check.h"
#include "lowmem/core/input.h"
#include "lowmem/core/json.h"

namespace lowmem::io::detail {
namespace {

using json = nlohmann::json;

// The explicit-instantiation access rule (see the header): Steal<Tag, M>
// defines get(Tag) returning the member pointer M, named in an explicit
// instantiation where access is not checked.
template <class Tag, typename Tag::type M>
struct Steal {
  friend typename Tag::type get(Tag) { return M; }
};
struct OutputModule {
  using type = torch::jit::Module torch::serialize::OutputArchive::*;
  friend type get(OutputModule);
};
struct InputModule {
  using type = torch::jit::Module torch::serialize::InputArchive::*;
  friend type get(InputModule);
};
template struct Steal<OutputModule, &torch::serialize::OutputArchive::module_>;
template struct Steal<InputModule, &torch::serialize::InputArchive::module_>;

// Deepest nesting of archives, tuples and lists accepted on load.
constexpr int kMaxDepth = 32;

// A double as JSON: a number when finite (nlohmann writes the shortest text
// that reads back to the same bits), else a string.
json double_json(double v) {
  if (std::isfinite(v)) {
    return v;
  }
  return std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf");
}

json flatten_module(const torch::jit::Module& m, const std::string& prefix,
                    std::map<std::string, at::Tensor>& tensors);

// [kind, value] (lists: [kind, value, element type]) of one archive value;
// tensors go to `tensors` under `path`.
json encode(const c10::IValue& v, const std::string& path,
            std::map<std::string, at::Tensor>& tensors) {
  auto pair = [](const char* kind, json value) {
    return json::array({kind, std::move(value)});
  };
  if (v.isTensor()) {
    tensors[path] = v.toTensor();
    return pair("tensor", path);
  }
  if (v.isObject()) {
    return pair("archive", flatten_module(torch::jit::Module(v.toObject()),
                                          path + "/", tensors));
  }
  if (v.isNone()) {
    return pair("none", nullptr);
  }
  if (v.isBool()) {
    return pair("bool", v.toBool());
  }
  if (v.isInt()) {
    return pair("int", v.toInt());
  }
  if (v.isDouble()) {
    return pair("double", double_json(v.toDouble()));
  }
  if (v.isString()) {
    return pair("str", v.toStringRef());
  }
  if (v.isTuple() || v.isList()) {
    // Tuples (AdamW's betas) and lists, element by element.
    const std::vector<c10::IValue> elements =
        v.isTuple() ? v.toTupleRef().elements().vec() : v.toListRef().vec();
    json items = json::array();
    for (size_t k = 0; k < elements.size(); ++k) {
      items.push_back(
          encode(elements[k], path + "/" + std::to_string(k), tensors));
    }
    if (v.isTuple()) {
      return pair("tuple", std::move(items));
    }
    return json::array(
        {"list", std::move(items), v.toList().elementType()->annotation_str()});
  }
  LOWMEM_CHECK(false, "[checkpoint] optimizer state value ", quote(path),
               " has type ", v.type()->annotation_str(),
               ", which the checkpoint format cannot store");
  return {};
}

json flatten_module(const torch::jit::Module& m, const std::string& prefix,
                    std::map<std::string, at::Tensor>& tensors) {
  json out = json::array();
  const auto obj = m._ivalue();
  const auto type = obj->type();
  for (size_t i = 0; i < type->numAttributes(); ++i) {
    const std::string name = type->getAttributeName(i);
    json e = encode(obj->getSlot(i), prefix + name, tensors);
    e.insert(e.begin(), name);
    out.push_back(std::move(e));
  }
  return out;
}

double json_double(const json& v, const std::string& where) {
  if (v.is_number()) {
    return v.get<double>();
  }
  LOWMEM_CHECK(v.is_string(), where, ": not a number: ", clip_json(v));
  const std::string s = v.get<std::string>();
  LOWMEM_CHECK(s == "nan" || s == "inf" || s == "-inf", where,
               ": not a number: ", quote(s));
  return s == "nan" ? std::nan("") : (s == "inf" ? HUGE_VAL : -HUGE_VAL);
}

// The element type of a list from its annotation: the types optimizers
// write.
c10::TypePtr list_type(const json& annotation, const std::string& where) {
  LOWMEM_CHECK(annotation.is_string(), where, ": bad list element type ",
               clip_json(annotation));
  const std::string a = annotation.get<std::string>();
  if (a == "int") return c10::IntType::get();
  if (a == "float") return c10::FloatType::get();
  if (a == "bool") return c10::BoolType::get();
  if (a == "str") return c10::StringType::get();
  if (a == "Tensor") return c10::TensorType::get();
  LOWMEM_CHECK(false, where, ": unsupported list element type ", quote(a));
  return nullptr;
}

struct Rebuilder {
  const std::map<std::string, at::Tensor>& tensors;
  const c10::optional<c10::Device>& device;
  const std::string& source;

  at::Tensor tensor(const json& name, const std::string& where) const {
    LOWMEM_CHECK(name.is_string(), where, ": bad tensor name ",
                 clip_json(name));
    auto it = tensors.find(name.get<std::string>());
    LOWMEM_CHECK(it != tensors.end(), where, ": no tensor ",
                 quote(name.get<std::string>()), " in the file");
    return device ? it->second.to(*device) : it->second;
  }

  // One value from its entry `e` ([kind, value] or [kind, value, type]).
  c10::IValue value(const json& e, size_t at, const std::string& where,
                    int depth) const {
    LOWMEM_CHECK(depth < kMaxDepth, where, ": values nest too deep");
    const std::string kind = e[at].get<std::string>();
    const json& v = e[at + 1];
    if (kind == "none") {
      return c10::IValue();
    }
    if (kind == "bool" && v.is_boolean()) {
      return v.get<bool>();
    }
    if (kind == "int" && v.is_number_integer()) {
      return v.get<int64_t>();
    }
    if (kind == "double") {
      return json_double(v, where);
    }
    if (kind == "str" && v.is_string()) {
      return v.get<std::string>();
    }
    if (kind == "tensor") {
      return tensor(v, where);
    }
    const bool list = kind == "list" && e.size() == at + 3;
    if ((kind == "tuple" || list) && v.is_array()) {
      std::vector<c10::IValue> items;
      for (const auto& x : v) {
        LOWMEM_CHECK(x.is_array() && (x.size() == 2 || x.size() == 3) &&
                         x[0].is_string(),
                     where, ": bad element ", clip_json(x));
        items.push_back(value(x, 0, where, depth + 1));
      }
      if (!list) {
        return c10::ivalue::Tuple::create(std::move(items));
      }
      c10::impl::GenericList out(list_type(e[at + 2], where));
      for (auto& x : items) {
        LOWMEM_CHECK(x.type()->isSubtypeOf(*out.elementType()), where, ": a ",
                     x.type()->annotation_str(), " in a list of ",
                     out.elementType()->annotation_str());
        out.push_back(std::move(x));
      }
      return out;
    }
    LOWMEM_CHECK(false, where, ": bad kind ", quote(kind), " or value ",
                 clip_json(v));
    return {};
  }

  void build(const json& tree, torch::serialize::OutputArchive& out,
             int depth) const {
    const std::string at = "[checkpoint] " + quote(source);
    LOWMEM_CHECK(tree.is_array(), at, ": optimizer archive is not a list");
    LOWMEM_CHECK(depth < kMaxDepth, at, ": optimizer archive nests too deep");
    for (const auto& e : tree) {
      LOWMEM_CHECK(e.is_array() && (e.size() == 3 || e.size() == 4) &&
                       e[0].is_string() && e[1].is_string(),
                   at, ": bad optimizer archive entry ", clip_json(e));
      const std::string name = e[0].get<std::string>();
      const std::string where = at + ": entry " + quote(name);
      if (e[1] == "tensor") {
        out.write(name, tensor(e[2], where), /*is_buffer=*/true);
      } else if (e[1] == "archive") {
        torch::serialize::OutputArchive nested(out.compilation_unit());
        build(e[2], nested, depth + 1);
        out.write(name, nested);
      } else {
        out.write(name, value(e, 1, where, depth));
      }
    }
  }
};

}  // namespace

json flatten_archive(torch::serialize::OutputArchive& archive,
                     std::map<std::string, at::Tensor>& tensors) {
  return flatten_module(archive.*get(OutputModule()), "", tensors);
}

void unflatten_archive(const json& tree,
                       const std::map<std::string, at::Tensor>& tensors,
                       const c10::optional<c10::Device>& device,
                       const std::string& source,
                       torch::serialize::InputArchive& out) {
  torch::serialize::OutputArchive built;
  Rebuilder{tensors, device, source}.build(tree, built, 0);
  out.*get(InputModule()) = built.*get(OutputModule());
}

}  // namespace lowmem::io::detail
