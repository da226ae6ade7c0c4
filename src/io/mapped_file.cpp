#include "ferry/io/mapped_file.h"

#include "ferry/core/error.h"
#include "ferry/io/io_counters.h"
#include "ferry/io/mapped_file_faults.h"
#include "ferry/io/regular_file.h"
#include "ferry/core/host_memory.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <mutex>
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

// Note [Mapped-file faults]: a fixed table of the live mappings, written when a file is mapped or
// unmapped and read by the SIGBUS handler with nothing but atomic loads (no locks, no allocation).
// A slot's path is written before its range is published and the range cleared before the slot is
// reused, so the handler sees a complete entry or none.
constexpr size_t kFaultSlots = 4096;
constexpr size_t kFaultPathBytes = 512;
struct FaultSlot {
  std::atomic<uintptr_t> begin{0};
  std::atomic<uintptr_t> end{0};
  char path[kFaultPathBytes] = {};
};
FaultSlot fault_slots[kFaultSlots];

int register_mapping(const uint8_t* data, size_t size, const std::string& path) {
  if (data == nullptr || size == 0) return -1;
  for (size_t i = 0; i < kFaultSlots; ++i) {
    uintptr_t expected = 0;
    if (!fault_slots[i].begin.compare_exchange_strong(expected, 1)) continue;  // 1: being filled
    const size_t n = std::min(path.size(), kFaultPathBytes - 1);
    std::memcpy(fault_slots[i].path, path.data(), n);
    fault_slots[i].path[n] = '\0';
    fault_slots[i].end.store(reinterpret_cast<uintptr_t>(data) + size);
    fault_slots[i].begin.store(reinterpret_cast<uintptr_t>(data));
    return static_cast<int>(i);
  }
  return -1;  // more than kFaultSlots files mapped at once: this one gets the default SIGBUS
}

void unregister_mapping(int slot) {
  if (slot < 0) return;
  fault_slots[slot].end.store(0);
  fault_slots[slot].begin.store(0);
}

void write_all(const char* text, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(STDERR_FILENO, text, n);
    if (w <= 0) return;
    text += w;
    n -= static_cast<size_t>(w);
  }
}

extern "C" void on_bus_error(int sig, siginfo_t* info, void*) {
  const auto address = reinterpret_cast<uintptr_t>(info->si_addr);
  for (size_t i = 0; i < kFaultSlots; ++i) {
    const uintptr_t begin = fault_slots[i].begin.load(), end = fault_slots[i].end.load();
    if (begin <= 1 || address < begin || address >= end) continue;
    static const char head[] = "ferry: error: ";
    static const char tail[] =
        " changed while it was being read (truncated or replaced); everything printed above is complete. "
        "Stopping.\n";
    write_all(head, sizeof head - 1);
    write_all(fault_slots[i].path, std::strlen(fault_slots[i].path));
    write_all(tail, sizeof tail - 1);
    ::_exit(1);
  }
  ::signal(sig, SIG_DFL);  // not a mapped file of ferry's: the default action
  ::raise(sig);
}

}  // namespace

void install_mapped_file_fault_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction action {};
    action.sa_sigaction = on_bus_error;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_SIGINFO;
    ::sigaction(SIGBUS, &action, nullptr);
  });
}

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
  auto file = std::make_shared<MappedFile>(Key{}, path, data, size);
  file->fault_slot_ = register_mapping(data, size, path);
  return file;
}

MappedFile::~MappedFile() {
  unregister_mapping(fault_slot_);
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

void MappedFile::advise_willneed(size_t offset, size_t length) const { advise(*this, offset, length, MADV_WILLNEED); }
void MappedFile::advise_sequential(size_t offset, size_t length) const { advise(*this, offset, length, MADV_SEQUENTIAL); }
void MappedFile::advise_dontneed(size_t offset, size_t length) const { advise(*this, offset, length, MADV_DONTNEED); }

}  // namespace ferry::io
