#include "ferry/core/log.h"

#include <iostream>

namespace ferry {
namespace {
std::mutex& sink_mutex() {
  static std::mutex m;
  return m;
}
LogSink& current_sink() {
  static LogSink sink;
  return sink;
}
void default_sink(LogLevel level, const std::string& message) {
  if (level == LogLevel::Warning) std::cerr << "ferry warning: " << message << '\n';
}
}  // namespace

const char* to_string(LogLevel level) {
  switch (level) {
    case LogLevel::Debug: return "debug";
    case LogLevel::Info: return "info";
    case LogLevel::Warning: return "warning";
  }
  return "?";
}

LogSink set_log_sink(LogSink sink) {
  std::lock_guard<std::mutex> lock(sink_mutex());
  LogSink previous = std::move(current_sink());
  current_sink() = std::move(sink);
  return previous;
}

void log(LogLevel level, const std::string& message) {
  LogSink sink;
  {
    std::lock_guard<std::mutex> lock(sink_mutex());
    sink = current_sink();
  }
  if (sink) sink(level, message);
  else default_sink(level, message);
}

ScopedLogCapture::ScopedLogCapture() {
  previous_ = set_log_sink([this](LogLevel level, const std::string& message) {
    std::lock_guard<std::mutex> lock(mutex_);
    entries_.push_back({level, message});
  });
}

ScopedLogCapture::~ScopedLogCapture() { set_log_sink(std::move(previous_)); }

std::vector<ScopedLogCapture::Entry> ScopedLogCapture::entries() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return entries_;
}

bool ScopedLogCapture::contains(const std::string& needle) const {
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& e : entries_)
    if (e.message.find(needle) != std::string::npos) return true;
  return false;
}

bool ScopedLogCapture::contains(LogLevel level, const std::string& needle) const {
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& e : entries_)
    if (e.level == level && e.message.find(needle) != std::string::npos) return true;
  return false;
}

}  // namespace ferry
