#include "ferry/hooks/attach.h"

#include <algorithm>

namespace ferry {
namespace {

bool in(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

bool has_direct_tensors(const Module& module) {
  for (const auto& [name, slot] : module.parameter_slots())
    if (slot->tensor.defined()) return true;
  for (const auto& [name, slot] : module.buffer_slots())
    if (slot->tensor.defined()) return true;
  return false;
}

AlignDevicesOptions hook_options(std::optional<c10::Device> execution_device, const AttachOptions& options) {
  AlignDevicesOptions o;
  o.execution_device = execution_device;
  o.offload_buffers = options.offload_buffers;
  o.skip_keys = options.skip_keys;
  o.tied_cache = options.tied_cache;
  return o;
}

io::WeightsMapPtr prefixed(const io::WeightsMapPtr& weights_map, const std::string& module_name) {
  if (!weights_map || module_name.empty()) return weights_map;
  return io::make_prefixed_weights_map(weights_map, module_name + ".");
}

}  // namespace

void attach_execution_device_hook(Module& module, std::optional<c10::Device> execution_device,
                                  const AttachOptions& options) {
  if (!module.hook() && !module.state_dict().empty())
    add_hook_to_module(module, std::make_shared<AlignDevicesHook>(hook_options(execution_device, options)));
  if (in(options.preload_module_classes, module.class_name())) return;
  for (auto& [name, child] : module.named_children()) attach_execution_device_hook(*child, execution_device, options);
}

void attach_align_device_hook(Module& module, std::optional<c10::Device> execution_device, bool offload,
                              io::WeightsMapPtr weights_map, const AttachOptions& options,
                              const std::string& module_name) {
  const bool full = offload && in(options.preload_module_classes, module.class_name());
  if (has_direct_tensors(module) || full) {
    AlignDevicesOptions o = hook_options(execution_device, options);
    o.offload = offload;
    o.weights_map = prefixed(weights_map, module_name);
    o.place_submodules = full;
    if (offload) o.streamer = options.streamer;
    add_hook_to_module(module, std::make_shared<AlignDevicesHook>(std::move(o)), /*append=*/true);
  }
  if (full) return;
  for (auto& [name, child] : module.named_children())
    attach_align_device_hook(*child, execution_device, offload, weights_map, options, join_name(module_name, name));
}

namespace {

using BlockDevices = std::map<std::string, std::optional<c10::Device>>;

// The map form of attach_align_device_hook_on_blocks, after broadcasting (Accelerate's recursion).
void attach_on_blocks(Module& module, const BlockDevices& execution_device, const std::map<std::string, bool>& offload,
                      const io::WeightsMapPtr& weights_map, const AttachOptions& options,
                      const std::string& module_name) {
  auto device = execution_device.find(module_name);
  auto off = offload.find(module_name);
  if (device != execution_device.end() && off != offload.end() && !off->second) {
    AlignDevicesOptions o = hook_options(device->second, options);
    o.io_same_device = module_name.empty();
    o.place_submodules = true;
    add_hook_to_module(module, std::make_shared<AlignDevicesHook>(std::move(o)));
    attach_execution_device_hook(module, device->second, options);
  } else if (device != execution_device.end() && off != offload.end()) {
    attach_align_device_hook(module, device->second, true, weights_map, options, module_name);
    if (!module.hook()) {
      AlignDevicesOptions o = hook_options(device->second, options);
      o.io_same_device = module_name.empty();
      add_hook_to_module(module, std::make_shared<AlignDevicesHook>(std::move(o)));
    }
    attach_execution_device_hook(module, device->second, options);
  } else if (module_name.empty()) {
    std::optional<c10::Device> root_device;
    if (device != execution_device.end()) root_device = device->second;
    AlignDevicesOptions o = hook_options(root_device, options);
    o.io_same_device = true;
    add_hook_to_module(module, std::make_shared<AlignDevicesHook>(std::move(o)));
  }
  for (auto& [name, child] : module.named_children())
    attach_on_blocks(*child, execution_device, offload, weights_map, options, join_name(module_name, name));
}

}  // namespace

void attach_align_device_hook_on_blocks(Module& module, const BlockExecutionDevice& execution_device,
                                        const BlockOffload& offload, io::WeightsMapPtr weights_map,
                                        const AttachOptions& options, const std::string& module_name) {
  // One device (or none) and one flag: one hook, or per-module offloading hooks.
  if (!execution_device.is_map() && !offload.is_map()) {
    if (!offload.all()) {
      AlignDevicesOptions o = hook_options(execution_device.one(), options);
      o.io_same_device = true;
      o.place_submodules = true;
      add_hook_to_module(module, std::make_shared<AlignDevicesHook>(std::move(o)));
    } else {
      attach_align_device_hook(module, execution_device.one(), true, std::move(weights_map), options, module_name);
    }
    return;
  }
  // Otherwise the single one is broadcast over the other's keys, as Accelerate does.
  BlockDevices devices;
  if (execution_device.is_map()) {
    for (const auto& [name, device] : execution_device.per_block()) devices.emplace(name, device);
  } else {
    for (const auto& [name, flag] : offload.per_block()) devices.emplace(name, execution_device.one());
  }
  std::map<std::string, bool> flags;
  if (offload.is_map()) {
    flags = offload.per_block();
  } else {
    for (const auto& [name, device] : devices) flags.emplace(name, offload.all());
  }
  attach_on_blocks(module, devices, flags, weights_map, options, module_name);
}

}  // namespace ferry
