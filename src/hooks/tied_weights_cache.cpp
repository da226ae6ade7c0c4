#include "ferry/hooks/tied_weights_cache.h"

#include "ferry/nn/module.h"

namespace ferry {

TiedWeightsCache::TiedWeightsCache(Module& model) {
  std::unordered_map<const c10::TensorImpl*, int> seen;
  std::vector<int> count;
  std::vector<at::Tensor> tensors;
  for (const auto& [name, tensor] : model.named_parameters(true, /*remove_duplicate=*/false)) {
    auto [it, inserted] = seen.emplace(tensor.unsafeGetTensorImpl(), static_cast<int>(tensors.size()));
    if (inserted) {
      tensors.push_back(tensor);
      count.push_back(1);
    } else {
      ++count[it->second];
    }
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (count[i] < 2 || tensors[i].is_meta()) continue;  // meta tensors carry no identity worth sharing
    group_of_.emplace(tensors[i].unsafeGetTensorImpl(), static_cast<int>(groups_.size()));
    groups_.push_back(tensors[i]);
  }
  group_count_ = groups_.size();
}

void TiedWeightsCache::seal() {
  groups_.clear();
  group_of_.clear();
}

std::optional<int> TiedWeightsCache::group_of(const at::Tensor& tensor) const {
  if (!tensor.defined()) return std::nullopt;
  auto it = group_of_.find(tensor.unsafeGetTensorImpl());
  if (it == group_of_.end()) return std::nullopt;
  return it->second;
}

at::Tensor TiedWeightsCache::find(int group, c10::Device device) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = placed_.find(group);
  if (it == placed_.end()) return at::Tensor();
  for (const auto& [d, t] : it->second)
    if (d == device) return t;
  return at::Tensor();
}

at::Tensor TiedWeightsCache::put(int group, c10::Device device, at::Tensor tensor) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto& entries = placed_[group];
  for (const auto& [d, t] : entries)
    if (d == device) return t;
  entries.emplace_back(device, tensor);
  return tensor;
}

void TiedWeightsCache::erase(int group, c10::Device device) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = placed_.find(group);
  if (it == placed_.end()) return;
  auto& entries = it->second;
  for (auto e = entries.begin(); e != entries.end(); ++e)
    if (e->first == device) {
      entries.erase(e);
      break;
    }
  if (entries.empty()) placed_.erase(it);
}

size_t TiedWeightsCache::size() const {
  std::lock_guard<std::mutex> lock(mutex_);
  size_t n = 0;
  for (const auto& [g, entries] : placed_) n += entries.size();
  return n;
}

}  // namespace ferry
