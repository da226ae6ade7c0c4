#include "ferry/core/dtype.h"

#include "ferry/core/error.h"
#include "ferry/core/torch_compat.h"

#include <algorithm>
#include <utility>
#include <vector>

namespace ferry {
namespace {

struct DtypeEntry {
  const char* name;
  c10::ScalarType dtype;
  int64_t bits;
};

// PyTorch's Python names first (the canonical spelling), aliases after.
const std::vector<DtypeEntry>& dtype_table() {
  static const std::vector<DtypeEntry> table = {
      {"float32", c10::ScalarType::Float, 32},    {"float64", c10::ScalarType::Double, 64},
      {"float16", c10::ScalarType::Half, 16},     {"bfloat16", c10::ScalarType::BFloat16, 16},
      {"int64", c10::ScalarType::Long, 64},       {"int32", c10::ScalarType::Int, 32},
      {"int16", c10::ScalarType::Short, 16},      {"int8", c10::ScalarType::Char, 8},
      {"uint8", c10::ScalarType::Byte, 8},        {"bool", c10::ScalarType::Bool, 1},
      {"complex64", c10::ScalarType::ComplexFloat, 64},
      {"complex128", c10::ScalarType::ComplexDouble, 128},
#if defined(FERRY_HAS_FLOAT8)
      {"float8_e4m3fn", c10::ScalarType::Float8_e4m3fn, 8},
      {"float8_e5m2", c10::ScalarType::Float8_e5m2, 8},
#endif
      // aliases
      {"float", c10::ScalarType::Float, 32},      {"double", c10::ScalarType::Double, 64},
      {"half", c10::ScalarType::Half, 16},        {"long", c10::ScalarType::Long, 64},
      {"int", c10::ScalarType::Int, 32},          {"short", c10::ScalarType::Short, 16},
  };
  return table;
}

const DtypeEntry& entry_for(c10::ScalarType dtype) {
  for (const auto& e : dtype_table())
    if (e.dtype == dtype) return e;
  FERRY_FAIL("dtype ", c10::toString(dtype), " is not supported by ferry");
}

}  // namespace

int64_t dtype_bits(c10::ScalarType dtype) { return entry_for(dtype).bits; }

double dtype_byte_size(c10::ScalarType dtype) { return static_cast<double>(dtype_bits(dtype)) / 8.0; }

int64_t dtype_storage_bytes(c10::ScalarType dtype) { return static_cast<int64_t>(c10::elementSize(dtype)); }

std::string dtype_name(c10::ScalarType dtype) { return entry_for(dtype).name; }

c10::ScalarType parse_dtype(const std::string& name) {
  std::string key = name;
  const std::string prefix = "torch.";
  if (key.rfind(prefix, 0) == 0) key = key.substr(prefix.size());
  for (const auto& e : dtype_table())
    if (key == e.name) return e.dtype;
  if (key == "float8_e4m3fn" || key == "float8_e5m2") require_torch(TorchFeature::Float8, "dtype '" + name + "'");
  std::string known;
  for (const auto& e : dtype_table()) known += (known.empty() ? "" : ", ") + std::string(e.name);
  FERRY_FAIL("unknown dtype '", name, "'; expected one of: ", known);
}

bool is_floating_dtype(c10::ScalarType dtype) { return c10::isFloatingType(dtype); }

}  // namespace ferry
