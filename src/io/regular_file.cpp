#include "ferry/io/regular_file.h"

#include "ferry/core/error.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace ferry::io {

std::string describe_file_type(unsigned mode) {
  switch (mode & S_IFMT) {
    case S_IFREG: return "a regular file";
    case S_IFDIR: return "a directory";
    case S_IFIFO: return "a FIFO";
    case S_IFCHR: return "a character device";
    case S_IFBLK: return "a block device";
    case S_IFSOCK: return "a socket";
    case S_IFLNK: return "a symbolic link";
    default: return "not a regular file";
  }
}

void check_regular_file(const std::string& path, const char* function) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT) throw Error(function, path + ": does not exist");
    if (err == ELOOP) throw Error(function, path + ": symbolic links that loop (too many levels of symbolic links)");
    throw Error(function, path + ": cannot open: " + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode))
    throw Error(function, path + ": is " + describe_file_type(st.st_mode) + ", not a file");
}

std::string read_regular_file(const std::string& path, const char* function) {
  check_regular_file(path, function);
  // O_NONBLOCK: should the path be swapped for a FIFO after the check, the open still returns.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw Error(function, path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(function, path + ": is not a regular file any more");
  }
  std::string text(static_cast<size_t>(st.st_size), '\0');
  size_t done = 0;
  while (true) {
    if (done == text.size()) text.resize(text.size() + 4096 + text.size() / 2);  // it grew since fstat
    const ssize_t n = ::read(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      throw Error(function, path + ": read failed: " + std::strerror(err));
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  text.resize(done);
  return text;
}

}  // namespace ferry::io
