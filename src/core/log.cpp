#include "lowmem/core/log.h"

#include <mutex>

namespace lowmem {
namespace {
std::mutex& sink_mutex() {
  static std::mutex m;
  return m;
}
LogSink& sink_ref() {
  static LogSink s;
  return s;
}
}  // namespace

void set_log_sink(LogSink sink) {
  std::lock_guard<std::mutex> lock(sink_mutex());
  sink_ref() = std::move(sink);
}

void log(LogLevel level, const std::string& message) {
  std::lock_guard<std::mutex> lock(sink_mutex());
  if (sink_ref()) sink_ref()(level, message);
}

}  // namespace lowmem
