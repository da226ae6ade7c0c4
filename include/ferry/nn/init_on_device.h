#pragma once
/// \file
/// Construction without memory: `init_empty_weights` and `init_on_device`, RAII guards that make
/// every parameter created or registered inside their scope live on a given device (the meta
/// device for empty weights). A 70B-parameter skeleton built this way takes milliseconds and no
/// memory, and no initialisation runs:
///
///     {
///       auto guard = ferry::init_empty_weights();
///       auto model = std::make_shared<MyLlama>(config);   // every parameter is on meta
///     }
///     ferry::load_checkpoint_in_model(*model, "model_dir", {});
///
/// With `include_buffers` buffers follow too; otherwise they are created on the CPU (Accelerate's
/// default), so that e.g. BatchNorm's running statistics keep real values.

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <optional>

namespace ferry {

/// While alive, parameters (and buffers with include_buffers) are created on `device`.
/// Guards nest; the innermost wins. Thread-local: other threads are unaffected.
class InitOnDevice {
 public:
  InitOnDevice(c10::Device device, bool include_buffers = false);
  ~InitOnDevice();
  InitOnDevice(const InitOnDevice&) = delete;
  InitOnDevice& operator=(const InitOnDevice&) = delete;

 private:
  std::optional<c10::Device> previous_device_;
  bool previous_include_buffers_;
};

/// `init_on_device(meta, include_buffers)`: parameters are created without memory.
[[nodiscard]] InitOnDevice init_empty_weights(bool include_buffers = false);
/// Parameters (and buffers with include_buffers) are created on `device`.
[[nodiscard]] InitOnDevice init_on_device(c10::Device device, bool include_buffers = false);

/// The device parameters are created on right now (the innermost guard's), if any.
std::optional<c10::Device> current_parameter_init_device();
/// The device buffers are created on right now, if any.
std::optional<c10::Device> current_buffer_init_device();

/// An uninitialised tensor for a new parameter, allocated directly on the current init device
/// (or the CPU): layers call this so that nothing is allocated under init_empty_weights.
at::Tensor new_parameter_tensor(at::IntArrayRef shape, c10::ScalarType dtype = c10::kFloat);
/// The same for a buffer; `fill` is used when the buffer lands on a real device.
at::Tensor new_buffer_tensor(at::IntArrayRef shape, c10::ScalarType dtype, double fill);

}  // namespace ferry
