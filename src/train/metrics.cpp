#include "lowmem/train/metrics.h"

#include <cmath>
#include <cstdio>
#include <sstream>

#include <nlohmann/json.hpp>

#include "lowmem/core/check.h"

namespace lowmem::train {
namespace {

const char* kind_name(Progress::Kind k) {
  switch (k) {
    case Progress::Kind::kStep: return "step";
    case Progress::Kind::kSkip: return "skip";
    case Progress::Kind::kEval: return "eval";
    case Progress::Kind::kCheckpoint: return "checkpoint";
    case Progress::Kind::kDone: return "done";
  }
  return "unknown";
}

std::string num(double v) {
  if (!std::isfinite(v)) {
    return "null";
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.9g", v);
  return buf;
}

std::string quoted(const std::string& s) {
  // Invalid UTF-8 bytes become U+FFFD instead of an exception.
  return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

std::string to_json(const Progress& p) {
  std::ostringstream o;
  o << "{\"event\":\"" << kind_name(p.kind) << "\",\"step\":" << p.step
    << ",\"max_steps\":" << p.max_steps;
  switch (p.kind) {
    case Progress::Kind::kStep:
    case Progress::Kind::kSkip:
      o << ",\"loss\":" << num(p.loss) << ",\"grad_norm\":"
        << num(p.grad_norm) << ",\"lr\":" << num(p.lr)
        << ",\"items_per_second\":" << num(p.items_per_second)
        << ",\"items\":" << p.items << ",\"skipped\":" << p.skipped
        << ",\"live_bytes\":" << p.live_bytes << ",\"peak_bytes\":"
        << p.peak_bytes;
      break;
    case Progress::Kind::kEval:
      o << ",\"eval_loss\":" << num(p.eval_loss) << ",\"items\":" << p.items;
      break;
    case Progress::Kind::kCheckpoint:
      o << ",\"path\":" << quoted(p.path);
      break;
    case Progress::Kind::kDone:
      o << ",\"eval_loss\":" << num(p.eval_loss) << ",\"items\":" << p.items
        << ",\"skipped\":" << p.skipped << ",\"peak_bytes\":" << p.peak_bytes;
      break;
  }
  o << "}";
  return o.str();
}

JsonlWriter::JsonlWriter(const std::string& path)
    : path_(path), out_(path, std::ios::app) {
  LOWMEM_CHECK(out_.good(), "[metrics] cannot open '", path,
               "' for appending");
}

void JsonlWriter::write(const Progress& p) {
  out_ << to_json(p) << '\n';
  out_.flush();
  LOWMEM_CHECK(out_.good(), "[metrics] write to '", path_, "' failed");
}

}  // namespace lowmem::train
