#pragma once
/// \file
/// One cache per dispatched model for tied weights, keyed by tie group (found by tensor
/// identity when the model is dispatched) and device. The first materialisation of a tied weight
/// on a device is shared by every slot of the group, so a tied embedding and LM head occupy the
/// accelerator once; entries made during a forward are dropped after it so memory is freed.
/// Accelerate keys this table by data_ptr(), which is 0 for every meta tensor and changes with
/// every load from disk; ferry never does.

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>

namespace ferry {

class Module;

/// Tie groups of a model and their materialisations per device.
class TiedWeightsCache {
 public:
  /// Records the tie groups of `model` as they are now (call before any tensor moves).
  explicit TiedWeightsCache(Module& model);

  /// The tie group of a tensor object that was in the model when the cache was made, if tied.
  std::optional<int> group_of(const at::Tensor& tensor) const;
  /// The materialisation of `group` on `device`, or an undefined tensor.
  at::Tensor find(int group, c10::Device device) const;
  /// Records the materialisation of `group` on `device` (first one wins; returns the kept one).
  at::Tensor put(int group, c10::Device device, at::Tensor tensor);
  /// Forgets the materialisation of `group` on `device`.
  void erase(int group, c10::Device device);
  /// Number of (group, device) materialisations held.
  size_t size() const;
  /// Number of tie groups.
  size_t group_count() const { return group_count_; }
  /// Forgets the tensor identities (once every hook has looked up its groups), so that the
  /// original tensors are not kept alive: offloaded tied weights must be able to leave memory.
  void seal();

 private:
  // The tensors are pinned until seal() so that no TensorImpl address is reused meanwhile.
  std::vector<at::Tensor> groups_;
  size_t group_count_ = 0;
  std::unordered_map<const c10::TensorImpl*, int> group_of_;
  mutable std::mutex mutex_;
  std::unordered_map<int, std::vector<std::pair<c10::Device, at::Tensor>>> placed_;
};

}  // namespace ferry
