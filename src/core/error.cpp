#include "ferry/core/error.h"

namespace ferry {

Error::Error(std::string function, std::string message)
    : std::runtime_error(function.empty() ? message : "[" + function + "] " + message),
      function_(std::move(function)),
      message_(std::move(message)) {}

Error::Error(const std::string& what) : std::runtime_error(what), message_(what) {
  const size_t close = what.find("] ");
  if (!what.empty() && what.front() == '[' && close != std::string::npos && what.find(' ') > close) {
    function_ = what.substr(1, close - 1);
    message_ = what.substr(close + 2);
  }
}

Error Error::in(const std::string& function, const std::string& context) const {
  return Error(function, context + message_);
}

}  // namespace ferry
