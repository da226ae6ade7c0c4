#pragma once
/// \file
/// A read-only memory mapping of a whole file: the storage under ferry's zero-copy tensors.
///
///     auto map = MappedFile::open("/models/model.safetensors");
///     const uint8_t* bytes = map->data();        // map->size() bytes, read-only
///     map->advise_willneed(offset, length);      // best-effort hint before a copy
///
/// Mappings are shared (`std::shared_ptr<const MappedFile>`): a tensor that views the mapping holds
/// a reference, so the file stays mapped for as long as any such tensor is alive.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

namespace ferry::io {

/// An RAII, read-only (PROT_READ, MAP_SHARED) mapping of a whole file. Non-copyable; share it through
/// `std::shared_ptr`. Pages are read from disk on first touch, so mapping a 100 GB file costs nothing
/// until its bytes are used.
class MappedFile {
 public:
  /// Maps `path`. Throws ferry::Error naming the file and the OS error when it cannot be opened or mapped.
  static std::shared_ptr<const MappedFile> open(const std::string& path);

  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  /// First byte of the file (nullptr for an empty file).
  const uint8_t* data() const { return data_; }
  /// File size in bytes.
  size_t size() const { return size_; }
  /// The path it was opened with.
  const std::string& path() const { return path_; }

  /// Best-effort `madvise(MADV_WILLNEED)` on a byte range: start reading it in now. Never throws.
  void advise_willneed(size_t offset, size_t length) const;
  /// Best-effort `madvise(MADV_SEQUENTIAL)` on a byte range that will be read once front to back.
  void advise_sequential(size_t offset, size_t length) const;
  /// Best-effort `madvise(MADV_DONTNEED)`: the range's pages may leave this process's resident set
  /// (they stay in the page cache). Call after copying a range out, to keep the RSS bounded.
  void advise_dontneed(size_t offset, size_t length) const;

 private:
  struct Key {
    explicit Key() = default;
  };

 public:
  /// Use open(); public only so that make_shared can call it (Key is private).
  MappedFile(Key, std::string path, const uint8_t* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  int fault_slot_ = -1;  // its entry for the SIGBUS message (io/mapped_file_faults.h)
};

}  // namespace ferry::io
