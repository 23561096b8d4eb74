// Logging through a callback: the library never prints. tools/ installs a sink.
#pragma once

#include <functional>
#include <string>

namespace lowmem {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2 };

using LogSink = std::function<void(LogLevel, const std::string&)>;

/// Installs the process-wide sink (empty = discard). Thread-safe.
void set_log_sink(LogSink sink);
/// Sends a message to the sink, if any.
void log(LogLevel level, const std::string& message);

}  // namespace lowmem
