#pragma once
/// \file
/// Where a tensor lives: a torch device (cpu, cuda:N, meta) or disk. Accelerate writes these as
/// `0`, `"cuda:1"`, `"cpu"`, `"disk"`, `"meta"`; an integer means an accelerator ordinal.
///
///     Placement p = Placement::parse("cuda:1");   // p.is_device(), p.device() == cuda:1
///     Placement::parse("1") == Placement::cuda(1);
///     Placement::disk().str()                      // "disk"
///     Placement::cuda(0).hf_str()                  // "0"   (hf_device_map spelling)

#include <c10/core/Device.h>

#include <cstddef>
#include <functional>
#include <ostream>
#include <string>

namespace ferry {

/// A torch device or the disk. A small value type: comparable, hashable, printable.
class Placement {
 public:
  /// The CPU.
  Placement() : device_(c10::kCPU) {}
  /// A torch device.
  Placement(c10::Device device) : device_(device) {}  // NOLINT: implicit on purpose

  static Placement cpu() { return Placement(c10::Device(c10::kCPU)); }
  static Placement meta() { return Placement(c10::Device(c10::kMeta)); }
  static Placement cuda(int index) { return Placement(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index))); }
  static Placement disk() {
    Placement p;
    p.disk_ = true;
    return p;
  }

  /// Parses "cpu", "disk", "meta", "cuda", "cuda:1", "mps" or an accelerator ordinal ("0", "1").
  /// Throws ferry::Error for anything else (a negative ordinal, "gpu", "cuda:x").
  static Placement parse(const std::string& text);

  bool is_disk() const { return disk_; }
  bool is_device() const { return !disk_; }
  bool is_cpu() const { return !disk_ && device_.is_cpu(); }
  bool is_meta() const { return !disk_ && device_.type() == c10::kMeta; }
  /// True for an accelerator (cuda, mps, ...): anything that is neither cpu, meta nor disk.
  bool is_accelerator() const { return !disk_ && !device_.is_cpu() && device_.type() != c10::kMeta; }

  /// The torch device; throws ferry::Error for disk.
  c10::Device device() const;

  /// "cpu", "cuda:1", "meta", "disk" ("cuda" without an index for an index-less cuda device).
  std::string str() const;
  /// hf_device_map spelling: "0" for cuda:0, otherwise str().
  std::string hf_str() const;

  bool operator==(const Placement& other) const {
    return disk_ == other.disk_ && (disk_ || device_ == other.device_);
  }
  bool operator!=(const Placement& other) const { return !(*this == other); }
  /// A total order: accelerators by ordinal, then mps, cpu, disk, meta (Accelerate's device order).
  bool operator<(const Placement& other) const;

 private:
  c10::Device device_;
  bool disk_ = false;
};

std::ostream& operator<<(std::ostream& out, const Placement& placement);

}  // namespace ferry

template <>
struct std::hash<ferry::Placement> {
  size_t operator()(const ferry::Placement& p) const noexcept {
    if (p.is_disk()) return 0x9e3779b9u;
    return std::hash<c10::Device>()(p.device());
  }
};
