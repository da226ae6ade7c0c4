#pragma once
/// \file
/// ferry's log: one process-wide sink for warnings and informational lines, so that a library
/// never writes to stdout on its own and tests can assert on what was said.
///
///     ferry::ScopedLogCapture capture;            // collects instead of printing
///     infer_auto_device_map(tree, options);
///     EXPECT_TRUE(capture.contains("insufficient memory"));

#include <functional>
#include <mutex>
#include <string>
#include <vector>

namespace ferry {

enum class LogLevel { Debug, Info, Warning };

/// Returns "debug", "info" or "warning".
const char* to_string(LogLevel level);

/// Receives every message ferry logs. The default sink prints warnings to stderr and drops the rest.
using LogSink = std::function<void(LogLevel, const std::string&)>;

/// Replaces the process-wide sink; returns the previous one. An empty sink restores the default.
LogSink set_log_sink(LogSink sink);

/// Sends a message to the current sink.
void log(LogLevel level, const std::string& message);
inline void log_info(const std::string& message) { log(LogLevel::Info, message); }
inline void log_warning(const std::string& message) { log(LogLevel::Warning, message); }

/// While alive, collects every message (from any thread) instead of passing it to the previous sink.
class ScopedLogCapture {
 public:
  struct Entry {
    LogLevel level;
    std::string message;
  };
  ScopedLogCapture();
  ~ScopedLogCapture();
  ScopedLogCapture(const ScopedLogCapture&) = delete;
  ScopedLogCapture& operator=(const ScopedLogCapture&) = delete;

  /// A copy of what was logged so far.
  std::vector<Entry> entries() const;
  /// True if any message (of `level`, when given) contains `needle`.
  bool contains(const std::string& needle) const;
  bool contains(LogLevel level, const std::string& needle) const;

 private:
  mutable std::mutex mutex_;
  std::vector<Entry> entries_;
  LogSink previous_;
};

}  // namespace ferry
