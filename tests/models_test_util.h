#pragma once
#include "test_util.h"
// Helpers shared by the models tests.

#include "ferry/core/error.h"

#include <ATen/ATen.h>

#include <filesystem>
#include <random>
#include <string>

namespace ferry::models::testing {

/// The message of the ferry::Error `f` throws ("" when it throws nothing).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const ferry::Error& e) {
    return e.what();
  }
  return "";
}

using ferry_test::TempDir;  // test_util.h

inline std::string fixture(const std::string& name) { return std::string(FERRY_TEST_DATA_DIR) + "/" + name; }

inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

}  // namespace ferry::models::testing
