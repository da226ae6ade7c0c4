#pragma once
/// \file
/// Dtype names and sizes with Accelerate's semantics: a bool counts 1/8 byte, so sizes are
/// fractional; sizes that must stay exact are kept in bits.
///
///     dtype_byte_size(at::kBool)      // 0.125
///     dtype_bits(at::kBFloat16)       // 16
///     parse_dtype("torch.float16")    // at::kHalf
///     dtype_name(at::kBFloat16)       // "bfloat16"

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>

namespace ferry {

/// Bits one element takes in Accelerate's accounting (bool: 1, float8: 8, float32: 32).
int64_t dtype_bits(c10::ScalarType dtype);

/// Bytes one element takes in Accelerate's accounting (bool: 0.125).
double dtype_byte_size(c10::ScalarType dtype);

/// Bytes one element really occupies in memory (bool: 1).
int64_t dtype_storage_bytes(c10::ScalarType dtype);

/// PyTorch's Python name: "float32", "bfloat16", "int64", "bool", "float8_e4m3fn".
std::string dtype_name(c10::ScalarType dtype);

/// Parses a PyTorch dtype name, with or without "torch." ("float16", "torch.bfloat16", "half",
/// "float", "long"). Throws ferry::Error naming the accepted spellings otherwise.
c10::ScalarType parse_dtype(const std::string& name);

/// True for floating-point dtypes (float8 included): the ones `Module::to(dtype)` converts.
bool is_floating_dtype(c10::ScalarType dtype);

}  // namespace ferry
