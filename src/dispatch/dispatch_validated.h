#pragma once
// Internal: dispatch_model without its validation, for load_checkpoint_and_dispatch, which validates
// the map once before reading any weight (so a warning about the map is given once).

#include "ferry/dispatch/big_modeling.h"

namespace ferry::detail {

/// dispatch_model for a map validate_device_map has accepted.
std::shared_ptr<DispatchState> dispatch_validated(Module& model, const DeviceMap& device_map, const DispatchOptions& options);

}  // namespace ferry::detail
