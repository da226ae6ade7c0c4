#include "ferry/core/torch_compat.h"

#include "ferry/core/error.h"

namespace ferry {
namespace {

struct FeatureInfo {
  const char* description;
  const char* since;
  bool present;
};

FeatureInfo info(TorchFeature feature) {
#if defined(FERRY_HAS_FLOAT8)
  constexpr bool modern = true;
#else
  constexpr bool modern = false;
#endif
  switch (feature) {
    case TorchFeature::Float8: return {"the float8_e4m3fn and float8_e5m2 dtypes", "2.1", modern};
    case TorchFeature::CpuFloat16Compute: return {"float16 matmuls on the CPU", "2.1", modern};
    case TorchFeature::ScaledDotProductAttention: return {"at::scaled_dot_product_attention", "2.1", modern};
  }
  FERRY_FAIL("unknown TorchFeature ", static_cast<int>(feature));
}

}  // namespace

std::string torch_version() { return TORCH_VERSION; }

bool torch_has(TorchFeature feature) { return info(feature).present; }

void require_torch(TorchFeature feature, const std::string& what) {
  FeatureInfo f = info(feature);
  FERRY_CHECK(f.present, what, " needs LibTorch ", f.since, " or later (", f.description,
              "); this ferry is built against LibTorch ", torch_version(),
              ". Build it against PyTorch 2.x (FERRY_TORCH=pypi bash scripts/build.sh, see the README)");
}

}  // namespace ferry
