#include "ferry/io/atomic_file.h"

#include "ferry/core/error.h"
#include "ferry/io/write_faults.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

namespace ferry::io {
namespace {

std::atomic<int> fault_error{0};         // 0: no fault injected
std::atomic<uint64_t> fault_budget{0};   // bytes still allowed before it strikes
std::atomic<uint64_t> written_total{0};

// ::write, or the injected fault: a short write up to the budget, then -1 with errno set.
ssize_t write_or_fault(int fd, const char* p, size_t size) {
  const int error = fault_error.load(std::memory_order_relaxed);
  if (error != 0) {
    const uint64_t budget = fault_budget.load();
    if (budget == 0) {
      errno = error;
      return -1;
    }
    if (size > budget) size = static_cast<size_t>(budget);
  }
  ssize_t n = ::write(fd, p, size);
  if (n > 0) {
    written_total += static_cast<uint64_t>(n);
    if (error != 0) fault_budget -= static_cast<uint64_t>(n);
  }
  return n;
}

int fsync_or_fault(int fd) {
  const int error = fault_error.load(std::memory_order_relaxed);
  if (error != 0 && fault_budget.load() == 0) {
    errno = error;
    return -1;
  }
  return ::fsync(fd);
}

}  // namespace

void inject_write_fault(int error, uint64_t after_bytes) {
  fault_budget = after_bytes;
  fault_error = error;
}

void clear_write_fault() { fault_error = 0; }

uint64_t bytes_written() { return written_total.load(); }

AtomicFileWriter::AtomicFileWriter(std::string path, bool sync) : path_(std::move(path)), sync_(sync) {
  static std::atomic<unsigned long> counter{0};
  temp_path_ = path_ + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  FERRY_CHECK(fd_ >= 0, path_, ": cannot create the temporary file ", temp_path_, ": ", std::strerror(errno));
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_path_.c_str());
}

void AtomicFileWriter::write(const void* data, size_t size) {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = write_or_fault(fd_, p, size);
    if (n < 0 && errno == EINTR) continue;
    FERRY_CHECK(n > 0, path_, ": write failed after ", (p - static_cast<const char*>(data)), " bytes: ",
                n < 0 ? std::strerror(errno) : "no progress");
    p += n;
    size -= static_cast<size_t>(n);
  }
}

void AtomicFileWriter::commit() {
  FERRY_CHECK(!sync_ || fsync_or_fault(fd_) == 0, path_, ": fsync failed: ", std::strerror(errno));
  int fd = fd_;
  fd_ = -1;
  FERRY_CHECK(::close(fd) == 0, path_, ": close failed: ", std::strerror(errno));
  FERRY_CHECK(::rename(temp_path_.c_str(), path_.c_str()) == 0, "cannot rename ", temp_path_, " to ", path_, ": ",
              std::strerror(errno));
  committed_ = true;
  if (sync_) {
    // The rename itself is durable only once the folder is.
    const auto slash = path_.find_last_of('/');
    const std::string folder = slash == std::string::npos ? "." : (slash == 0 ? "/" : path_.substr(0, slash));
    const int dir = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir >= 0) {
      (void)::fsync(dir);
      ::close(dir);
    }
  }
}

void write_file_atomically(const std::string& path, const std::string& contents) {
  AtomicFileWriter writer(path);
  writer.write(contents.data(), contents.size());
  writer.commit();
}

}  // namespace ferry::io
