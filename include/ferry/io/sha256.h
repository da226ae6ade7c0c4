#pragma once
/// \file
/// SHA-256 (FIPS 180-4), for `ferry inspect --checksum`: a digest of each tensor's stored bytes that
/// can be compared with `sha256sum` of the same byte range.
///
///     ferry::io::Sha256 h;
///     h.update(bytes, n);
///     std::string hex = h.hex_digest();   // 64 lower-case hex digits
///     ferry::io::sha256_hex("abc", 3);    // "ba7816bf..."

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace ferry::io {

/// Incremental SHA-256.
class Sha256 {
 public:
  Sha256();
  /// Adds `size` bytes.
  void update(const void* data, size_t size);
  /// Finishes and returns the 32-byte digest; the object must not be updated afterwards.
  std::array<uint8_t, 32> digest();
  /// digest() as 64 lower-case hex digits.
  std::string hex_digest();

 private:
  void compress(const uint8_t* block);
  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_{};
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};

/// SHA-256 of a buffer as hex.
std::string sha256_hex(const void* data, size_t size);

/// SHA-256 of bytes [offset, offset + length) of the file at `path`, read with pread (not through
/// a mapping: a file truncated while it is read gives an error naming it, not SIGBUS). Throws
/// ferry::Error when the file cannot be read or is now shorter than the range.
std::string sha256_file_range(const std::string& path, uint64_t offset, uint64_t length);

}  // namespace ferry::io
