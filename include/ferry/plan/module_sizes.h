#pragma once
/// \file
/// Module sizes with Accelerate's accounting (compute_module_sizes): every tensor counted once,
/// under its first name in traversal order; a bool element is 1/8 byte, so sizes are kept exactly
/// in bits. `dtype` lowers floating tensors to that dtype (never raises them, never touches
/// integer or bool tensors); `special_dtypes` overrides the dtype of named tensors.
///
///     SizeOptions options;
///     options.dtype = c10::ScalarType::Half;
///     ModuleSizes sizes = compute_module_sizes(tree, options);
///     sizes.bytes("");          // whole model
///     sizes.bytes("linear1");   // 0 for a name without tensors, as Accelerate's defaultdict

#include "ferry/plan/model_tree.h"

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ferry {

/// Per-tensor dtype overrides, keyed by full tensor name ("lm_head.weight").
using SpecialDtypes = std::unordered_map<std::string, c10::ScalarType>;

/// The dtype arguments every sizing function of Accelerate takes.
struct SizeOptions {
  std::optional<c10::ScalarType> dtype;  ///< target dtype for floating tensors (lowering only)
  SpecialDtypes special_dtypes;          ///< per-tensor overrides, applied as given (even to ints)
};

/// Which modules must never be split: by Python class name ("LlamaDecoderLayer") or by module
/// name pattern ("model.layers.*"; '*' matches within one dotted component, '?' one character).
/// Patterns serve trees whose class names are unknown, such as trees read from a checkpoint.
struct NoSplitRules {
  std::vector<std::string> classes;   ///< no_split_module_classes
  std::vector<std::string> patterns;  ///< module name globs
  bool empty() const { return classes.empty() && patterns.empty(); }
};

/// True if `name` matches `pattern` ('*' within one dotted component, '?' one character).
bool module_name_matches(const std::string& pattern, const std::string& name);

/// Bits one tensor counts for: its numel times its (possibly overridden or lowered) dtype size.
int64_t tensor_size_bits(const TreeTensor& tensor, const std::string& full_name, const SizeOptions& options);

/// An insertion-ordered map from module or tensor name to size, with 0 for absent names.
class ModuleSizes {
 public:
  /// Adds `bits` to `name` (creating it at the end if new).
  void add(const std::string& name, int64_t bits);
  /// Size in bits; 0 when absent.
  int64_t bits(const std::string& name) const;
  /// Size in bytes (exact: a multiple of 1/8); 0 when absent.
  double bytes(const std::string& name) const { return static_cast<double>(bits(name)) / 8.0; }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  /// (name, bits) in Accelerate's insertion order: "", then each tensor's prefixes top-down,
  /// parameters before buffers.
  const std::vector<std::pair<std::string, int64_t>>& entries() const { return entries_; }
  size_t size() const { return entries_.size(); }

 private:
  std::vector<std::pair<std::string, int64_t>> entries_;
  std::unordered_map<std::string, size_t> index_;
};

/// Accelerate's compute_module_sizes: sizes of every module and tensor name (parameters, then
/// buffers, each de-duplicated by identity). With `buffers_only`, only buffers count (persistent
/// or not).
ModuleSizes compute_module_sizes(const ModelTree& tree, const SizeOptions& options = {}, bool buffers_only = false);

/// Accelerate's compute_module_total_buffer_size: bytes of all buffers (0 if none).
double compute_module_total_buffer_size(const ModelTree& tree, const SizeOptions& options = {});

/// The largest "layer" of a model, and every layer of that size.
struct MaxLayer {
  int64_t bits = 0;
  std::vector<std::string> names;
  double bytes() const { return static_cast<double>(bits) / 8.0; }
};

/// Accelerate's get_max_layer_size over the root's direct tensors and children (the planner's
/// first call): a layer is a module without children or one that must not be split; the root's
/// direct parameters and buffers count as layers too. Ties keep every name of the largest size.
MaxLayer get_max_layer_size(const ModelTree& tree, const NoSplitRules& no_split = {},
                            const SizeOptions& options = {});

}  // namespace ferry
