#pragma once
/// \file
/// The spelling of a shape in ferry's messages: `shape_str({4, 3})` is "[4, 3]" (PyTorch would say
/// `torch.Size([4, 3])`). Takes a tensor's sizes() or a std::vector<int64_t> alike.

#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <string>

namespace ferry {

/// "[4, 3]" for a shape; "[]" for a scalar.
std::string shape_str(c10::ArrayRef<int64_t> shape);

}  // namespace ferry
