#pragma once
/// \file
/// Moving nested values between devices, as Accelerate's `send_to_device`: tensors are moved,
/// tuples, lists and dicts are rebuilt with their elements moved, everything else is kept.
///
///     c10::IValue moved = ferry::send_to_device(output, c10::Device("cpu"));
///     ferry::send_to_device(args, device, {"past_key_values"});   // kwargs named there stay

#include "ferry/nn/args.h"

#include <ATen/core/ivalue.h>
#include <c10/core/Device.h>

#include <optional>
#include <string>
#include <vector>

namespace ferry {

/// Returns `value` with every tensor it contains on `device`. For dicts with string keys, values
/// whose key is in `skip_keys` are kept as they are.
c10::IValue send_to_device(const c10::IValue& value, c10::Device device,
                           const std::vector<std::string>& skip_keys = {}, bool non_blocking = false);

/// Moves positional arguments, and keyword arguments whose name is not in `skip_keys`.
void send_to_device(Args& args, c10::Device device, const std::vector<std::string>& skip_keys = {},
                    bool non_blocking = false);

/// The device of the first tensor found depth-first in `args` (positional, then keyword), if any.
std::optional<c10::Device> find_device(const Args& args);
std::optional<c10::Device> find_device(const c10::IValue& value);

}  // namespace ferry
