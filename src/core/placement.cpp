#include "ferry/core/placement.h"

#include "ferry/core/error.h"

#include <algorithm>
#include <cctype>
#include <iterator>

namespace ferry {
namespace {

bool all_digits(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s)
    if (!std::isdigit(static_cast<unsigned char>(c))) return false;
  return true;
}

int rank(const Placement& p) {
  if (p.is_disk()) return 3;
  if (p.is_meta()) return 4;
  if (p.is_cpu()) return 2;
  if (p.device().type() == c10::kCUDA) return 0;
  return 1;
}

}  // namespace

Placement Placement::parse(const std::string& text) {
  const char* hint = "; expected \"cpu\", \"disk\", \"meta\", \"cuda\", \"cuda:N\", an accelerator index N >= 0, "
                     "or another accelerator's name (\"mps\", \"xpu:N\", ...)";
  if (text == "disk") return disk();
  if (text == "cpu") return cpu();
  if (text == "meta") return meta();
  if (text == "cuda") return Placement(c10::Device(c10::kCUDA));
  if (all_digits(text)) {
    FERRY_CHECK(text.size() <= 4, "accelerator index '", text, "' is out of range");
    return cuda(std::stoi(text));
  }
  const std::string cuda_prefix = "cuda:";
  if (text.rfind(cuda_prefix, 0) == 0) {
    std::string index = text.substr(cuda_prefix.size());
    FERRY_CHECK(all_digits(index) && index.size() <= 4, "invalid device '", text, "': '", index,
                "' is not a device index", hint);
    return cuda(std::stoi(index));
  }
  FERRY_CHECK(!(text.size() > 1 && text[0] == '-' && all_digits(text.substr(1))), "invalid device '", text,
              "': accelerator indices cannot be negative", hint);
  // Other accelerators, as PyTorch spells them ("mps", "xpu:1", "hpu"): parsed here, refused where
  // they would be used when this build cannot use them (check_placement_available).
  const std::string type = text.substr(0, text.find(':'));
  static const char* const others[] = {"mps", "xpu", "hpu", "xla", "ipu", "mtia", "npu", "privateuseone"};
  if (std::find(std::begin(others), std::end(others), type) != std::end(others)) {
    const std::string index = text.size() > type.size() ? text.substr(type.size() + 1) : "";
    FERRY_CHECK(text.size() == type.size() || (all_digits(index) && index.size() <= 4), "invalid device '", text,
                "': '", index, "' is not a device index", hint);
    try {
      return Placement(c10::Device(text));
    } catch (const c10::Error&) {
      // "npu" and other out-of-tree backends exist only once their extension registers them.
      FERRY_FAIL("device '", text, "' belongs to a PyTorch extension (e.g. torch_npu for \"npu\") that this ferry's LibTorch "
                 "does not have; ferry runs weights on \"cpu\", \"disk\" and CUDA GPUs");
    }
  }
  FERRY_FAIL("invalid device '", text, "'", hint);
}

c10::Device Placement::device() const {
  FERRY_CHECK(!disk_, "the disk is not a torch device; ask is_disk() first");
  return device_;
}

std::string Placement::str() const { return disk_ ? "disk" : device_.str(); }

std::string Placement::hf_str() const {
  if (!disk_ && device_.type() == c10::kCUDA && device_.has_index()) return std::to_string(device_.index());
  return str();
}

bool Placement::operator<(const Placement& other) const {
  int a = rank(*this), b = rank(other);
  if (a != b) return a < b;
  if (disk_ || other.disk_) return false;
  return device_.index() < other.device_.index();
}

std::ostream& operator<<(std::ostream& out, const Placement& placement) { return out << placement.str(); }

}  // namespace ferry
