#include "ferry/plan/max_memory.h"

#include "ferry/core/byte_size.h"
#include "ferry/core/error.h"
#include "ferry/core/memory_available.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#if defined(FERRY_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace ferry {
namespace {

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\n");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t\n");
  return s.substr(b, e - b + 1);
}

bool is_budget_device(const Placement& p) {
  if (p.is_disk() || p.is_cpu()) return true;
  if (p.is_meta()) return false;
  const c10::Device d = p.device();
  if (d.type() == c10::kMPS) return true;
  return d.type() == c10::kCUDA && d.has_index();
}

}  // namespace

MaxMemory parse_max_memory(const std::string& text) {
  MaxMemory out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    item = trim(item);
    if (item.empty()) continue;
    size_t eq = item.find('=');
    FERRY_CHECK(eq != std::string::npos, "max memory entry '", item,
                "' has no '='; expected DEVICE=SIZE pairs such as \"0=20GiB,cpu=64GiB\"");
    std::string device = trim(item.substr(0, eq)), size = trim(item.substr(eq + 1));
    Placement placement;
    try {
      placement = Placement::parse(device);
    } catch (const Error& e) {
      FERRY_FAIL("max memory entry '", item, "': unknown device '", device, "': ", e.what());
    }
    int64_t bytes = 0;
    try {
      bytes = parse_byte_size(size);
    } catch (const Error& e) {
      FERRY_FAIL("max memory entry '", item, "': bad size '", size, "': ", e.what());
    }
    out.push_back(DeviceBudget{placement, bytes});
  }
  FERRY_CHECK(!out.empty(), "empty max memory '", text, "'; expected DEVICE=SIZE pairs such as \"0=20GiB,cpu=64GiB\"");
  return get_max_memory(out);
}

std::vector<Placement> available_accelerators() {
  std::vector<Placement> out;
#if defined(FERRY_WITH_CUDA)
  int count = 0;
  if (cudaGetDeviceCount(&count) == cudaSuccess)
    for (int i = 0; i < count; ++i) out.push_back(Placement::cuda(i));
#endif
  return out;
}

void check_placement_available(const Placement& p, const std::string& what) {
  if (p.is_disk() || p.is_cpu()) return;
  FERRY_CHECK(!p.is_meta(), what,
              " is 'meta', which holds no data: place weights on a GPU, 'cpu' or 'disk'");
  const auto accelerators = available_accelerators();
  for (const auto& a : accelerators)
    if (a == p) return;
  std::string here = "cpu, disk";
  for (const auto& a : accelerators) here += ", " + a.str();
  FERRY_CHECK(p.device().type() == c10::kCUDA, what, " is ", p.str(), ": ferry runs weights on the CPU, disk and CUDA GPUs, "
              "not on ", c10::DeviceTypeName(p.device().type(), /*lower_case=*/true), " devices; devices here: ", here);
  FERRY_FAIL(what, " is ", p.str(), ", but ",
#if defined(FERRY_WITH_CUDA)
             "this machine has: ", here,
#else
             "this build of ferry has no GPU support (LibTorch without CUDA); devices here: ", here,
#endif
             ". Use one of those, or plan for another machine with `ferry plan`");
}

void check_budgets_available(const MaxMemory& max_memory) {
  for (const auto& b : max_memory) check_placement_available(b.device, "a max_memory budget's device");
}

MaxMemory get_max_memory() {
  MaxMemory out;
#if defined(FERRY_WITH_CUDA)
  int count = 0;
  if (cudaGetDeviceCount(&count) == cudaSuccess) {
    for (int i = 0; i < count; ++i) {
      size_t free_bytes = 0, total_bytes = 0;
      if (cudaSetDevice(i) != cudaSuccess) continue;
      if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) continue;  // Accelerate skips on error
      out.push_back(DeviceBudget{Placement::cuda(i), static_cast<int64_t>(free_bytes)});
    }
  }
#endif
  // Under a cgroup limit tighter than the machine, the process is killed, not slowed, when it goes
  // past it: the budget leaves room for the work of running the model (and for streaming any
  // weights placed on disk). Without one, MemAvailable, as Accelerate takes it.
  const HostMemory memory = host_memory();
  int64_t cpu = memory.available;
  if (memory.has_cgroup_limit() && memory.available < memory.mem_available)
    cpu = std::max<int64_t>(cpu - kWorkingMemoryReserveBytes, 0);
  out.push_back(DeviceBudget{Placement::cpu(), cpu});
  return out;
}

MaxMemory get_max_memory(const MaxMemory& max_memory) {
  if (max_memory.empty()) return get_max_memory();
  MaxMemory out = max_memory;
  for (size_t i = 0; i < out.size(); ++i) {
    const auto& b = out[i];
    FERRY_CHECK(is_budget_device(b.device), "Device ", b.device.str(),
                " is not recognized, available devices are integers (for GPUs), 'mps', 'cpu' and 'disk'");
    FERRY_CHECK(b.bytes >= 0, "the budget of ", b.device.str(), " is negative (", b.bytes, " bytes)");
    for (size_t j = 0; j < i; ++j)
      FERRY_CHECK(out[j].device != b.device, "device ", b.device.str(), " has two budgets");
  }
  std::stable_sort(out.begin(), out.end(), [](const DeviceBudget& a, const DeviceBudget& b) { return a.device < b.device; });
  return out;
}

int64_t budget_of(const MaxMemory& max_memory, const Placement& device) {
  for (const auto& b : max_memory)
    if (b.device == device) return b.bytes;
  return -1;
}

std::string to_string(const MaxMemory& max_memory) {
  std::string out;
  for (const auto& b : max_memory) out += (out.empty() ? "" : ", ") + b.device.hf_str() + "=" + format_bytes(static_cast<double>(b.bytes));
  return out;
}

}  // namespace ferry
