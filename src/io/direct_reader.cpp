#include "ferry/io/direct_reader.h"

#include "ferry/core/byte_size.h"
#include "ferry/core/error.h"
#include "ferry/core/host_memory.h"

#include <ATen/ATen.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <tuple>

namespace ferry::io {
namespace {

constexpr uint64_t kAlign = ReadBufferPool::kAlignment;

uint64_t round_down(uint64_t v) { return v & ~(kAlign - 1); }
uint64_t round_up(uint64_t v) { return (v + kAlign - 1) & ~(kAlign - 1); }

// Buffers of a huge page or more are sized and advised in huge pages: one TLB entry per 2 MiB when
// compute reads the weights, and fewer faults when a buffer is first filled.
size_t buffer_size_for(size_t bytes) {
  const size_t page = bytes >= kHugePageBytes ? kHugePageBytes : kAlign;
  return (std::max<size_t>(bytes, 1) + page - 1) / page * page;
}

}  // namespace

// ---- pool -------------------------------------------------------------------------------------

std::shared_ptr<ReadBufferPool> ReadBufferPool::create(int64_t retain_bytes) {
  return std::shared_ptr<ReadBufferPool>(new ReadBufferPool(retain_bytes));
}

ReadBufferPool::~ReadBufferPool() {
  for (ReadBuffer* b : free_) {
    ::munmap(b->data, b->capacity);
    delete b;
  }
}

std::shared_ptr<const ReadBuffer> ReadBufferPool::acquire(size_t bytes) {
  ReadBuffer* buffer = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it)
      if ((*it)->capacity >= bytes && (best == free_.end() || (*it)->capacity < (*best)->capacity)) best = it;
    if (best != free_.end()) {
      buffer = *best;
      free_.erase(best);
      free_bytes_ -= static_cast<int64_t>(buffer->capacity);
      ++reuses_;
    }
  }
  if (buffer == nullptr) {
    const size_t size = buffer_size_for(bytes);
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    FERRY_CHECK(p != MAP_FAILED, "cannot allocate a read buffer of ", format_bytes(static_cast<double>(size)), ": ",
                std::strerror(errno), ". Give the weight streamer less to read ahead (StreamerOptions::prefetch_bytes, "
                "ferry run --prefetch-bytes)");
    if (size >= kHugePageBytes) (void)::madvise(p, size, MADV_HUGEPAGE);
    buffer = new ReadBuffer{static_cast<uint8_t*>(p), size};
    std::lock_guard<std::mutex> lock(mutex_);
    held_ += static_cast<int64_t>(size);
    peak_ = std::max(peak_, held_);
    ++allocations_;
  }
  std::shared_ptr<ReadBufferPool> self = shared_from_this();
  return std::shared_ptr<const ReadBuffer>(buffer, [self](const ReadBuffer* b) { self->give_back(const_cast<ReadBuffer*>(b)); });
}

void ReadBufferPool::give_back(ReadBuffer* buffer) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (held_ <= retain_bytes_) {  // everything the pool holds, in use or free, within the bound
      free_.push_back(buffer);
      free_bytes_ += static_cast<int64_t>(buffer->capacity);
      return;
    }
    held_ -= static_cast<int64_t>(buffer->capacity);
  }
  ::munmap(buffer->data, buffer->capacity);
  delete buffer;
}

int64_t ReadBufferPool::bytes_held() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return held_;
}
int64_t ReadBufferPool::peak_bytes_held() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return peak_;
}
int64_t ReadBufferPool::reuses() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return reuses_;
}
int64_t ReadBufferPool::allocations() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return allocations_;
}

// ---- planning reads ---------------------------------------------------------------------------

std::vector<ReadRun> coalesce_reads(const std::vector<FileExtent>& extents) {
  std::vector<size_t> order(extents.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return std::tie(extents[a].path, extents[a].offset) < std::tie(extents[b].path, extents[b].offset);
  });
  std::vector<ReadRun> runs;
  for (size_t i : order) {
    const FileExtent& e = extents[i];
    const uint64_t end = e.offset + e.length;
    if (!runs.empty()) {
      ReadRun& last = runs.back();
      if (last.path == e.path && e.offset <= last.end + kCoalesceGapBytes &&
          std::max(end, last.end) - last.begin <= kMaxReadRunBytes) {
        last.end = std::max(last.end, end);
        last.extents.push_back(i);
        continue;
      }
    }
    runs.push_back(ReadRun{e.path, e.offset, end, {i}});
  }
  return runs;
}

// ---- reader -----------------------------------------------------------------------------------

DirectReader::DirectReader(std::shared_ptr<ReadBufferPool> pool, bool use_o_direct)
    : pool_(std::move(pool)), use_o_direct_(use_o_direct) {
  FERRY_CHECK(pool_ != nullptr, "a DirectReader needs a buffer pool");
}

DirectReader::~DirectReader() {
  for (auto& [path, file] : files_) ::close(file.fd);
}

DirectReader::OpenFile DirectReader::open(const std::string& path) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = files_.find(path);
  if (it != files_.end()) return it->second;
  OpenFile file;
  if (use_o_direct_) {
    file.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
    file.direct = file.fd >= 0;
  }
  if (!use_o_direct_ || (file.fd < 0 && errno == EINVAL))  // asked, or no O_DIRECT on this file system
    file.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  FERRY_CHECK(file.fd >= 0, "cannot open ", path, " to read weights from it: ", std::strerror(errno));
  files_.emplace(path, file);
  return file;
}

void DirectReader::fall_back_to_buffered(const std::string& path, OpenFile& file) {
  std::lock_guard<std::mutex> lock(mutex_);
  OpenFile& cached = files_[path];
  if (cached.direct) {
    const int flags = ::fcntl(cached.fd, F_GETFL);
    if (flags >= 0 && ::fcntl(cached.fd, F_SETFL, flags & ~O_DIRECT) == 0) cached.direct = false;
  }
  file = cached;
}

DirectReader::Bytes DirectReader::read(const std::string& path, uint64_t offset, uint64_t length) {
  OpenFile file = open(path);
  const uint64_t begin = round_down(offset), end = round_up(offset + length);
  const uint64_t needed = offset + length - begin;  // the last requested byte, counted from begin
  std::shared_ptr<const ReadBuffer> buffer = pool_->acquire(end - begin);
  uint64_t got = 0;
  while (got < end - begin) {
    const size_t chunk = static_cast<size_t>(std::min<uint64_t>(end - begin - got, uint64_t{1} << 30));
    const ssize_t n = ::pread(file.fd, buffer->data + got, chunk, static_cast<off_t>(begin + got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EINVAL && file.direct && got == 0) {
      fall_back_to_buffered(path, file);  // the file system took O_DIRECT at open but not for reads
      continue;
    }
    FERRY_CHECK(n >= 0, "cannot read bytes ", offset, "..", offset + length, " of ", path, ": ", std::strerror(errno));
    if (n == 0) break;  // end of file
    got += static_cast<uint64_t>(n);
    if (got % kAlign != 0) break;  // a short read mid-block: the end of the file
  }
  if (got < needed) {
    struct stat st {};
    const long long file_size = ::fstat(file.fd, &st) == 0 ? static_cast<long long>(st.st_size) : -1;
    FERRY_FAIL("cannot read bytes ", offset, "..", offset + length, " of ", path, ": the file ends at byte ", file_size,
               ". Was it truncated or replaced after it was opened? Check the checkpoint (ferry inspect) and load the "
               "model again");
  }
  if (!file.direct)  // read through the page cache: leave nothing there
    (void)::posix_fadvise(file.fd, static_cast<off_t>(begin), static_cast<off_t>(got), POSIX_FADV_DONTNEED);
  ++reads_;
  bytes_read_ += static_cast<int64_t>(got);
  ++(file.direct ? direct_reads_ : buffered_reads_);
  return Bytes{buffer, buffer->data + (offset - begin), static_cast<size_t>(length)};
}

at::Tensor DirectReader::tensor_in(const Bytes& run, uint64_t run_offset, const FileExtent& extent) {
  FERRY_ASSERT(extent.offset >= run_offset && extent.offset + extent.length <= run_offset + run.size,
               "extent outside the bytes read");
  const auto options = at::TensorOptions().dtype(extent.dtype).device(c10::kCPU);
  uint8_t* data = const_cast<uint8_t*>(run.data) + (extent.offset - run_offset);
  if (extent.length == 0) return at::empty(extent.shape, options);
  const size_t element = c10::elementSize(extent.dtype);
  if (reinterpret_cast<uintptr_t>(data) % element != 0) {  // legal in the format, unusual: copy
    at::Tensor out = at::empty(extent.shape, options);
    std::memcpy(out.data_ptr(), data, extent.length);
    return out;
  }
  std::shared_ptr<const ReadBuffer> keep = run.buffer;
  return at::from_blob(data, extent.shape, [keep](void*) mutable { keep.reset(); }, options);
}

at::Tensor DirectReader::read_tensor(const FileExtent& extent) {
  return tensor_in(read(extent.path, extent.offset, extent.length), extent.offset, extent);
}

DirectReadStats DirectReader::stats() const {
  return {reads_.load(), bytes_read_.load(), direct_reads_.load(), buffered_reads_.load()};
}

}  // namespace ferry::io
