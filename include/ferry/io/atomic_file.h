#pragma once
/// \file
/// The one way ferry writes a file: under a unique temporary name in the target folder, then renamed
/// into place (after fsync of the file and, on commit, of the folder), so that a reader, a crash or
/// a full disk leaves either the old file or the complete new one, never a half-written file.
///
///     ferry::io::write_file_atomically("out/config.json", text);     // small files
///     ferry::io::AtomicFileWriter w("out/model.safetensors");          // streamed ones
///     w.write(header.data(), header.size());  ...  w.commit();          // no commit: nothing changes

#include <cstddef>
#include <string>

namespace ferry::io {

/// A file written in full or not at all.
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
  /// fsync, close, rename over the target, fsync the folder (with `sync`). Throws ferry::Error on
  /// failure, and the target is then untouched.
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

}  // namespace ferry::io
