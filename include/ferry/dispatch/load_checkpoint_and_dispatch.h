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
///     o.max_memory = ferry::parse_max_memory("0=20GiB,cpu=8GiB");
///     o.no_split.classes = {"LlamaDecoderLayer"};
///     ferry::DispatchResult r = ferry::load_checkpoint_and_dispatch(*model, "llama-dir", o);
///     std::cout << r.device_map.to_json();                       // the hf_device_map
///
/// Disk-placed weights are read from the checkpoint in place (memory-mapped), so no second copy
/// is written unless an offload folder is asked for with `copy_disk_weights_to_offload_folder`.

#include "ferry/dispatch/big_modeling.h"
#include "ferry/dispatch/load_checkpoint.h"
#include "ferry/plan/infer_device_map.h"

#include <optional>
#include <string>
#include <vector>

namespace ferry {

/// load_checkpoint_and_dispatch's keyword arguments.
struct LoadAndDispatchOptions {
  /// An explicit device map; or leave it empty and set `strategy`.
  std::optional<DeviceMap> device_map;
  /// "auto", "balanced", "balanced_low_0" or "sequential": plan the map (ignored with device_map).
  /// Neither: the checkpoint is loaded into the model as it is placed, and nothing is dispatched.
  std::string strategy;
  /// Budgets for planning; empty: what the machine has free.
  MaxMemory max_memory;
  /// Modules the planner must keep whole (class names or name patterns).
  NoSplitRules no_split;
  /// Floating tensors are cast to it (and planned at its size).
  std::optional<c10::ScalarType> dtype;
  /// Folder for disk-placed weights when they are copied rather than read in place.
  std::string offload_folder;
  /// Write disk-placed weights to `offload_folder` (Accelerate's behaviour) instead of reading
  /// them from the checkpoint in place.
  bool copy_disk_weights_to_offload_folder = false;
  bool offload_buffers = false;
  bool offload_state_dict = false;
  std::vector<std::string> keep_in_fp32_modules;
  std::vector<std::string> skip_keys;
  std::vector<std::string> preload_module_classes;
  bool force_hooks = false;
  bool strict = false;
  /// Put before every checkpoint name (LoadCheckpointOptions::name_prefix).
  std::string name_prefix;
  /// Prefetching of offloaded weights (on by default).
  StreamerOptions streamer;
  /// Receives the planner's explanation of each decision.
  PlanExplainer explain;
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
