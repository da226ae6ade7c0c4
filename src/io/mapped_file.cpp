#include "ferry/io/mapped_file.h"

#include "ferry/core/error.h"

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

}  // namespace

std::shared_ptr<const MappedFile> MappedFile::open(const std::string& path) {
  FdGuard fd{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  FERRY_CHECK(fd.fd >= 0, path, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  FERRY_CHECK(::fstat(fd.fd, &st) == 0, path, ": cannot stat: ", std::strerror(errno));
  FERRY_CHECK(S_ISREG(st.st_mode), path, ": not a regular file");
  const auto size = static_cast<size_t>(st.st_size);
  const uint8_t* data = nullptr;
  if (size > 0) {
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd.fd, 0);
    FERRY_CHECK(p != MAP_FAILED, path, ": cannot memory-map ", size, " bytes: ", std::strerror(errno));
    data = static_cast<const uint8_t*>(p);
  }
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
