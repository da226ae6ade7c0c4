#include "ferry/io/weights_map.h"

#include "ferry/core/dtype.h"
#include "ferry/core/error.h"

#include <ATen/ATen.h>

namespace ferry::io {

int64_t TensorInfo::nbytes() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n * dtype_storage_bytes(dtype);
}

at::Tensor to_device_and_dtype(const at::Tensor& tensor, c10::Device device, c10::optional<c10::ScalarType> dtype) {
  bool cast = dtype && *dtype != tensor.scalar_type();
  if (!cast && tensor.device() == device) return tensor;
  if (cast) return tensor.to(device, *dtype);
  return tensor.to(device);
}

StateDictWeightsMap::StateDictWeightsMap(std::vector<std::pair<std::string, at::Tensor>> tensors) {
  for (auto& [name, tensor] : tensors) insert(name, std::move(tensor));
}

void StateDictWeightsMap::insert(const std::string& name, at::Tensor tensor) {
  FERRY_CHECK(tensor.defined(), "tensor '", name, "' is undefined");
  if (!tensors_.count(name)) order_.push_back(name);
  tensors_[name] = std::move(tensor);
}

std::vector<std::string> StateDictWeightsMap::keys() const { return order_; }

bool StateDictWeightsMap::contains(const std::string& name) const { return tensors_.count(name) != 0; }

const at::Tensor& StateDictWeightsMap::at(const std::string& name) const {
  auto it = tensors_.find(name);
  FERRY_CHECK(it != tensors_.end(), "no tensor named '", name, "' in this state dict (", order_.size(), " tensors)");
  return it->second;
}

TensorInfo StateDictWeightsMap::info(const std::string& name) const {
  const at::Tensor& t = at(name);
  return {t.scalar_type(), t.sizes().vec()};
}

at::Tensor StateDictWeightsMap::load(const std::string& name, c10::Device device,
                                     c10::optional<c10::ScalarType> dtype) const {
  return to_device_and_dtype(at(name), device, dtype);
}

PrefixedWeightsMap::PrefixedWeightsMap(WeightsMapPtr base, std::string prefix)
    : base_(std::move(base)), prefix_(std::move(prefix)) {
  FERRY_CHECK(base_, "a prefixed view needs a base map (prefix '", prefix_, "')");
}

std::vector<std::string> PrefixedWeightsMap::keys() const {
  std::vector<std::string> out;
  for (const auto& key : base_->keys())
    if (key.compare(0, prefix_.size(), prefix_) == 0) out.push_back(key.substr(prefix_.size()));
  return out;
}

bool PrefixedWeightsMap::contains(const std::string& name) const { return base_->contains(prefix_ + name); }
TensorInfo PrefixedWeightsMap::info(const std::string& name) const { return base_->info(prefix_ + name); }
at::Tensor PrefixedWeightsMap::load(const std::string& name, c10::Device device,
                                    c10::optional<c10::ScalarType> dtype) const {
  return base_->load(prefix_ + name, device, dtype);
}
bool PrefixedWeightsMap::is_file_backed(const std::string& name) const { return base_->is_file_backed(prefix_ + name); }

}  // namespace ferry::io
