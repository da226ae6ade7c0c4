#include "ferry/hooks/cpu_offload_hook.h"

#include "ferry/core/device_cache.h"
#include "ferry/hooks/send_to_device.h"

#include <ATen/Context.h>

namespace ferry {

c10::Device default_execution_device() {
  if (at::hasCUDA()) return c10::Device(c10::kCUDA, 0);
  return c10::Device(c10::kCPU);
}

CpuOffloadHook::CpuOffloadHook(std::optional<c10::Device> execution_device,
                               std::shared_ptr<UserCpuOffloadHook> prev_module_hook)
    : execution_device_(execution_device.value_or(default_execution_device())),
      prev_module_hook_(std::move(prev_module_hook)) {}

void CpuOffloadHook::init_hook(Module& module) { module.to(c10::Device(c10::kCPU)); }

void CpuOffloadHook::pre_forward(Module& module, Args& args) {
  if (prev_module_hook_) {
    auto params = prev_module_hook_->model().named_parameters();
    if (!params.empty() && !params.front().second.device().is_cpu()) {
      prev_module_hook_->offload();
      clear_device_cache();  // as Accelerate: the memory it held is free for this model
    }
  }
  auto params = module.named_parameters();
  if (params.empty() || params.front().second.device() != execution_device_) module.to(execution_device_);
  send_to_device(args, execution_device_);
}

void UserCpuOffloadHook::remove() { remove_hook_from_module(model_); }

ModelWithOffloadHook cpu_offload_with_hook(Module& model, std::optional<c10::Device> execution_device,
                                           std::shared_ptr<UserCpuOffloadHook> prev_module_hook) {
  auto hook = std::make_shared<CpuOffloadHook>(execution_device, std::move(prev_module_hook));
  add_hook_to_module(model, hook, /*append=*/true);
  return {model, std::make_shared<UserCpuOffloadHook>(model, hook)};
}

}  // namespace ferry
