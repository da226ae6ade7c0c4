#pragma once
/// \file
/// The one place where ferry adapts to the LibTorch version it is built against: Debian's 1.13
/// (CPU) or the LibTorch of a PyTorch 2.x wheel (CUDA). Everything version-specific lives here:
/// code that needs a newer LibTorch asks `torch_has`, or calls `require_torch` to be refused with a
/// message that says what needs which version and how to get it.
///
///     if (dtype == at::kHalf && device.is_cpu())
///       ferry::require_torch(ferry::TorchFeature::CpuFloat16Compute, "running a Llama in float16");
///     // on 1.13: "running a Llama in float16 needs LibTorch 2.1 or later (float16 matmuls on the
///     // CPU); this ferry is built against LibTorch 1.13.1. Build it against PyTorch 2.x
///     // (FERRY_TORCH=pypi bash scripts/build.sh) ..."

#include <torch/version.h>

#include <string>

#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
/// float8 dtypes (Float8_e4m3fn, Float8_e5m2) exist from LibTorch 2.1 on.
#define FERRY_HAS_FLOAT8 1
/// at::scaled_dot_product_attention with a `scale` argument (2.1 on).
#define FERRY_HAS_SDPA 1
/// float16 matmuls on the CPU (2.1 on; 1.13 has no CPU kernels for them).
#define FERRY_HAS_CPU_FLOAT16 1
#endif

namespace ferry {

/// What ferry uses from LibTorch only when the version it is built against has it.
enum class TorchFeature {
  Float8,                     ///< float8_e4m3fn and float8_e5m2 storage
  CpuFloat16Compute,          ///< float16 matmuls on the CPU
  ScaledDotProductAttention,  ///< at::scaled_dot_product_attention (fused attention)
};

/// The LibTorch version ferry is built against, "1.13.1" or "2.15.0".
std::string torch_version();

/// Whether the LibTorch ferry is built against has `feature`.
bool torch_has(TorchFeature feature);

/// Throws ferry::Error unless torch_has(feature): `what` (e.g. "float8 storage") needs LibTorch N,
/// the version built against, and how to build against PyTorch 2.x.
void require_torch(TorchFeature feature, const std::string& what);

}  // namespace ferry
