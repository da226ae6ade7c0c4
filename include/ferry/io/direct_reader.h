#pragma once
/// \file
/// Reading weights without the page cache, for models larger than RAM. A disk-offloaded weight read
/// through a mapping lands in the page cache; when the cache cannot hold all of them (a 40 GB model
/// on a 16 GB machine, or in a container's memory limit), every token faults the whole model in
/// again and evicts what it just read. DirectReader reads file ranges with O_DIRECT straight into
/// buffers of its own (aligned, reused from a ReadBufferPool, so a steady stream of reads costs no
/// page faults or zeroing), and the memory they take is exactly what the caller holds.
///
///     using namespace ferry::io;
///     auto pool = ReadBufferPool::create(/*retain_bytes=*/int64_t{1} << 30);
///     DirectReader reader(pool);
///     FileExtent e = weights->file_extent("model.layers.3.mlp.up_proj.weight").value();
///     at::Tensor w = reader.read_tensor(e);   // a CPU tensor over a pool buffer; no page cache
///     // several adjacent tensors in one read (fewer, larger requests):
///     DirectReader::Bytes run = reader.read(e.path, first_offset, total_length);
///
/// Offsets and lengths need no alignment: the reader reads the covering 4 KiB-aligned range and
/// points into it. Where a file system refuses O_DIRECT (tmpfs, some network and FUSE mounts), it
/// reads normally and then drops the range from the page cache (POSIX_FADV_DONTNEED); stats() says
/// which happened. Thread-safe: several I/O threads may read at once.

#include "ferry/io/file_extent.h"

#include <ATen/core/Tensor.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace ferry::io {

/// A block of host memory from a ReadBufferPool, aligned for O_DIRECT.
struct ReadBuffer {
  uint8_t* data = nullptr;
  size_t capacity = 0;
};

/// Aligned host buffers, reused. A buffer goes back to the pool when the last shared_ptr to it goes;
/// the pool keeps it for reuse while everything it holds (in use and free) is within
/// `retain_bytes`, and unmaps it otherwise.
class ReadBufferPool : public std::enable_shared_from_this<ReadBufferPool> {
 public:
  /// O_DIRECT's alignment of offsets, lengths and memory (the largest logical block size in use).
  static constexpr size_t kAlignment = 4096;

  static std::shared_ptr<ReadBufferPool> create(int64_t retain_bytes);
  ~ReadBufferPool();
  ReadBufferPool(const ReadBufferPool&) = delete;
  ReadBufferPool& operator=(const ReadBufferPool&) = delete;

  /// A buffer of at least `bytes`: the smallest free one that fits, else a new one (advised to use
  /// huge pages). Throws ferry::Error when the memory cannot be had.
  std::shared_ptr<const ReadBuffer> acquire(size_t bytes);

  /// Bytes of every buffer the pool made and has not unmapped (in use + free), and their peak.
  int64_t bytes_held() const;
  int64_t peak_bytes_held() const;
  /// Acquires served by a free buffer / by a new one.
  int64_t reuses() const;
  int64_t allocations() const;

 private:
  explicit ReadBufferPool(int64_t retain_bytes) : retain_bytes_(retain_bytes) {}
  void give_back(ReadBuffer* buffer);

  const int64_t retain_bytes_;
  mutable std::mutex mutex_;
  std::vector<ReadBuffer*> free_;
  int64_t free_bytes_ = 0;
  int64_t held_ = 0;
  int64_t peak_ = 0;
  int64_t reuses_ = 0;
  int64_t allocations_ = 0;
};

/// Several tensors of one file read with one request (coalesce_reads).
struct ReadRun {
  std::string path;
  /// The byte range read: [begin, end).
  uint64_t begin = 0, end = 0;
  /// Indices of the extents it covers, into the vector given to coalesce_reads.
  std::vector<size_t> extents;
};

/// Extents at most this far apart are read together: reading a small gap costs less than another
/// request.
constexpr uint64_t kCoalesceGapBytes = uint64_t{64} << 10;
/// At most this many bytes per read: several I/O threads share a module's reads, and a pool buffer
/// is reused by the same tensors on every pass.
constexpr uint64_t kMaxReadRunBytes = uint64_t{64} << 20;

/// Groups `extents` into reads: per file, in offset order, neighbours merged while the gap is at
/// most kCoalesceGapBytes and the read at most kMaxReadRunBytes (a larger extent is a read of its
/// own). Every extent is in exactly one run.
std::vector<ReadRun> coalesce_reads(const std::vector<FileExtent>& extents);

/// Counters of a DirectReader.
struct DirectReadStats {
  int64_t reads = 0;           ///< read() calls
  int64_t bytes_read = 0;      ///< bytes read from files, alignment padding included
  int64_t direct_reads = 0;    ///< reads done with O_DIRECT
  int64_t buffered_reads = 0;  ///< reads done through the page cache (then dropped from it)
};

/// Reads file ranges into pool buffers with O_DIRECT; see the file comment.
class DirectReader {
 public:
  /// `use_o_direct` false: ordinary reads, each range dropped from the page cache after it is
  /// read (what the reader does by itself where a file system refuses O_DIRECT).
  explicit DirectReader(std::shared_ptr<ReadBufferPool> pool, bool use_o_direct = true);
  /// Closes the files it opened.
  ~DirectReader();
  DirectReader(const DirectReader&) = delete;
  DirectReader& operator=(const DirectReader&) = delete;

  /// Bytes read: `data` points at the first requested byte, inside `buffer` (which keeps it alive).
  struct Bytes {
    std::shared_ptr<const ReadBuffer> buffer;
    const uint8_t* data = nullptr;
    size_t size = 0;
  };

  /// Reads `length` bytes of `path` from `offset`. Throws ferry::Error naming the file, the range
  /// and the cause when the file cannot be opened or read, or ends before offset + length.
  Bytes read(const std::string& path, uint64_t offset, uint64_t length);

  /// The tensor `extent` describes, read from its file: a CPU tensor over a pool buffer (a copy
  /// when the bytes are not aligned to the element size, as SafetensorsFile::view does).
  at::Tensor read_tensor(const FileExtent& extent);

  /// The tensor `extent` describes, from bytes read earlier that cover it (`run` was read from
  /// extent.path starting at byte `run_offset`). Shares run's buffer.
  static at::Tensor tensor_in(const Bytes& run, uint64_t run_offset, const FileExtent& extent);

  DirectReadStats stats() const;
  const std::shared_ptr<ReadBufferPool>& pool() const { return pool_; }

 private:
  struct OpenFile {
    int fd = -1;
    bool direct = false;
  };
  OpenFile open(const std::string& path);
  void fall_back_to_buffered(const std::string& path, OpenFile& file);

  std::shared_ptr<ReadBufferPool> pool_;
  const bool use_o_direct_;
  std::mutex mutex_;
  std::unordered_map<std::string, OpenFile> files_;
  std::atomic<int64_t> reads_{0}, bytes_read_{0}, direct_reads_{0}, buffered_reads_{0};
};

}  // namespace ferry::io
