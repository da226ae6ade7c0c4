#include "ferry/nn/init_on_device.h"

#include <ATen/ATen.h>

namespace ferry {
namespace {
struct InitState {
  std::optional<c10::Device> device;
  bool include_buffers = false;
};
thread_local InitState init_state;
}  // namespace

InitOnDevice::InitOnDevice(c10::Device device, bool include_buffers)
    : previous_device_(init_state.device), previous_include_buffers_(init_state.include_buffers) {
  init_state.device = device;
  init_state.include_buffers = include_buffers;
}

InitOnDevice::~InitOnDevice() {
  init_state.device = previous_device_;
  init_state.include_buffers = previous_include_buffers_;
}

InitOnDevice init_empty_weights(bool include_buffers) { return InitOnDevice(c10::Device(c10::kMeta), include_buffers); }

InitOnDevice init_on_device(c10::Device device, bool include_buffers) { return InitOnDevice(device, include_buffers); }

std::optional<c10::Device> current_parameter_init_device() { return init_state.device; }

std::optional<c10::Device> current_buffer_init_device() {
  return init_state.include_buffers ? init_state.device : std::nullopt;
}

at::Tensor new_parameter_tensor(at::IntArrayRef shape, c10::ScalarType dtype) {
  auto device = current_parameter_init_device().value_or(c10::Device(c10::kCPU));
  return at::empty(shape, at::TensorOptions().dtype(dtype).device(device));
}

at::Tensor new_buffer_tensor(at::IntArrayRef shape, c10::ScalarType dtype, double fill) {
  auto device = current_buffer_init_device().value_or(c10::Device(c10::kCPU));
  auto options = at::TensorOptions().dtype(dtype).device(device);
  if (device.type() == c10::kMeta) return at::empty(shape, options);
  return at::full(shape, fill, options);
}

}  // namespace ferry
