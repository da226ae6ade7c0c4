// The disk's read bandwidth for the bytes a disk-offloaded model reads every token: the figure that
// ferry's decode in direct mode is measured against (scripts/bench_larger_than_ram.sh). It reads the
// stored bytes of every tensor whose name starts with PREFIX (default "model.layers.", the decoder
// layers that the benchmark places on disk), cold (evicted from the page cache first), three ways,
// and prints one JSON line with each in bytes/s:
//   buffered      ordinary 16 MiB reads, one thread, through the page cache (as `cat` reads)
//   direct_dd     O_DIRECT, one thread, 64 MiB reads into 4 KiB-page memory (as `dd iflag=direct`)
//   direct_ferry  ferry's own reads with no compute: io::DirectReader, the streamer's runs
//                 (io::coalesce_reads), THREADS threads, huge-page buffers
// The disk's figure is the best of the three. On a virtual machine the host may cache the virtual
// disk, so figures drift between runs: the benchmark interleaves this with ferry's runs.
//
//   bench_disk_read MODEL_DIR [--prefix model.layers.] [--threads 2] [--passes 1]

#include "bench_util.h"

#include "ferry/io/checkpoint.h"
#include "ferry/io/direct_reader.h"
#include "ferry/io/weights_map.h"

#include <nlohmann/json.hpp>

#include <sys/mman.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <set>
#include <thread>

using namespace ferry;

namespace {

struct Range {
  std::string path;
  uint64_t begin, end;
};

double buffered(const std::vector<Range>& ranges) {
  std::vector<char> buffer(16 << 20);
  uint64_t total = 0;
  const double start = bench::now();
  for (const Range& r : ranges) {
    const int fd = ::open(r.path.c_str(), O_RDONLY);
    FERRY_CHECK(fd >= 0, "cannot open ", r.path);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    for (uint64_t at = r.begin; at < r.end;) {
      const ssize_t n = ::pread(fd, buffer.data(), std::min<uint64_t>(buffer.size(), r.end - at), static_cast<off_t>(at));
      FERRY_CHECK(n > 0, "cannot read ", r.path);
      at += static_cast<uint64_t>(n);
      total += static_cast<uint64_t>(n);
    }
    ::close(fd);
  }
  return static_cast<double>(total) / (bench::now() - start);
}

double direct_dd(const std::vector<Range>& ranges) {
  constexpr size_t kChunk = 64 << 20;
  void* buffer = ::mmap(nullptr, kChunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  FERRY_CHECK(buffer != MAP_FAILED, "cannot allocate a read buffer");
  (void)::madvise(buffer, kChunk, MADV_NOHUGEPAGE);
  uint64_t total = 0;
  const double start = bench::now();
  for (const Range& r : ranges) {
    const int fd = ::open(r.path.c_str(), O_RDONLY | O_DIRECT);
    if (fd < 0) return 0;  // no O_DIRECT on this file system
    for (uint64_t at = r.begin & ~uint64_t{4095}; at < r.end;) {
      const ssize_t n = ::pread(fd, buffer, kChunk, static_cast<off_t>(at));
      if (n <= 0) break;
      at += static_cast<uint64_t>(n);
      total += static_cast<uint64_t>(n);
    }
    ::close(fd);
  }
  ::munmap(buffer, kChunk);
  return static_cast<double>(total) / (bench::now() - start);
}

double direct_ferry(const std::vector<io::FileExtent>& extents, int threads) {
  const std::vector<io::ReadRun> runs = io::coalesce_reads(extents);
  io::DirectReader reader(io::ReadBufferPool::create(int64_t{threads} * int64_t(io::kMaxReadRunBytes)));
  std::atomic<size_t> next{0};
  const double start = bench::now();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&] {
      for (size_t i; (i = next++) < runs.size();) (void)reader.read(runs[i].path, runs[i].begin, runs[i].end - runs[i].begin);
    });
  for (auto& t : pool) t.join();
  return static_cast<double>(reader.stats().bytes_read) / (bench::now() - start);
}

}  // namespace

int main(int argc, char** argv) try {
  if (argc < 2) {
    std::fprintf(stderr, "usage: bench_disk_read MODEL_DIR [--prefix model.layers.] [--threads 2] [--passes 1]\n");
    return 2;
  }
  std::string prefix = "model.layers.";
  int threads = 2, passes = 1;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--prefix") prefix = argv[i + 1];
    else if (flag == "--threads") threads = std::stoi(argv[i + 1]);
    else if (flag == "--passes") passes = std::stoi(argv[i + 1]);
    else FERRY_FAIL("unknown option ", flag);
  }
  auto weights = io::make_checkpoint_weights_map(io::Checkpoint::open(argv[1]));
  std::vector<io::FileExtent> extents;
  std::set<std::string> files;
  for (const auto& name : weights->keys())
    if (name.rfind(prefix, 0) == 0) {
      extents.push_back(*weights->file_extent(name));
      files.insert(extents.back().path);
    }
  FERRY_CHECK(!extents.empty(), "no tensor of ", argv[1], " starts with '", prefix, "'");
  // One range per file, from its first to its last selected byte, for the sequential readers.
  std::vector<Range> ranges;
  uint64_t bytes = 0;
  for (const auto& run : io::coalesce_reads(extents)) {
    bytes += run.end - run.begin;
    if (!ranges.empty() && ranges.back().path == run.path) ranges.back().end = run.end;
    else ranges.push_back({run.path, run.begin, run.end});
  }
  const std::vector<std::string> file_list(files.begin(), files.end());
  nlohmann::json out = {{"bytes", bytes}, {"threads", threads}, {"passes", passes}};
  double best_buffered = 0, best_dd = 0, best_ferry = 0;
  for (int p = 0; p < passes; ++p) {
    bench::evict(file_list);
    best_buffered = std::max(best_buffered, buffered(ranges));
    bench::evict(file_list);
    best_dd = std::max(best_dd, direct_dd(ranges));
    best_ferry = std::max(best_ferry, direct_ferry(extents, threads));
  }
  bench::evict(file_list);
  out["buffered_bytes_per_s"] = best_buffered;
  out["direct_dd_bytes_per_s"] = best_dd;
  out["direct_ferry_bytes_per_s"] = best_ferry;
  out["disk_bytes_per_s"] = std::max({best_buffered, best_dd, best_ferry});
  std::cout << out.dump() << std::endl;
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bench_disk_read: %s\n", e.what());
  return 1;
}
