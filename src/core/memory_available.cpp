#include "ferry/core/memory_available.h"

#include "ferry/core/byte_size.h"
#include "ferry/core/error.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

namespace ferry {
namespace fs = std::filesystem;
namespace {

// Limits at or above this are "no limit" (cgroup v1 writes PAGE_COUNTER_MAX rounded to pages).
constexpr int64_t kNoLimit = int64_t{1} << 60;

int64_t read_mem_available() {
  std::ifstream in("/proc/meminfo");
  std::string key, unit;
  int64_t value = 0;
  while (in >> key >> value) {
    std::getline(in, unit);
    if (key == "MemAvailable:") return value * 1024;
  }
  FERRY_FAIL("cannot read MemAvailable from /proc/meminfo; pass max_memory explicitly (e.g. --max-memory cpu=64GiB)");
}

// "key value" lines (memory.stat).
std::map<std::string, int64_t> read_stat(const fs::path& file) {
  std::map<std::string, int64_t> out;
  std::ifstream in(file);
  std::string key;
  int64_t value = 0;
  while (in >> key >> value) out[key] = value;
  return out;
}

// One number from a file; -1 when missing, "max" or past kNoLimit.
int64_t read_number(const fs::path& file) {
  std::ifstream in(file);
  std::string text;
  if (!(in >> text) || text == "max") return -1;
  try {
    const long long v = std::stoll(text);
    return v >= kNoLimit ? -1 : static_cast<int64_t>(v);
  } catch (const std::exception&) {
    return -1;
  }
}

// The folder of this process's cgroup in `hierarchy` ("memory" for v1, "" for v2), if mounted here.
fs::path own_cgroup(const fs::path& root, const std::string& hierarchy) {
  std::ifstream in("/proc/self/cgroup");
  std::string line;
  while (std::getline(in, line)) {
    // "4:memory:/a/b" (v1) or "0::/a/b" (v2).
    const auto first = line.find(':'), second = line.find(':', first + 1);
    if (first == std::string::npos || second == std::string::npos) continue;
    std::string controllers = line.substr(first + 1, second - first - 1);
    const bool match = hierarchy.empty() ? controllers.empty()
                                         : ("," + controllers + ",").find("," + hierarchy + ",") != std::string::npos;
    if (!match) continue;
    fs::path candidate = root / fs::path(line.substr(second + 1)).relative_path();
    std::error_code ec;
    // Inside a container the path names the host's hierarchy; the mount is the container's own.
    return fs::is_directory(candidate, ec) ? candidate : root;
  }
  return {};
}

void read_cgroup(HostMemory& m) {
  std::error_code ec;
  const fs::path v1_root = "/sys/fs/cgroup/memory";
  if (fs::exists(v1_root / "memory.stat", ec)) {
    fs::path dir = own_cgroup(v1_root, "memory");
    if (dir.empty()) return;
    auto stat = read_stat(dir / "memory.stat");
    int64_t limit = stat.count("hierarchical_memory_limit") ? stat["hierarchical_memory_limit"] : -1;
    if (limit < 0 || limit >= kNoLimit) limit = read_number(dir / "memory.limit_in_bytes");
    if (limit < 0) return;
    const int64_t usage = std::max<int64_t>(read_number(dir / "memory.usage_in_bytes"), 0);
    const int64_t file = stat["total_active_file"] + stat["total_inactive_file"];
    m.cgroup_limit = limit;
    m.cgroup_used = std::max<int64_t>(usage - file, 0);
    m.cgroup_path = dir.string();
    return;
  }
  const fs::path v2_root = "/sys/fs/cgroup";
  if (!fs::exists(v2_root / "cgroup.controllers", ec)) return;
  // v2: the tightest memory.max from this cgroup up to the root.
  fs::path dir = own_cgroup(v2_root, "");
  if (dir.empty()) return;
  int64_t limit = -1;
  for (fs::path d = dir; d.string().size() >= v2_root.string().size(); d = d.parent_path()) {
    const int64_t l = read_number(d / "memory.max");
    if (l >= 0 && (limit < 0 || l < limit)) limit = l;
    if (d == v2_root || d == d.parent_path()) break;
  }
  if (limit < 0) return;
  auto stat = read_stat(dir / "memory.stat");
  const int64_t usage = std::max<int64_t>(read_number(dir / "memory.current"), 0);
  m.cgroup_limit = limit;
  m.cgroup_used = std::max<int64_t>(usage - stat["file"], 0);
  m.cgroup_path = dir.string();
}

}  // namespace

std::string HostMemory::describe() const {
  std::ostringstream out;
  out << format_bytes(static_cast<double>(available)) << " available";
  if (has_cgroup_limit())
    out << " (cgroup limit " << format_bytes(static_cast<double>(cgroup_limit)) << ", "
        << format_bytes(static_cast<double>(cgroup_used)) << " used, at " << cgroup_path << "; MemAvailable "
        << format_bytes(static_cast<double>(mem_available)) << ")";
  else
    out << " (MemAvailable)";
  return out.str();
}

HostMemory host_memory() {
  HostMemory m;
  m.mem_available = read_mem_available();
  m.available = m.mem_available;
  read_cgroup(m);
  if (m.has_cgroup_limit()) m.available = std::min(m.available, std::max<int64_t>(m.cgroup_limit - m.cgroup_used, 0));
  return m;
}

}  // namespace ferry
