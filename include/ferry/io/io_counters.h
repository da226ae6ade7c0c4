#pragma once
/// \file
/// Process-wide counts of the expensive things the load path does, so that tests and `ferry run
/// --json` can check that a command opens each checkpoint shard once and parses each header once.
///
///     const uint64_t before = ferry::io::io_counters().files_mapped;
///     auto ckpt = ferry::io::Checkpoint::open(dir);
///     // io_counters().files_mapped - before == ckpt.files().size()

#include <atomic>
#include <cstdint>

namespace ferry::io {

/// Monotonic counters (relaxed atomics: cheap, exact once the counted work has finished).
struct IoCounters {
  /// Files mapped by MappedFile::open.
  std::atomic<uint64_t> files_mapped{0};
  /// safetensors headers parsed and validated (parse_safetensors_header).
  std::atomic<uint64_t> safetensors_headers_parsed{0};
};

/// The counters of this process.
IoCounters& io_counters();

}  // namespace ferry::io
