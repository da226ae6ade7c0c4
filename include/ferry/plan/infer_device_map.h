#pragma once
/// \file
/// The device-map planner: Accelerate's infer_auto_device_map and the strategies of
/// load_checkpoint_and_dispatch ("auto", "balanced", "balanced_low_0", "sequential"), on a
/// ModelTree, in time close to linear in the number of tensors.
///
/// Worked example (Accelerate's ModelForTest: linear1 64 B, batchnorm 72 B, linear2 100 B):
///
///     ModelTree tree = ModelTree::from_json_file("model_for_test.json");
///     PlanOptions options;
///     options.max_memory = parse_max_memory("0=200,1=200");
///     options.verbose = [](const std::string& line) { std::cerr << line << '\n'; };
///     DeviceMap map = infer_auto_device_map(tree, options);
///     // {"linear1": 0, "batchnorm": 1, "linear2": 1}
///     //  - linear1 fits GPU 0 next to a reservation for the largest layer (linear2, 100 B):
///     //    64 <= 200 - 100;
///     //  - batchnorm does not (64 + 72 > 100) and cannot be split: GPU 0 is closed;
///     //  - GPU 1 is not a main device (no reservation): batchnorm and linear2 fit in 200 B.
///     map = plan_device_map(tree, Strategy::Balanced, options);   // balanced budgets first
///
/// Where Accelerate has a defect (shared/spec/ACCELERATE_BEHAVIOUR.md section 9), ferry differs:
///  - tie filters compare dotted prefixes, not substrings: layer "0" tied to layer "10" works;
///  - splitting a module keeps its direct buffers as entries (Accelerate drops them);
///  - a tied group's size counts the shared tensor once (Accelerate can leave it out);
///  - names reachable only through a module registered twice get the device of their tensor;
///  - fallback_allocation works with fractional budgets; a tensor entry is never "split".
/// Everywhere else the answers are Accelerate's, including its choices (the largest-layer
/// reservation on the first GPU and the CPU, ">=" for splitting, clean_result merging).

#include "ferry/plan/device_map.h"
#include "ferry/plan/max_memory.h"
#include "ferry/plan/model_tree.h"
#include "ferry/plan/module_sizes.h"

#include <c10/core/ScalarType.h>

#include <functional>
#include <optional>
#include <string>

namespace ferry {

/// Receives one line per planner decision ("Putting model.layers.3 (1.50 GiB) on 0 ...").
using PlanExplainer = std::function<void(const std::string&)>;

/// infer_auto_device_map's keyword arguments.
struct PlanOptions {
  /// Budgets; empty means detect (get_max_memory()). Devices not named are never used, except
  /// "disk", which is always the last resort.
  MaxMemory max_memory;
  /// Modules that must stay whole: class names (no_split_module_classes) and name patterns.
  NoSplitRules no_split;
  /// dtype and special_dtypes for sizing.
  SizeOptions sizes;
  /// Called with an explanation of each decision; empty = silent. Never writes to stdout.
  PlanExplainer verbose;
  /// Merge entries that share a device into their parent (clean_device_map).
  bool clean_result = true;
  /// Only switches off the warning about buffers of offloaded modules (as in Accelerate).
  bool offload_buffers = false;
  /// On a device where nothing fits, look for a smaller module that does (fallback_allocate).
  bool fallback_allocation = false;
  /// Mixtures of experts: the dense parts first, then the routed experts one by one where room
  /// remains (plan_by_expert, ferry/plan/expert_plan.h). False keeps Accelerate's whole layers.
  bool plan_by_expert = true;
  /// Experts each token is routed to (a MoE's top-k), for the room kept on the main device for
  /// experts streamed in from elsewhere; 0 means 2.
  int64_t experts_per_token = 0;
};

/// Accelerate's infer_auto_device_map. The map covers every parameter and buffer of `tree`,
/// keeps every device within its budget, and uses only devices of `options.max_memory` (and
/// "disk"). Logs Accelerate's warning about offloaded buffers and its INFO line about devices
/// that received nothing. Throws ferry::Error for a bad budget. A tree with routed experts is
/// planned by the expert (see PlanOptions::plan_by_expert).
DeviceMap infer_auto_device_map(const ModelTree& tree, const PlanOptions& options = {});

/// The device_map strings of load_checkpoint_and_dispatch.
enum class Strategy { Auto, Balanced, BalancedLow0, Sequential };

/// Every strategy, in the order they are documented.
const std::vector<Strategy>& all_strategies();
/// The strategy spelled `text`, or nullopt (for callers that accept other things too, such as a
/// device-map file).
std::optional<Strategy> find_strategy(const std::string& text);
/// Parses "auto", "balanced", "balanced_low_0" or "sequential"; throws ferry::Error otherwise.
Strategy parse_strategy(const std::string& text);
/// The spelling parse_strategy() accepts.
const char* to_string(Strategy strategy);

/// What load_checkpoint_and_dispatch does with a device_map string: except for "sequential",
/// budgets are balanced first (get_balanced_memory, low_zero for "balanced_low_0"), then
/// infer_auto_device_map plans. Unlike Accelerate, special_dtypes are honoured in both steps.
DeviceMap plan_device_map(const ModelTree& tree, Strategy strategy, const PlanOptions& options = {});

}  // namespace ferry
