// results.json, results.csv and curves.csv (schema: docs/compare.md).
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "internal.h"
#include "lowmem/core/check.h"
#include "lowmem/io/atomic_file.h"

namespace lowmem::compare {
namespace detail {

std::string num(double v) {
  if (!std::isfinite(v)) return std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf");
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

namespace {

using nlohmann::json;

json opt(const std::optional<double>& v) {
  if (!v || !std::isfinite(*v)) return nullptr;
  return *v;
}
std::optional<double> opt_from(const json& j, const char* key) {
  if (!j.contains(key) || j.at(key).is_null()) return std::nullopt;
  return j.at(key).get<double>();
}
json finite(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }
double dbl(const json& j, const char* key) {
  if (!j.contains(key) || j.at(key).is_null()) return std::nan("");
  return j.at(key).get<double>();
}
template <class T>
T get_or(const json& j, const char* key, T def) {
  if (!j.contains(key) || j.at(key).is_null()) return def;
  return j.at(key).get<T>();
}

json info_json(const MethodInfo& i) {
  return {{"suite", i.suite},
          {"name", i.name},
          {"label", i.label},
          {"paper", i.paper},
          {"description", i.description}};
}
MethodInfo info_from(const json& j) {
  MethodInfo i;
  i.suite = j.at("suite").get<std::string>();
  i.name = j.at("name").get<std::string>();
  i.label = get_or<std::string>(j, "label", i.name);
  i.paper = get_or<std::string>(j, "paper", "");
  i.description = get_or<std::string>(j, "description", "");
  return i;
}

json method_json(const MethodResult& r) {
  json curve = json::array();
  for (const auto& p : r.curve)
    curve.push_back({{"step", p.step},
                     {"wall_s", p.wall_s},
                     {"train_loss", finite(p.train_loss)},
                     {"val_loss", opt(p.val_loss)},
                     {"val_accuracy", opt(p.val_accuracy)}});
  json j = info_json(r.info);
  j.update({{"status", r.status},
            {"reason", r.reason},
            {"detail", r.detail},
            {"overrides", r.overrides},
            {"task", r.task},
            {"total_params", r.total_params},
            {"trainable_params", r.trainable_params},
            {"steps", r.steps},
            {"memory",
             {{"optimizer_state_bytes", r.optimizer_state_bytes},
              {"frozen_weight_bytes", r.frozen_weight_bytes},
              {"trainable_weight_bytes", r.trainable_weight_bytes},
              {"gradient_bytes", r.gradient_bytes},
              {"activation_bytes", r.activation_bytes},
              {"peak_tensor_bytes", r.peak_tensor_bytes},
              {"eval_peak_tensor_bytes", r.eval_peak_tensor_bytes},
              {"peak_rss_bytes", r.peak_rss_bytes},
              {"start_rss_bytes", r.start_rss_bytes}}},
            {"time",
             {{"step_time_ms", finite(r.step_time_ms)},
              {"throughput", finite(r.throughput)},
              {"throughput_unit", r.throughput_unit},
              {"train_time_s", finite(r.train_time_s)},
              {"wall_s", finite(r.wall_s)}}},
            {"quality",
             {{"final_train_loss", finite(r.final_train_loss)},
              {"val_loss", opt(r.val_loss)},
              {"val_accuracy", opt(r.val_accuracy)}}},
            {"curve", curve}});
  return j;
}

MethodResult method_from(const json& j) {
  MethodResult r;
  r.info = info_from(j);
  r.status = j.at("status").get<std::string>();
  r.reason = get_or<std::string>(j, "reason", "");
  r.detail = get_or<std::string>(j, "detail", "");
  r.overrides = get_or<std::vector<std::string>>(j, "overrides", {});
  r.task = get_or<std::string>(j, "task", "");
  r.total_params = get_or<int64_t>(j, "total_params", 0);
  r.trainable_params = get_or<int64_t>(j, "trainable_params", 0);
  r.steps = get_or<int64_t>(j, "steps", 0);
  const json& m = j.at("memory");
  r.optimizer_state_bytes = m.at("optimizer_state_bytes").get<int64_t>();
  r.frozen_weight_bytes = m.at("frozen_weight_bytes").get<int64_t>();
  r.trainable_weight_bytes = m.at("trainable_weight_bytes").get<int64_t>();
  r.gradient_bytes = m.at("gradient_bytes").get<int64_t>();
  r.activation_bytes = m.at("activation_bytes").get<int64_t>();
  r.peak_tensor_bytes = m.at("peak_tensor_bytes").get<int64_t>();
  r.eval_peak_tensor_bytes = m.value("eval_peak_tensor_bytes", int64_t{0});
  r.peak_rss_bytes = m.at("peak_rss_bytes").get<int64_t>();
  r.start_rss_bytes = m.at("start_rss_bytes").get<int64_t>();
  const json& t = j.at("time");
  r.step_time_ms = dbl(t, "step_time_ms");
  r.throughput = dbl(t, "throughput");
  r.throughput_unit = get_or<std::string>(t, "throughput_unit", "");
  r.train_time_s = dbl(t, "train_time_s");
  r.wall_s = dbl(t, "wall_s");
  const json& q = j.at("quality");
  r.final_train_loss = dbl(q, "final_train_loss");
  r.val_loss = opt_from(q, "val_loss");
  r.val_accuracy = opt_from(q, "val_accuracy");
  for (const auto& p : j.at("curve")) {
    CurvePoint c;
    c.step = p.at("step").get<int64_t>();
    c.wall_s = dbl(p, "wall_s");
    c.train_loss = dbl(p, "train_loss");
    c.val_loss = opt_from(p, "val_loss");
    c.val_accuracy = opt_from(p, "val_accuracy");
    r.curve.push_back(c);
  }
  return r;
}

// The options' JSON, written and read through CompareOptions::for_each_field
// (a dotted key nests). Reading keeps the default of an absent key (files
// written before an option existed).
json options_json(const CompareOptions& options) {
  CompareOptions o = options;
  json j = json::object();
  o.for_each_field(
      [&j](const char* key, auto& field, const char*, const char*) {
        const std::string k = key;
        if (k.empty()) return;
        const auto dot = k.find('.');
        if (dot == std::string::npos) {
          j[k] = field;
        } else {
          j[k.substr(0, dot)][k.substr(dot + 1)] = field;
        }
      });
  return j;
}

CompareOptions options_from(const json& j) {
  CompareOptions o;
  o.for_each_field(
      [&j](const char* key, auto& field, const char*, const char*) {
        const std::string k = key;
        if (k.empty()) return;
        const auto dot = k.find('.');
        const json* node = &j;
        std::string leaf = k;
        if (dot != std::string::npos) {
          const std::string head = k.substr(0, dot);
          if (!j.contains(head)) return;
          node = &j.at(head);
          leaf = k.substr(dot + 1);
        }
        if (node->contains(leaf) && !node->at(leaf).is_null()) {
          field = node->at(leaf).get<std::decay_t<decltype(field)>>();
        }
      });
  return o;
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
void write_text_file(const std::string& path, const std::string& text) {
  io::atomic_write_file(path, text);  // temp file, fsync, rename
}

}  // namespace detail

using nlohmann::json;

std::string results_to_json(const CompareResults& res) {
  json methods = json::array();
  for (const auto& m : res.methods) methods.push_back(detail::method_json(m));
  json claims = json::array();
  for (const auto& c : res.claims)
    claims.push_back({{"id", c.id},
                      {"paper", c.paper},
                      {"claim", c.claim},
                      {"status", c.status},
                      {"evidence", c.evidence}});
  const PythonBaseline& p = res.python;
  json j = {
      {"schema", "lowmem.compare"},
      {"schema_version", res.schema_version},
      {"created", res.created},
      {"command_line", res.command_line},
      {"machine", res.machine},
      {"interrupted", res.interrupted},
      {"wall_s", res.wall_s},
      {"options", detail::options_json(res.options)},
      {"notes", res.notes},
      {"methods", methods},
      {"claims", claims},
      {"python_baseline",
       {{"status", p.status},
        {"reason", p.reason},
        {"torch_version", p.torch_version},
        {"step_time_ms", detail::finite(p.step_time_ms)},
        {"throughput", detail::finite(p.throughput)},
        {"peak_rss_bytes", p.peak_rss_bytes},
        {"total_params", p.total_params},
        {"final_train_loss", detail::finite(p.final_train_loss)},
        {"val_loss", detail::finite(p.val_loss)},
        {"steps", p.steps}}},
      {"plots",
       {{"status", res.plots.status},
        {"reason", res.plots.reason},
        {"files", res.plots.files}}}};
  return j.dump(1, ' ', false, json::error_handler_t::replace) + "\n";
}

CompareResults results_from_json(const std::string& text) {
  json j = json::parse(text);
  LOWMEM_CHECK(j.value("schema", "") == "lowmem.compare",
               "[compare] not a lowmem compare results file (schema '",
               j.value("schema", ""), "')");
  const int v = j.at("schema_version").get<int>();
  LOWMEM_CHECK(v == kSchemaVersion, "[compare] results schema_version ", v,
               " is not the supported version ", kSchemaVersion);
  CompareResults r;
  r.schema_version = v;
  r.created = j.at("created").get<std::string>();
  r.command_line = j.at("command_line").get<std::string>();
  r.machine = j.at("machine").get<std::string>();
  r.interrupted = j.at("interrupted").get<bool>();
  r.wall_s = j.at("wall_s").get<double>();
  r.options = detail::options_from(j.at("options"));
  r.notes = j.at("notes").get<std::vector<std::string>>();
  for (const auto& m : j.at("methods")) r.methods.push_back(detail::method_from(m));
  for (const auto& c : j.at("claims"))
    r.claims.push_back({c.at("id"), c.at("paper"), c.at("claim"), c.at("status"),
                        c.at("evidence")});
  const json& p = j.at("python_baseline");
  r.python.status = p.at("status");
  r.python.reason = p.at("reason");
  r.python.torch_version = p.at("torch_version");
  r.python.step_time_ms = detail::dbl(p, "step_time_ms");
  r.python.throughput = detail::dbl(p, "throughput");
  r.python.peak_rss_bytes = p.at("peak_rss_bytes");
  r.python.total_params = p.at("total_params");
  r.python.final_train_loss = detail::dbl(p, "final_train_loss");
  r.python.val_loss = detail::dbl(p, "val_loss");
  r.python.steps = p.at("steps");
  const json& pl = j.at("plots");
  r.plots.status = pl.at("status");
  r.plots.reason = pl.at("reason");
  r.plots.files = pl.at("files").get<std::vector<std::string>>();
  return r;
}

void write_results_json(const CompareResults& results, const std::string& path) {
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
    std::vector<std::string> f = {
        std::to_string(results.schema_version),
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
    for (size_t i = 0; i < f.size(); ++i) o << (i ? "," : "") << csv_field(f[i]);
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
        << detail::csv_num(p.wall_s) << "," << detail::csv_num(p.train_loss) << ","
        << detail::csv_opt(p.val_loss) << "," << detail::csv_opt(p.val_accuracy)
        << "\n";
  detail::write_text_file(path, o.str());
}

}  // namespace lowmem::compare
