#pragma once
/// \file
/// Attaching AlignDevicesHooks over a module tree, as Accelerate does it: per module with
/// tensors (attach_align_device_hook), per block of a device map
/// (attach_align_device_hook_on_blocks, what dispatch_model uses), or only to move inputs
/// (attach_execution_device_hook).
///
///     ferry::AttachOptions o;
///     o.offload_buffers = false;
///     // every module with tensors gets an offloading hook reading model-level names through a prefix
///     ferry::attach_align_device_hook(model, c10::Device("cpu"), /*offload=*/true, weights, o);

#include "ferry/hooks/align_devices_hook.h"

#include <c10/core/Device.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ferry {

/// What every hook attached by one call shares.
struct AttachOptions {
  bool offload_buffers = false;
  std::vector<std::string> skip_keys;
  /// Classes whose whole subtree is loaded by one hook on the class's module (for modules that
  /// use a child's weights without calling the child).
  std::vector<std::string> preload_module_classes;
  std::shared_ptr<TiedWeightsCache> tied_cache;
  std::shared_ptr<WeightStreamer> streamer;
};

/// Adds a hook moving inputs to `execution_device` on `module` and every descendant that holds
/// tensors and has no hook yet (not below a preload class).
void attach_execution_device_hook(Module& module, c10::Device execution_device, const AttachOptions& options = {});

/// Adds an AlignDevicesHook (appended) to `module` and each descendant that holds tensors directly.
/// `weights_map` is keyed by names relative to the module called `module_name` in the model.
void attach_align_device_hook(Module& module, std::optional<c10::Device> execution_device, bool offload,
                              io::WeightsMapPtr weights_map, const AttachOptions& options = {},
                              const std::string& module_name = "");

/// Per-block hooks from a device map: blocks in `execution_device`/`offload` (keyed by module name,
/// "" for the root) get a hook for the whole block when not offloaded, or per-module offloading hooks
/// when offloaded.
void attach_align_device_hook_on_blocks(Module& module, const std::map<std::string, c10::Device>& execution_device,
                                        const std::map<std::string, bool>& offload, io::WeightsMapPtr weights_map,
                                        const AttachOptions& options = {}, const std::string& module_name = "");

/// The same with one execution device and one offload flag for the whole module.
void attach_align_device_hook_on_blocks(Module& module, c10::Device execution_device, bool offload,
                                        io::WeightsMapPtr weights_map, const AttachOptions& options = {},
                                        const std::string& module_name = "");

}  // namespace ferry
