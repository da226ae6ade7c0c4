#include "ferry/tokenizers/stop_strings.h"

#include <algorithm>

namespace ferry::tokenizers {

StopStrings::StopStrings(std::vector<std::string> stops) {
  for (auto& s : stops)
    if (!s.empty()) stops_.push_back(std::move(s));
}

std::string StopStrings::push(std::string_view chunk) {
  if (stopped()) return {};
  held_.append(chunk);
  // The earliest stop string wins; the text before it is shown, the rest dropped.
  size_t first = std::string::npos;
  const std::string* earliest = nullptr;
  for (const std::string& s : stops_) {
    const size_t at = held_.find(s);
    if (at != std::string::npos && (at < first || (at == first && s.size() > earliest->size()))) {
      first = at;
      earliest = &s;
    }
  }
  if (earliest != nullptr) {
    matched_ = *earliest;
    std::string out = held_.substr(0, first);
    held_.clear();
    shown_ += out;
    return out;
  }
  // Keep back the longest tail of the text that some stop string begins with.
  size_t keep = 0;
  for (const std::string& s : stops_)
    for (size_t n = std::min(s.size() - 1, held_.size()); n > keep; --n)
      if (held_.compare(held_.size() - n, n, s, 0, n) == 0) {
        keep = n;
        break;
      }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  shown_ += out;
  return out;
}

std::string StopStrings::cut(std::string_view text) const {
  size_t first = text.size();
  for (const std::string& s : stops_) first = std::min(first, text.find(s));
  return std::string(text.substr(0, first));
}

std::string StopStrings::finish() {
  if (stopped()) return {};
  std::string out = std::move(held_);
  held_.clear();
  shown_ += out;
  return out;
}

}  // namespace ferry::tokenizers
