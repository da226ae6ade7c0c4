#pragma once
/// \file
/// WeightsMap: where offloaded weights live while their module holds meta tensors. One read-only
/// interface, several stores: an in-memory state dict, an Accelerate offload folder, a safetensors
/// checkpoint read in place, a prefixed view of another map, and the combined loader that answers
/// from several at once (Accelerate's OffloadedWeightsLoader).
///
///     auto weights = std::make_shared<ferry::io::StateDictWeightsMap>(model.state_dict());
///     auto block = std::make_shared<ferry::io::PrefixedWeightsMap>(weights, "layers.3.");
///     at::Tensor w = block->load("mlp.up.weight", c10::kCPU);   // == weights "layers.3.mlp.up.weight"
///
/// Implementations must be safe for concurrent load() calls: the streamer loads on I/O threads.

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ferry::io {

/// What a stored tensor is, without reading it.
struct TensorInfo {
  c10::ScalarType dtype = c10::kFloat;
  std::vector<int64_t> shape;
  /// Stored bytes (numel x element size).
  int64_t nbytes() const;
};

/// A read-only map from tensor names to stored tensors.
class WeightsMap {
 public:
  virtual ~WeightsMap() = default;
  /// Every name, in the store's order.
  virtual std::vector<std::string> keys() const = 0;
  virtual bool contains(const std::string& name) const = 0;
  /// Dtype, shape and bytes of `name`; throws ferry::Error naming the tensor when absent.
  virtual TensorInfo info(const std::string& name) const = 0;
  /// The tensor `name` on `device`, cast to `dtype` when given. In-memory maps return the stored
  /// tensor object itself when no move or cast is needed (identity preserved); file-backed maps
  /// may return a zero-copy, read-only tensor over the mapped file for a CPU target without cast.
  /// Throws ferry::Error naming the tensor when absent.
  virtual at::Tensor load(const std::string& name, c10::Device device = c10::kCPU,
                          c10::optional<c10::ScalarType> dtype = c10::nullopt) const = 0;
  /// True when load(name, cpu) reads from a file (page cache), so that a prefetcher should read
  /// ahead; false for memory-resident stores.
  virtual bool is_file_backed(const std::string& name) const { return false; }
};

using WeightsMapPtr = std::shared_ptr<const WeightsMap>;

/// Tensors held in memory, in insertion order (a state dict).
class StateDictWeightsMap : public WeightsMap {
 public:
  StateDictWeightsMap() = default;
  explicit StateDictWeightsMap(std::vector<std::pair<std::string, at::Tensor>> tensors);
  /// Adds or replaces `name`.
  void insert(const std::string& name, at::Tensor tensor);
  std::vector<std::string> keys() const override;
  bool contains(const std::string& name) const override;
  TensorInfo info(const std::string& name) const override;
  at::Tensor load(const std::string& name, c10::Device device = c10::kCPU,
                  c10::optional<c10::ScalarType> dtype = c10::nullopt) const override;
  /// The stored tensor itself (no move, no cast).
  const at::Tensor& at(const std::string& name) const;
  size_t size() const { return order_.size(); }

 private:
  std::vector<std::string> order_;
  std::unordered_map<std::string, at::Tensor> tensors_;
};

/// A view of `base` under `prefix`: name "w" here is "<prefix>w" there. Unlike Accelerate's
/// PrefixedDataset, keys() lists only the base keys under the prefix, with the prefix stripped.
class PrefixedWeightsMap : public WeightsMap {
 public:
  PrefixedWeightsMap(WeightsMapPtr base, std::string prefix);
  std::vector<std::string> keys() const override;
  bool contains(const std::string& name) const override;
  TensorInfo info(const std::string& name) const override;
  at::Tensor load(const std::string& name, c10::Device device = c10::kCPU,
                  c10::optional<c10::ScalarType> dtype = c10::nullopt) const override;
  bool is_file_backed(const std::string& name) const override;
  const WeightsMapPtr& base() const { return base_; }
  const std::string& prefix() const { return prefix_; }

 private:
  WeightsMapPtr base_;
  std::string prefix_;
};

/// Moves/casts a loaded tensor as WeightsMap::load promises (shared by implementations).
at::Tensor to_device_and_dtype(const at::Tensor& tensor, c10::Device device, c10::optional<c10::ScalarType> dtype);

}  // namespace ferry::io
