#pragma once
// Internal: writes a file under a temporary name in the target folder, then renames it into place,
// so a reader sees either the old file or the complete new one, never a half-written file.

#include <cstddef>
#include <string>

namespace ferry::io::detail {

class AtomicFileWriter {
 public:
  /// Creates `<path>.tmp.<pid>.<n>` next to `path`. With `sync`, commit() fsyncs before renaming
  /// (durable); without, the caller flushes later (save_offload_index syncs the folder once).
  explicit AtomicFileWriter(std::string path, bool sync = true);
  /// Removes the temporary file unless commit() succeeded.
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  /// Appends `size` bytes; throws ferry::Error on a short or failed write (disk full, ...).
  void write(const void* data, size_t size);
  /// fsync, close, rename over the target. Throws ferry::Error on failure.
  void commit();

 private:
  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  bool committed_ = false;
  bool sync_ = true;
};

/// Writes a whole small file atomically.
void write_file_atomically(const std::string& path, const std::string& contents);

}  // namespace ferry::io::detail
