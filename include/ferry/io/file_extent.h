#pragma once
/// \file
/// FileExtent: where a file-backed weight's stored bytes are (file, offset, length, and what they
/// hold), so that they can be read without mapping the file: WeightsMap::file_extent() answers it,
/// io::DirectReader reads it.

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>
#include <vector>

namespace ferry::io {

/// The stored bytes of one tensor in a file.
struct FileExtent {
  std::string path;
  /// Absolute byte offset in the file, and byte count (numel x element size of `dtype`).
  uint64_t offset = 0;
  uint64_t length = 0;
  /// What the bytes hold, as stored (a weights map may cast on load; the reader does not).
  c10::ScalarType dtype = c10::ScalarType::Float;
  std::vector<int64_t> shape;
};

}  // namespace ferry::io
