#pragma once
/// \file
/// load_checkpoint_and_dispatch: plan (or take) a device map, load a checkpoint into an empty
/// model along it, and dispatch the model, in one call. The day-one entry point for a model that
/// does not fit:
///
///     std::shared_ptr<LlamaForCausalLM> model;
///     { auto guard = ferry::init_empty_weights(); model = std::make_shared<LlamaForCausalLM>(config); }
///     ferry::LoadAndDispatchOptions o;
///     o.strategy = "auto";                                       // or o.device_map = DeviceMap{...}
///     o.plan.max_memory = ferry::parse_max_memory("0=20GiB,cpu=8GiB");
///     o.plan.no_split.classes = {"LlamaDecoderLayer"};
///     ferry::DispatchResult r = ferry::load_checkpoint_and_dispatch(*model, "llama-dir", o);
///     std::cout << r.device_map.to_json();                       // the hf_device_map
///
/// Disk-placed weights are read from the checkpoint in place (memory-mapped), so no second copy
/// is written unless Accelerate's copy to an offload folder is asked for (`load.disk_in_place = false`).

#include "ferry/dispatch/big_modeling.h"
#include "ferry/dispatch/load_checkpoint.h"
#include "ferry/plan/infer_device_map.h"

#include <optional>
#include <string>
#include <vector>

namespace ferry {

/// load_checkpoint_and_dispatch's keyword arguments: the three steps' own options, composed, plus
/// the few that all three share, set once.
struct LoadAndDispatchOptions {
  /// An explicit device map; or leave it empty and set `strategy`.
  std::optional<DeviceMap> device_map;
  /// "auto", "balanced", "balanced_low_0" or "sequential": plan the map (ignored with device_map).
  /// Neither: the checkpoint is loaded into the model as it is placed, and nothing is dispatched.
  std::string strategy;

  // ---- shared by the steps (their own fields of the same name are set from these) ------------
  /// Floating tensors are cast to it, and planned at its size.
  std::optional<c10::ScalarType> dtype;
  /// Folder for disk-placed weights when they are copied (load.disk_in_place = false) rather than
  /// read from the checkpoint in place.
  std::string offload_folder;
  /// Disk-placed buffers are offloaded too (else they are loaded to the CPU).
  bool offload_buffers = false;

  // ---- each step's own options --------------------------------------------------------------
  /// Planning (with `strategy`): max_memory, no_split, verbose (the planner's explanations), ...
  PlanOptions plan;
  /// Loading: keep_in_fp32_modules, strict, disk_in_place (false: Accelerate's copy to
  /// offload_folder), name_prefix, offload_state_dict.
  LoadCheckpointOptions load;
  /// Dispatch: skip_keys, preload_module_classes, force_hooks, streamer (prefetching).
  DispatchOptions dispatch;
};

/// What load_checkpoint_and_dispatch did.
struct DispatchResult {
  DeviceMap device_map;                   ///< the map used (planned or given)
  LoadCheckpointResult load;              ///< keys, bytes loaded, disk weights
  std::shared_ptr<DispatchState> state;   ///< null when nothing was dispatched
};

/// Plans or takes a device map, loads `checkpoint` into `model` along it and dispatches `model`.
/// Throws ferry::Error for a bad strategy, a map naming unknown modules or missing tensors (before
/// anything loads), and everything load_checkpoint_in_model refuses.
DispatchResult load_checkpoint_and_dispatch(Module& model, const std::string& checkpoint,
                                            const LoadAndDispatchOptions& options = {});

/// The same with a checkpoint already opened (io::Checkpoint::open): planning, loading and the
/// disk weights read in place all use its mappings; nothing is opened or parsed again.
DispatchResult load_checkpoint_and_dispatch(Module& model, const io::Checkpoint& checkpoint,
                                            const LoadAndDispatchOptions& options = {});

}  // namespace ferry
