#pragma once
/// \file
/// Checking and tidying device maps (Accelerate's check_device_map and clean_device_map).
///
///     check_device_map(tree, map);   // throws if a parameter or persistent buffer has no device
///     clean_device_map(map);         // {"a.x": 0, "a.y": 0, "b": 1} -> {"b": 1, "a": 0}

#include "ferry/plan/device_map.h"
#include "ferry/plan/model_tree.h"

#include <string>
#include <vector>

namespace ferry {

/// Accelerate's check_device_map: warns (ferry::log_warning) about keys that name no module
/// ("The following device_map keys do not match any submodules in the model: [...]") and throws
/// ferry::Error "[check_device_map] The device_map provided does not give any device for the
/// following parameters: a.weight, b.bias" when a state_dict() name (parameters and persistent
/// buffers, every name of a tied tensor) is covered by no key.
void check_device_map(const ModelTree& tree, const DeviceMap& device_map);

/// Names that `device_map` leaves without a device: every parameter and buffer name (persistent
/// or not, every name of a shared tensor) not covered by a key, in walk order.
std::vector<std::string> uncovered_tensor_names(const ModelTree& tree, const DeviceMap& device_map);

/// Accelerate's clean_device_map: wherever more than one key lies under a module (every key for
/// "") and all of them share a placement, they are replaced by that module's key, appended at the
/// end. Works top-down from `module_name`. Linear in the total length of the keys.
DeviceMap clean_device_map(const DeviceMap& device_map, const std::string& module_name = "");

}  // namespace ferry
