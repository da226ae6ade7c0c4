#include "ferry/dispatch/load_checkpoint_and_dispatch.h"

#include "ferry/core/error.h"
#include "ferry/plan/module_tree.h"

namespace ferry {

DispatchResult load_checkpoint_and_dispatch(Module& model, const std::string& checkpoint,
                                            const LoadAndDispatchOptions& options) {
  if (!options.device_map && !options.strategy.empty()) parse_strategy(options.strategy);  // before any file
  return load_checkpoint_and_dispatch(model, io::Checkpoint::open(checkpoint), options);
}

DispatchResult load_checkpoint_and_dispatch(Module& model, const io::Checkpoint& checkpoint,
                                            const LoadAndDispatchOptions& options) {
  DispatchResult result;
  std::optional<DeviceMap> device_map = options.device_map;
  if (!device_map && !options.strategy.empty()) {
    Strategy strategy = parse_strategy(options.strategy);
    PlanOptions plan;
    plan.max_memory = options.max_memory;
    plan.no_split = options.no_split;
    plan.sizes.dtype = options.dtype;
    plan.offload_buffers = options.offload_buffers;
    plan.verbose = options.explain;
    device_map = plan_device_map(model_tree_from_module(model), strategy, plan);
  }

  LoadCheckpointOptions load;
  load.device_map = device_map;
  load.offload_folder = options.offload_folder;
  load.dtype = options.dtype;
  load.offload_state_dict = options.offload_state_dict;
  load.offload_buffers = options.offload_buffers;
  load.keep_in_fp32_modules = options.keep_in_fp32_modules;
  load.strict = options.strict;
  load.name_prefix = options.name_prefix;
  load.disk_in_place = !options.copy_disk_weights_to_offload_folder;
  result.load = load_checkpoint_in_model(model, checkpoint, load);
  if (!device_map) return result;

  result.device_map = *device_map;
  DispatchOptions dispatch;
  dispatch.disk_weights = result.load.disk_weights;
  dispatch.offload_dir = options.offload_folder;
  dispatch.offload_buffers = options.offload_buffers;
  dispatch.skip_keys = options.skip_keys;
  dispatch.preload_module_classes = options.preload_module_classes;
  dispatch.force_hooks = options.force_hooks;
  dispatch.streamer = options.streamer;
  result.state = dispatch_model(model, *device_map, dispatch);
  return result;
}

}  // namespace ferry
