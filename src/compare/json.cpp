// results.json, results.csv and curves.csv (schema: docs/compare.md).
#include "lowmem/core/json.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <type_traits>

#include "internal.h"
#include "lowmem/core/check.h"
#include "lowmem/core/input.h"
#include "lowmem/io/atomic_file.h"

namespace lowmem::compare {
namespace detail {

std::string num(double v) {
  if (!std::isfinite(v))
    return std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf");
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

namespace {

using nlohmann::json;

template <class T>
json to_json(const T& object);
template <class T>
T from_json(const json& j, T o = T());

// Whether T lists its fields (for_each_field): written as a JSON object.
struct AnyVisitor {
  template <class... A>
  void operator()(A&&...) const {}
};
template <class T, class = void>
struct has_fields : std::false_type {};
template <class T>
struct has_fields<
    T, std::void_t<decltype(std::declval<T&>().for_each_field(AnyVisitor{}))>>
    : std::true_type {};
// A vector of objects with a field list: a JSON array of objects.
template <class T>
struct is_field_vector : std::false_type {};
template <class T>
struct is_field_vector<std::vector<T>> : has_fields<T> {};

// One field at a dotted key ("memory.peak_tensor_bytes" nests). Doubles that
// are not finite and unset optionals are null; objects with a field list and
// vectors of them nest.
template <class T>
void put(json& j, const std::string& key, const T& field) {
  const auto dot = key.find('.');
  if (dot != std::string::npos) {
    put(j[key.substr(0, dot)], key.substr(dot + 1), field);
  } else if constexpr (std::is_same_v<T, double>) {
    j[key] = std::isfinite(field) ? json(field) : json(nullptr);
  } else if constexpr (std::is_same_v<T, std::optional<double>>) {
    j[key] = field && std::isfinite(*field) ? json(*field) : json(nullptr);
  } else if constexpr (has_fields<T>::value) {
    j[key] = to_json(field);
  } else if constexpr (is_field_vector<T>::value) {
    json a = json::array();
    for (const auto& x : field) a.push_back(to_json(x));
    j[key] = a;
  } else {
    j[key] = field;
  }
}

// Reading keeps the default of an absent key (files written before a field
// existed); null reads as NaN / unset.
template <class T>
void get(const json& j, const std::string& key, T& field) {
  const auto dot = key.find('.');
  if (dot != std::string::npos) {
    const std::string head = key.substr(0, dot);
    if (j.contains(head)) get(j.at(head), key.substr(dot + 1), field);
    return;
  }
  if (!j.contains(key)) return;
  const json& v = j.at(key);
  if constexpr (std::is_same_v<T, double>) {
    field = v.is_null() ? std::nan("") : v.get<double>();
  } else if constexpr (std::is_same_v<T, std::optional<double>>) {
    field = v.is_null() ? std::nullopt : std::optional<double>(v.get<double>());
  } else if constexpr (has_fields<T>::value) {
    field = from_json<T>(v);
  } else if constexpr (is_field_vector<T>::value) {
    field.clear();
    for (const auto& x : v)
      field.push_back(from_json<typename T::value_type>(x));
  } else if (!v.is_null()) {
    field = v.get<T>();
  }
}

// An object's fields (its for_each_field list) as JSON and back.
template <class T>
json to_json(const T& object) {
  T o = object;
  json j = json::object();
  o.for_each_field([&j](const char* key, auto& field, auto&&...) {
    if (*key != '\0') put(j, key, field);
  });
  return j;
}

template <class T>
T from_json(const json& j, T o) {
  o.for_each_field([&j](const char* key, auto& field, auto&&...) {
    if (*key != '\0') get(j, key, field);
  });
  return o;
}

json method_json(const MethodResult& r) {
  json j = to_json(r.info);
  j.update(to_json(r));
  return j;
}

MethodResult method_from(const json& j) {
  MethodResult r = from_json<MethodResult>(j);
  r.info = from_json<MethodInfo>(j);
  if (r.info.label.empty()) r.info.label = r.info.name;
  return r;
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string o = "\"";
  for (char c : s) {
    if (c == '"') o += '"';
    o += c;
  }
  return o + "\"";
}
std::string csv_opt(const std::optional<double>& v) { return v ? num(*v) : ""; }
std::string csv_num(double v) { return std::isfinite(v) ? num(v) : ""; }

}  // namespace

std::string method_to_json_line(const MethodResult& r) {
  return method_json(r).dump(-1, ' ', false,
                             nlohmann::json::error_handler_t::replace);
}
MethodResult method_from_json_line(const std::string& s) {
  return method_from(nlohmann::json::parse(s));
}
std::string memory_rows_to_json_line(const std::vector<MemoryRow>& rows) {
  json a = json::array();
  for (const auto& r : rows) a.push_back(to_json(r));
  return a.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}
std::vector<MemoryRow> memory_rows_from_json_line(const std::string& s) {
  std::vector<MemoryRow> rows;
  for (const auto& x : nlohmann::json::parse(s))
    rows.push_back(from_json<MemoryRow>(x));
  return rows;
}
void write_text_file(const std::string& path, const std::string& text) {
  io::atomic_write_file(path, text);  // temp file, fsync, rename
}

}  // namespace detail

using nlohmann::json;

std::string results_to_json(const CompareResults& res) {
  json j = detail::to_json(res);
  j["schema"] = "lowmem.compare";
  json methods = json::array();
  for (const auto& m : res.methods) methods.push_back(detail::method_json(m));
  j["methods"] = methods;
  return j.dump(1, ' ', false, json::error_handler_t::replace) + "\n";
}

CompareResults results_from_json(const std::string& text) {
  JsonLimits limits;
  limits.max_bytes = 256ull << 20;  // curves of many methods and seeds
  const json j = parse_json(text, "compare results", limits);
  const std::string schema =
      json_string_or(j, "schema", "", "[compare] results");
  LOWMEM_CHECK(schema == "lowmem.compare",
               "[compare] not a lowmem compare results file (schema ",
               quote(schema), ")");
  const int64_t v = json_int_or(j, "schema_version", -1, "[compare] results");
  LOWMEM_CHECK(v == kSchemaVersion, "[compare] results schema_version ", v,
               " is not the supported version ", kSchemaVersion);
  try {
    CompareResults r = detail::from_json<CompareResults>(j);
    for (const auto& m : j.at("methods"))
      r.methods.push_back(detail::method_from(m));
    return r;
  } catch (const json::exception& e) {
    LOWMEM_CHECK(false, "[compare] results file: ", quote(e.what()));
  }
  return {};
}

void write_results_json(const CompareResults& results,
                        const std::string& path) {
  detail::write_text_file(path, results_to_json(results));
}

std::vector<std::string> csv_columns() {
  return {"schema_version",
          "suite",
          "method",
          "label",
          "paper",
          "status",
          "reason",
          "detail",
          "task",
          "total_params",
          "trainable_params",
          "steps",
          "optimizer_state_bytes",
          "frozen_weight_bytes",
          "trainable_weight_bytes",
          "gradient_bytes",
          "activation_bytes",
          "peak_tensor_bytes",
          "peak_rss_bytes",
          "step_time_ms",
          "throughput",
          "throughput_unit",
          "train_time_s",
          "final_train_loss",
          "val_loss",
          "val_accuracy"};
}

void write_results_csv(const CompareResults& results, const std::string& path) {
  std::ostringstream o;
  const auto cols = csv_columns();
  for (size_t i = 0; i < cols.size(); ++i) o << (i ? "," : "") << cols[i];
  o << "\n";
  using detail::csv_field;
  using detail::csv_num;
  for (const auto& r : results.methods) {
    std::vector<std::string> f = {std::to_string(results.schema_version),
                                  r.info.suite,
                                  r.info.name,
                                  r.info.label,
                                  r.info.paper,
                                  r.status,
                                  r.reason,
                                  r.detail,
                                  r.task,
                                  std::to_string(r.total_params),
                                  std::to_string(r.trainable_params),
                                  std::to_string(r.steps),
                                  std::to_string(r.optimizer_state_bytes),
                                  std::to_string(r.frozen_weight_bytes),
                                  std::to_string(r.trainable_weight_bytes),
                                  std::to_string(r.gradient_bytes),
                                  std::to_string(r.activation_bytes),
                                  std::to_string(r.peak_tensor_bytes),
                                  std::to_string(r.peak_rss_bytes),
                                  csv_num(r.step_time_ms),
                                  csv_num(r.throughput),
                                  r.throughput_unit,
                                  csv_num(r.train_time_s),
                                  csv_num(r.final_train_loss),
                                  detail::csv_opt(r.val_loss),
                                  detail::csv_opt(r.val_accuracy)};
    for (size_t i = 0; i < f.size(); ++i)
      o << (i ? "," : "") << csv_field(f[i]);
    o << "\n";
  }
  detail::write_text_file(path, o.str());
}

void write_curves_csv(const CompareResults& results, const std::string& path) {
  std::ostringstream o;
  o << "suite,method,step,wall_s,train_loss,val_loss,val_accuracy\n";
  for (const auto& r : results.methods)
    for (const auto& p : r.curve)
      o << r.info.suite << "," << r.info.name << "," << p.step << ","
        << detail::csv_num(p.wall_s) << "," << detail::csv_num(p.train_loss)
        << "," << detail::csv_opt(p.val_loss) << ","
        << detail::csv_opt(p.val_accuracy) << "\n";
  detail::write_text_file(path, o.str());
}

}  // namespace lowmem::compare
