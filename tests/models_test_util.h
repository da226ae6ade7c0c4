#pragma once
#include "test_util.h"
// Helpers shared by the models tests.

#include "ferry/core/error.h"
#include "ferry/io/safetensors.h"
#include "ferry/models/causal_lm.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

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

/// Model weights drawn like the fixtures: normal(0, 0.08), norms near 1.
inline void randomize(CausalLM& model, uint64_t seed) {
  at::manual_seed(seed);
  c10::NoGradGuard no_grad;
  for (auto& [name, t] : model.named_parameters()) {
    const bool norm = name.find("norm") != std::string::npos || name.find("ln_") != std::string::npos;
    if (norm && name.find("bias") == std::string::npos)
      t.copy_(1.0 + 0.1 * at::randn(t.sizes()));
    else
      t.copy_(0.08 * at::randn(t.sizes()));
  }
}

/// A fixture's reference.safetensors (FIXTURES.md): transformers' input ids, float32 logits and
/// greedy tokens for the checkpoint in `dir`.
struct Reference {
  at::Tensor input_ids, logits, generated;
};
inline Reference read_reference(const std::string& dir) {
  auto file = ferry::io::SafetensorsFile::open(dir + "/reference.safetensors");
  return {file.load("input_ids"), file.load("logits"), file.load("generated")};
}

inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

}  // namespace ferry::models::testing
