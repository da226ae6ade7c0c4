#include "ferry/dispatch/load_checkpoint_and_dispatch.h"

#include "dispatch_validated.h"

#include "ferry/core/error.h"
#include "ferry/plan/max_memory.h"
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
  // Validated once, here, before any weight is read: the map (or the budgets it will be planned
  // from) against the model and the devices this machine has.
  if (device_map) validate_device_map(model, *device_map, options.dispatch.strict);
  if (!device_map && !options.strategy.empty()) {
    check_budgets_available(options.plan.max_memory);
    PlanOptions plan = options.plan;
    plan.sizes.dtype = options.dtype;
    plan.offload_buffers = options.offload_buffers;
    device_map = plan_device_map(model_tree_from_module(model), parse_strategy(options.strategy), plan);
  }

  LoadCheckpointOptions load = options.load;
  load.device_map = device_map;
  load.dtype = options.dtype;
  load.offload_folder = options.offload_folder;
  load.offload_buffers = options.offload_buffers;
  result.load = load_checkpoint_in_model(model, checkpoint, load);
  if (!device_map) return result;

  result.device_map = *device_map;
  DispatchOptions dispatch = options.dispatch;
  dispatch.disk_weights = result.load.disk_weights;
  dispatch.offload_dir = options.offload_folder;
  dispatch.offload_buffers = options.offload_buffers;
  result.state = detail::dispatch_validated(model, *device_map, dispatch);  // validated above
  return result;
}

}  // namespace ferry
