#pragma once
/// \file
/// Helpers shared by the test files.

#include "ferry/core/error.h"
#include "ferry/nn/module.h"

#include <gtest/gtest.h>

#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

namespace ferry_test {

/// A fresh empty folder under the system temp dir (mkdtemp: unique even across parallel test
/// processes), removed with everything in it at scope exit. The one TempDir of the tests.
class TempDir {
 public:
  explicit TempDir(const std::string& tag = "test") {
    std::string pattern = (std::filesystem::temp_directory_path() / ("ferry_" + tag + "_XXXXXX")).string();
    const char* made = ::mkdtemp(pattern.data());
    if (made == nullptr) throw std::runtime_error("mkdtemp failed for " + pattern);
    path_ = made;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string str() const { return path_.string(); }
  /// The path of `name` inside the folder.
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  std::string operator/(const std::string& name) const { return file(name); }

 private:
  std::filesystem::path path_;
};

/// A cgroup-v1 memory cgroup with a memory limit, removed at scope exit (after its processes have
/// exited); path() is empty when this machine cannot make one (not root, no v1 memory controller).
/// A child process joins it by writing its pid to path()/cgroup.procs (shell_prefix() does that).
class MemoryCgroup {
 public:
  explicit MemoryCgroup(int64_t limit) {
    const std::filesystem::path root = "/sys/fs/cgroup/memory";
    std::error_code ec;
    if (::geteuid() != 0 || !std::filesystem::exists(root / "memory.limit_in_bytes", ec)) return;
    static int counter = 0;
    std::filesystem::path dir = root / ("ferry_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    if (!std::filesystem::create_directory(dir, ec)) return;
    std::ofstream(dir / "memory.limit_in_bytes") << limit;
    path_ = dir;
  }
  ~MemoryCgroup() {
    if (!path_.empty()) ::rmdir(path_.c_str());
  }
  MemoryCgroup(const MemoryCgroup&) = delete;
  MemoryCgroup& operator=(const MemoryCgroup&) = delete;
  const std::filesystem::path& path() const { return path_; }
  /// A shell command prefix that runs what follows inside the cgroup: "sh -c '...' sh ".
  std::string shell_prefix() const {
    return "sh -c 'echo $$ > " + (path_ / "cgroup.procs").string() + " && exec \"$@\"' sh ";
  }
  /// Times the OOM killer killed a process of the cgroup.
  int oom_kills() const {
    std::ifstream in(path_ / "memory.oom_control");
    std::string key;
    long value = 0;
    while (in >> key >> value)
      if (key == "oom_kill") return static_cast<int>(value);
    return 0;
  }

 private:
  std::filesystem::path path_;
};

/// Runs `fn`, expects a ferry::Error and returns its message ("" and a test failure otherwise).
template <class Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const ferry::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected ferry::Error, got another exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected ferry::Error, nothing was thrown";
  return "";
}

/// The VmFlags of the memory mapping that holds `address` (/proc/self/smaps), e.g. "rd mr mw me hg";
/// "hg" means MADV_HUGEPAGE was applied. Empty when no mapping holds it.
inline std::string vma_flags(const void* address) {
  std::ifstream smaps("/proc/self/smaps");
  const auto target = reinterpret_cast<uintptr_t>(address);
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    unsigned long begin = 0, end = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &begin, &end) == 2 && line.find('-') < line.find(' ')) {
      inside = begin <= target && target < end;
    } else if (inside && line.rfind("VmFlags:", 0) == 0) {
      return line.substr(8);
    }
  }
  return "";
}

/// Whether this kernel has transparent huge pages at all (MADV_HUGEPAGE is refused without them).
inline bool kernel_has_huge_pages() { return std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled").good(); }

inline bool has(const std::string& text, const std::string& needle) {
  return text.find(needle) != std::string::npos;
}

/// The names of a walk, in order.
inline std::vector<std::string> names_of(const ferry::NamedTensors& tensors) {
  std::vector<std::string> names;
  for (const auto& named : tensors) names.push_back(named.first);
  return names;
}

inline std::vector<std::string> names_of(const std::vector<std::pair<std::string, ferry::Module*>>& modules) {
  std::vector<std::string> names;
  for (const auto& named : modules) names.push_back(named.first);
  return names;
}

/// The tensor called `name` in a walk (undefined if absent).
inline at::Tensor find_named(const ferry::NamedTensors& tensors, const std::string& name) {
  for (const auto& [key, t] : tensors)
    if (key == name) return t;
  return at::Tensor();
}

}  // namespace ferry_test
