#include "ferry/core/host_memory.h"

#include <ATen/ATen.h>

#include <sys/mman.h>

#include <cstdint>

namespace ferry {

at::Tensor empty_host_tensor(c10::IntArrayRef shape, c10::ScalarType dtype) {
  at::Tensor out = at::empty(shape, at::TensorOptions().dtype(dtype));
  constexpr uintptr_t kHugePage = kHugePageBytes;
  auto begin = reinterpret_cast<uintptr_t>(out.data_ptr());
  uintptr_t end = begin + static_cast<uintptr_t>(out.numel()) * out.element_size();
  uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1), last = end & ~(kHugePage - 1);
  // Only whole huge pages inside the allocation: advising a neighbour's memory would be harmless
  // but is not ours to change.
  if (last > first) (void)::madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  return out;
}

at::Tensor copy_to_host(const at::Tensor& source, c10::ScalarType dtype) {
  at::Tensor out = empty_host_tensor(source.sizes(), dtype);
  out.copy_(source);
  return out;
}

}  // namespace ferry
