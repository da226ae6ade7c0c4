#pragma once
/// \file
/// Helpers shared by the test files.

#include "ferry/core/error.h"
#include "ferry/nn/module.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace ferry_test {

/// Runs `fn`, expects a ferry::Error and returns its message ("" and a test failure otherwise).
template <class Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const ferry::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected ferry::Error, got another exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected ferry::Error, nothing was thrown";
  return "";
}

inline bool has(const std::string& text, const std::string& needle) {
  return text.find(needle) != std::string::npos;
}

/// The names of a walk, in order.
inline std::vector<std::string> names_of(const ferry::NamedTensors& tensors) {
  std::vector<std::string> names;
  for (const auto& named : tensors) names.push_back(named.first);
  return names;
}

inline std::vector<std::string> names_of(const std::vector<std::pair<std::string, ferry::Module*>>& modules) {
  std::vector<std::string> names;
  for (const auto& named : modules) names.push_back(named.first);
  return names;
}

/// The tensor called `name` in a walk (undefined if absent).
inline at::Tensor find_named(const ferry::NamedTensors& tensors, const std::string& name) {
  for (const auto& [key, t] : tensors)
    if (key == name) return t;
  return at::Tensor();
}

}  // namespace ferry_test
