#pragma once
/// \file
/// Host memory for weights. Decoding on the CPU streams every weight through the cores once per
/// token, so the translation of its addresses matters: with 4 KiB pages a 2 GB model needs half a
/// million TLB entries per pass; with 2 MiB pages, a thousand. ferry asks the kernel for huge pages
/// (MADV_HUGEPAGE, honoured when transparent huge pages are `madvise` or `always`) for the weights
/// it allocates on the CPU, as it does for the files it maps (io/mapped_file.h).
///
///     at::Tensor w = ferry::empty_host_tensor({4096, 4096}, at::kFloat);   // not yet touched
///     w.copy_(stored);                                                     // faults in huge pages

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>

#include <cstddef>

namespace ferry {

/// The size of a transparent huge page on x86-64 (one PMD entry maps it).
constexpr size_t kHugePageBytes = size_t{2} << 20;

/// An uninitialised CPU tensor; when it spans at least one 2 MiB huge page, its memory is advised
/// to be backed by huge pages (best effort: never fails for that reason).
at::Tensor empty_host_tensor(c10::IntArrayRef shape, c10::ScalarType dtype);

/// `source` copied (and cast to `dtype`) into an empty_host_tensor.
at::Tensor copy_to_host(const at::Tensor& source, c10::ScalarType dtype);

}  // namespace ferry
