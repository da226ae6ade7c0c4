#pragma once
#include "test_util.h"
// Helpers for the io tests: a temporary folder removed at scope exit, raw file writing and reading.

#include <ATen/core/Tensor.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace ferry::test {

using ferry_test::TempDir;  // test_util.h

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

/// A safetensors file image: 8-byte little-endian length, `header` verbatim, `data_bytes` bytes of data.
inline std::string safetensors_image(const std::string& header, size_t data_bytes, char fill = '\x01') {
  uint64_t n = header.size();
  std::string out(reinterpret_cast<const char*>(&n), 8);
  out += header;
  out.append(data_bytes, fill);
  return out;
}

/// True when two tensors have the same dtype, shape and stored bytes (bit-identical; NaN-safe).
inline bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  at::Tensor ca = a.cpu().contiguous(), cb = b.cpu().contiguous();
  if (ca.numel() == 0) return true;  // data_ptr() may be null: memcmp(nullptr, ...) is undefined
  return std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.numel() * ca.element_size()) == 0;
}

inline std::string data_dir() { return FERRY_TEST_DATA_DIR; }

/// Expects `statement` to throw ferry::Error whose message contains every one of `needles`.
#define EXPECT_FERRY_ERROR(statement, ...)                                                 \
  do {                                                                                     \
    try {                                                                                  \
      statement;                                                                           \
      ADD_FAILURE() << "expected ferry::Error from " #statement;                           \
    } catch (const ::ferry::Error& e) {                                                    \
      for (const std::string& needle : std::vector<std::string>{__VA_ARGS__})              \
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)                   \
            << "message: " << e.what() << "\nmissing: " << needle;                         \
    }                                                                                      \
  } while (false)

}  // namespace ferry::test
