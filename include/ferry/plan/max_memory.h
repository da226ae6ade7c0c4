#pragma once
/// \file
/// Memory budgets per device (Accelerate's `max_memory`), in Accelerate's device order:
/// accelerators by ordinal, then mps, cpu, disk.
///
///     MaxMemory budget = parse_max_memory("0=20GiB,cpu=64GiB");
///     MaxMemory detected = get_max_memory();     // free memory of each GPU + available host RAM
///     MaxMemory checked = get_max_memory(budget); // sorted and validated

#include "ferry/core/placement.h"

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace ferry {

/// One device's budget in bytes.
struct DeviceBudget {
  Placement device;
  int64_t bytes = 0;
  bool operator==(const DeviceBudget& o) const { return device == o.device && bytes == o.bytes; }
};

/// Budgets in Accelerate's device order (after get_max_memory()).
using MaxMemory = std::vector<DeviceBudget>;

/// Parses "0=20GiB,cpu=64GiB,disk=500GB": comma-separated DEVICE=SIZE pairs; devices as
/// Placement::parse() accepts them, sizes as parse_byte_size(). Errors name the bad pair.
MaxMemory parse_max_memory(const std::string& text);

/// Accelerate's get_max_memory with no budget: the free memory of every CUDA device LibTorch can
/// see, then "cpu" = available host RAM (MemAvailable of /proc/meminfo). Under a memory cgroup whose
/// limit is tighter (a container), what the cgroup leaves less kWorkingMemoryReserveBytes: going past
/// a cgroup's limit gets the process killed (core/memory_available.h).
MaxMemory get_max_memory();

/// Accelerate's get_max_memory with a budget: validates (only accelerators, mps, cpu and disk;
/// no device twice; no negative size) and sorts into device order. An empty budget means
/// "detect" (get_max_memory()).
MaxMemory get_max_memory(const MaxMemory& max_memory);

/// The accelerators this process can use: cuda:0 .. cuda:N-1 in a CUDA build on a machine with N
/// GPUs; none otherwise.
std::vector<Placement> available_accelerators();

/// Throws ferry::Error "<what> is cuda:7, but this machine has: cpu, disk, cuda:0" unless `p` is the
/// CPU, disk or an accelerator that exists here. Planning for another machine (ferry plan) may name
/// any device; running (dispatch, loading) may not.
void check_placement_available(const Placement& p, const std::string& what);

/// check_placement_available for every budget of `max_memory`.
void check_budgets_available(const MaxMemory& max_memory);

/// Bytes of `device` in `max_memory`, or -1 when it is not named.
int64_t budget_of(const MaxMemory& max_memory, const Placement& device);

/// "0=20.0 GiB, cpu=64.0 GiB" (for messages).
std::string to_string(const MaxMemory& max_memory);

}  // namespace ferry
