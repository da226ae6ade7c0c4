#pragma once
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

/// A fresh empty folder under the system temp dir, removed on destruction.
class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() / ("ferry_models_" + tag + "_" + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string str() const { return path_.string(); }
  std::filesystem::path path() const { return path_; }

 private:
  std::filesystem::path path_;
};

inline std::string fixture(const std::string& name) { return std::string(FERRY_TEST_DATA_DIR) + "/" + name; }

inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

}  // namespace ferry::models::testing
