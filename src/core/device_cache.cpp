#include "ferry/core/device_cache.h"

#include <ATen/Context.h>
#if defined(FERRY_WITH_CUDA)
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace ferry {

void clear_device_cache() {
#if defined(FERRY_WITH_CUDA)
  if (at::hasCUDA()) c10::cuda::CUDACachingAllocator::emptyCache();
#endif
}

}  // namespace ferry
