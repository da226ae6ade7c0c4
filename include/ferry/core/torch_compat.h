#pragma once
/// \file
/// The one place where ferry adapts to the LibTorch version it is built against: Debian's 1.13
/// (CPU) or the LibTorch of a PyTorch 2.x wheel (CUDA). Everything version-specific lives here.

#include <torch/version.h>

#if TORCH_VERSION_MAJOR >= 2 && (TORCH_VERSION_MAJOR > 2 || TORCH_VERSION_MINOR >= 1)
/// float8 dtypes (Float8_e4m3fn, Float8_e5m2) exist from LibTorch 2.1 on.
#define FERRY_HAS_FLOAT8 1
#endif
