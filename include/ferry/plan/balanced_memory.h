#pragma once
/// \file
/// Accelerate's get_balanced_memory: lowers the budgets of all accelerators but the last so
/// that infer_auto_device_map spreads the model over them instead of filling the first ones.
///
///     MaxMemory budget = parse_max_memory("0=300,1=300");
///     get_balanced_memory(tree, budget);          // MFT (236 B): {0: 215, 1: 300}
///     get_balanced_memory(tree, budget, {}, {}, /*low_zero=*/true);  // GPU 0 kept nearly empty

#include "ferry/plan/max_memory.h"
#include "ferry/plan/model_tree.h"
#include "ferry/plan/module_sizes.h"

namespace ferry {

/// Balanced budgets. `max_memory` empty means detect (get_max_memory(); then, with a single GPU,
/// its budget is lowered to 90%). `low_zero` leaves GPU 0 only what the others cannot hold (for
/// generation outputs). A "disk" budget is kept as given (Accelerate crashes on one).
/// Differences from Accelerate: low_zero uses the real ordinals, not 0..n-1 (defect 9).
MaxMemory get_balanced_memory(const ModelTree& tree, const MaxMemory& max_memory = {},
                              const NoSplitRules& no_split = {}, const SizeOptions& sizes = {},
                              bool low_zero = false);

}  // namespace ferry
