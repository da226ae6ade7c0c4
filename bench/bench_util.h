#pragma once
// What the benchmark programs share: a clock, medians, and the checkpoint's files read or evicted
// from the page cache (cold-cache figures; posix_fadvise(POSIX_FADV_DONTNEED) needs no privileges).

#include "ferry/core/error.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace ferry::bench {

inline double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

/// The checkpoint's .safetensors files in `dir`, sorted.
inline std::vector<std::string> shard_files(const std::string& dir) {
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.path().extension() == ".safetensors") files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  return files;
}

/// Drops the files' pages from the page cache (the next read comes from the disk).
inline void evict(const std::vector<std::string>& files) {
  for (const auto& f : files) {
    int fd = ::open(f.c_str(), O_RDONLY);
    if (fd < 0) continue;
    ::fdatasync(fd);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

/// Sequential read of every file with large reads: the disk's (or page cache's) bandwidth, bytes/s.
inline double read_bandwidth(const std::vector<std::string>& files) {
  std::vector<char> buffer(16 << 20);
  uint64_t total = 0;
  double start = now();
  for (const auto& f : files) {
    int fd = ::open(f.c_str(), O_RDONLY);
    FERRY_CHECK(fd >= 0, "cannot open ", f);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    ssize_t n;
    while ((n = ::read(fd, buffer.data(), buffer.size())) > 0) total += static_cast<uint64_t>(n);
    ::close(fd);
  }
  return static_cast<double>(total) / (now() - start);
}

/// The same read with O_DIRECT: bypasses the page cache, so it measures the device (or, on a virtual
/// machine, whatever caches the virtual disk) even where evicting the cache is not allowed. 0 when the
/// file system does not support O_DIRECT.
inline double read_bandwidth_direct(const std::vector<std::string>& files) {
  constexpr size_t kBuffer = 16 << 20;
  void* raw = nullptr;
  FERRY_CHECK(::posix_memalign(&raw, 4096, kBuffer) == 0, "cannot allocate an aligned read buffer");
  std::unique_ptr<void, decltype(&std::free)> buffer(raw, &std::free);
  uint64_t total = 0;
  double start = now();
  for (const auto& f : files) {
    int fd = ::open(f.c_str(), O_RDONLY | O_DIRECT);
    if (fd < 0) return 0;
    ssize_t n;
    while ((n = ::read(fd, buffer.get(), kBuffer)) > 0) total += static_cast<uint64_t>(n);
    ::close(fd);
  }
  return static_cast<double>(total) / (now() - start);
}

}  // namespace ferry::bench
