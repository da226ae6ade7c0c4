#include "ferry/io/atomic_file.h"

#include "ferry/core/error.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

namespace ferry::io {

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
    ssize_t n = ::write(fd_, p, size);
    if (n < 0 && errno == EINTR) continue;
    FERRY_CHECK(n > 0, path_, ": write failed after ", (p - static_cast<const char*>(data)), " bytes: ",
                n < 0 ? std::strerror(errno) : "no progress");
    p += n;
    size -= static_cast<size_t>(n);
  }
}

void AtomicFileWriter::commit() {
  FERRY_CHECK(!sync_ || ::fsync(fd_) == 0, path_, ": fsync failed: ", std::strerror(errno));
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
