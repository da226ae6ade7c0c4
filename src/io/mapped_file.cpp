#include "ferry/io/mapped_file.h"

#include "ferry/core/error.h"
#include "ferry/io/io_counters.h"
#include "ferry/io/regular_file.h"
#include "ferry/core/host_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace ferry::io {
namespace {

// Closes a file descriptor on scope exit.
struct FdGuard {
  int fd;
  ~FdGuard() {
    if (fd >= 0) ::close(fd);
  }
};

void advise(const MappedFile& map, size_t offset, size_t length, int advice) {
  if (map.data() == nullptr || offset >= map.size() || length == 0) return;
  length = std::min(length, map.size() - offset);
  static const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  auto begin = reinterpret_cast<uintptr_t>(map.data()) + offset;
  uintptr_t aligned = begin & ~(uintptr_t(page) - 1);
  // Best effort: the hint failing changes speed, never results.
  (void)::madvise(reinterpret_cast<void*>(aligned), length + (begin - aligned), advice);
}

// Maps `size` bytes of `fd` read-only at an address aligned to kHugePageBytes. With the file offset 0
// on a huge-page boundary, the kernel can map whole 2 MiB page-cache folios with one entry each
// (FilePmdMapped in smaps) and, with MADV_HUGEPAGE, reads the file into such folios when it
// faults them in. Compute that streams weights out of the mapping then runs as fast as from
// huge-page anonymous memory; with 4 KiB entries, a matrix-vector product over mapped weights was
// 10-30% slower here (TLB misses). Smaller files get a plain mapping.
void* map_aligned(int fd, size_t size) {
  if (size < kHugePageBytes) return ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  // Reserve size + one huge page of address space, place the file at its first aligned address,
  // and give back the slack on both sides.
  void* reserved = ::mmap(nullptr, size + kHugePageBytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (reserved == MAP_FAILED) return MAP_FAILED;
  auto base = reinterpret_cast<uintptr_t>(reserved);
  uintptr_t aligned = (base + kHugePageBytes - 1) & ~(uintptr_t(kHugePageBytes) - 1);
  void* p = ::mmap(reinterpret_cast<void*>(aligned), size, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0);
  if (p == MAP_FAILED) {
    ::munmap(reserved, size + kHugePageBytes);
    return MAP_FAILED;
  }
  if (aligned > base) ::munmap(reserved, aligned - base);
  uintptr_t end = aligned + size, reserved_end = base + size + kHugePageBytes;
  // The file's last page is rounded up to a whole page by mmap; free what lies beyond it.
  static const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  end = (end + page - 1) & ~(uintptr_t(page) - 1);
  if (reserved_end > end) ::munmap(reinterpret_cast<void*>(end), reserved_end - end);
  (void)::madvise(p, size, MADV_HUGEPAGE);  // best effort: refused when THP is off
  return p;
}

}  // namespace

std::shared_ptr<const MappedFile> MappedFile::open(const std::string& path) {
  check_regular_file(path, "MappedFile::open");  // a FIFO would block the open below
  FdGuard fd{::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK)};
  FERRY_CHECK(fd.fd >= 0, path, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  FERRY_CHECK(::fstat(fd.fd, &st) == 0, path, ": cannot stat: ", std::strerror(errno));
  FERRY_CHECK(S_ISREG(st.st_mode), path, ": is ", describe_file_type(st.st_mode), ", not a file");
  const auto size = static_cast<size_t>(st.st_size);
  const uint8_t* data = nullptr;
  if (size > 0) {
    void* p = map_aligned(fd.fd, size);
    FERRY_CHECK(p != MAP_FAILED, path, ": cannot memory-map ", size, " bytes: ", std::strerror(errno));
    data = static_cast<const uint8_t*>(p);
  }
  ++io_counters().files_mapped;
  // The mapping outlives the descriptor: closing fd here is fine.
  return std::make_shared<const MappedFile>(Key{}, path, data, size);
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

void MappedFile::advise_willneed(size_t offset, size_t length) const { advise(*this, offset, length, MADV_WILLNEED); }
void MappedFile::advise_sequential(size_t offset, size_t length) const { advise(*this, offset, length, MADV_SEQUENTIAL); }
void MappedFile::advise_dontneed(size_t offset, size_t length) const { advise(*this, offset, length, MADV_DONTNEED); }

}  // namespace ferry::io
