#pragma once
/// \file
/// How much host memory this process may still use: the smaller of the machine's MemAvailable and
/// what its memory cgroup (v1 or v2) leaves below its limit. A container with a 16 GB limit on a
/// 512 GB machine has 16 GB, whatever /proc/meminfo says; planning or caching against MemAvailable
/// there gets the process killed by the OOM killer instead of offloading to disk.
///
///     ferry::HostMemory m = ferry::host_memory();
///     if (m.has_cgroup_limit()) std::cout << m.describe();   // "1.2 GiB available (cgroup ...)"
///     int64_t room = m.available;                             // plan with this

#include <cstdint>
#include <string>

namespace ferry {

/// Memory kept free for the work of running a model (activations, the KV cache, the process's own
/// pages) when a budget is derived from what is available: weights stored in files are read mapped
/// only when they fit in what is available less this, and under a cgroup limit the planner's
/// detected CPU budget leaves it out.
constexpr int64_t kWorkingMemoryReserveBytes = int64_t{512} << 20;

/// A snapshot of the host memory open to this process.
struct HostMemory {
  /// What this process may still allocate: min(mem_available, cgroup_limit - cgroup_used).
  int64_t available = 0;
  /// MemAvailable of /proc/meminfo (free memory plus what the kernel can reclaim).
  int64_t mem_available = 0;
  /// The memory cgroup's limit (the tightest of it and its ancestors); -1 when there is none.
  int64_t cgroup_limit = -1;
  /// What the cgroup holds that the kernel cannot simply drop: its usage less its page cache.
  int64_t cgroup_used = 0;
  /// The cgroup's folder (empty without a limit).
  std::string cgroup_path;

  bool has_cgroup_limit() const { return cgroup_limit >= 0; }
  /// "1.21 GiB available (cgroup limit 1.60 GiB, 0.39 GiB used, at /sys/fs/cgroup/memory/x)" or
  /// "20.3 GiB available (MemAvailable)".
  std::string describe() const;
};

/// Reads /proc/meminfo and this process's memory cgroup (/proc/self/cgroup; cgroup v1's
/// memory.stat or v2's memory.max/memory.current/memory.stat). Throws ferry::Error when
/// /proc/meminfo has no MemAvailable; a cgroup that cannot be read counts as no limit.
HostMemory host_memory();

}  // namespace ferry
