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
///
///     // per block, in every form Accelerate's attach_align_device_hook_on_blocks takes:
///     attach_align_device_hook_on_blocks(model, c10::kCPU, false, nullptr);          // one hook on the root
///     attach_align_device_hook_on_blocks(model, {{"", cpu}, {"linear1", cpu}},       // a map of devices and
///                                        {{"", false}, {"linear1", true}}, weights); // a map of offload flags
///     attach_align_device_hook_on_blocks(model, {{"", cpu}, {"linear2", cpu}}, true, weights);  // map + one flag
///     attach_align_device_hook_on_blocks(model, cpu, {{"linear1", true}, {"linear2", false}}, weights);
///     attach_align_device_hook_on_blocks(model, std::nullopt, {{"linear1", true}}, weights);  // no device

#include "ferry/hooks/align_devices_hook.h"

#include <c10/core/Device.h>

#include <map>
#include <memory>
#include <initializer_list>
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
/// tensors and has no hook yet (not below a preload class). Without a device, the hooks move nothing
/// (Accelerate's execution_device=None).
void attach_execution_device_hook(Module& module, std::optional<c10::Device> execution_device,
                                  const AttachOptions& options = {});

/// Adds an AlignDevicesHook (appended) to `module` and each descendant that holds tensors directly.
/// `weights_map` is keyed by names relative to the module called `module_name` in the model.
void attach_align_device_hook(Module& module, std::optional<c10::Device> execution_device, bool offload,
                              io::WeightsMapPtr weights_map, const AttachOptions& options = {},
                              const std::string& module_name = "");

/// Accelerate's `execution_device` argument of attach_align_device_hook_on_blocks, in its three forms:
/// one device for every block, a map from block name ("" for the root) to device, or none (hooks
/// that move nothing to a device, Accelerate's None). Converts implicitly from each, so a call reads
/// as in Python: `(model, c10::kCPU, ...)`, `(model, {{"", cpu}, {"layers.0", cuda0}}, ...)`,
/// `(model, std::nullopt, ...)`.
class BlockExecutionDevice {
 public:
  /// None.
  BlockExecutionDevice() = default;
  BlockExecutionDevice(std::nullopt_t) {}  // NOLINT: implicit, as Python's None
  BlockExecutionDevice(c10::Device device) : one_(device) {}  // NOLINT
  BlockExecutionDevice(c10::DeviceType type) : one_(c10::Device(type)) {}  // NOLINT
  BlockExecutionDevice(std::map<std::string, c10::Device> per_block)  // NOLINT
      : per_block_(std::move(per_block)), is_map_(true) {}
  BlockExecutionDevice(std::initializer_list<std::pair<const std::string, c10::Device>> per_block)
      : per_block_(per_block), is_map_(true) {}

  /// A map (Python's Mapping) rather than one device or none.
  bool is_map() const { return is_map_; }
  /// The one device, or none; meaningful when !is_map().
  const std::optional<c10::Device>& one() const { return one_; }
  /// The map; empty when !is_map().
  const std::map<std::string, c10::Device>& per_block() const { return per_block_; }

 private:
  std::optional<c10::Device> one_;
  std::map<std::string, c10::Device> per_block_;
  bool is_map_ = false;
};

/// Accelerate's `offload` argument of attach_align_device_hook_on_blocks: one flag for every block,
/// or a map from block name ("" for the root) to flag. Converts implicitly from both.
class BlockOffload {
 public:
  BlockOffload(bool all = false) : all_(all) {}  // NOLINT: implicit, as in Python
  BlockOffload(std::map<std::string, bool> per_block) : per_block_(std::move(per_block)), is_map_(true) {}  // NOLINT
  BlockOffload(std::initializer_list<std::pair<const std::string, bool>> per_block)
      : per_block_(per_block), is_map_(true) {}

  bool is_map() const { return is_map_; }
  /// The one flag; meaningful when !is_map().
  bool all() const { return all_; }
  /// The map; empty when !is_map().
  const std::map<std::string, bool>& per_block() const { return per_block_; }

 private:
  bool all_ = false;
  std::map<std::string, bool> per_block_;
  bool is_map_ = false;
};

/// Accelerate's attach_align_device_hook_on_blocks (what dispatch_model uses), with its semantics for
/// every combination of forms:
///  - one device (or none) and one flag: not offloaded, one hook on `module` that moves the whole
///    subtree to the device and returns outputs on the inputs' device (io_same_device); offloaded,
///    attach_align_device_hook(module, device, true, weights_map) (per-module offloading hooks);
///  - otherwise the single one is broadcast over the other's keys (a device over the offload map's
///    blocks, a flag over the device map's blocks), then, for each module from `module` down (named
///    from `module_name`): a block in both maps and not offloaded gets one hook placing its subtree
///    on its device (outputs back on the input device only for the root), plus input-moving hooks
///    below; an offloaded block gets per-module offloading hooks reading `weights_map` under its
///    name, a plain hook on itself if it holds no tensors, and input-moving hooks below; the root, in
///    neither map, gets a hook with the root's device (if the device map has one) returning outputs
///    on the input device. Blocks in only one of the two maps get nothing, as in Accelerate.
/// `weights_map` is keyed by names relative to the module called `module_name` in the model.
void attach_align_device_hook_on_blocks(Module& module, const BlockExecutionDevice& execution_device,
                                        const BlockOffload& offload, io::WeightsMapPtr weights_map,
                                        const AttachOptions& options = {}, const std::string& module_name = "");

}  // namespace ferry
