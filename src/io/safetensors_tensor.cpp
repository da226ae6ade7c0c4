// The tensor half of safetensors.h: views and copies of stored tensors, and the writer. Kept apart
// from the header reader (safetensors.cpp), which needs no LibTorch kernels, so that `ferry plan`
// and `ferry inspect` link without them and start in milliseconds.
#include "ferry/io/safetensors.h"

#include "ferry/core/error.h"
#include "ferry/core/host_memory.h"
#include "ferry/io/atomic_file.h"

#include <ATen/Functions.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <set>

namespace ferry::io {

at::Tensor SafetensorsFile::view(const std::string& name) const {
  const TensorEntry& e = entry(name);
  auto [ptr, nbytes] = bytes(name);
  const auto options = at::TensorOptions().dtype(e.dtype).device(c10::kCPU);
  if (nbytes == 0) return at::empty(e.shape, options);
  if (e.dtype == c10::ScalarType::Bool) {
    // A bool byte other than 0 or 1 is undefined behaviour in every kernel that reads it.
    for (size_t i = 0; i < nbytes; ++i)
      FERRY_CHECK(ptr[i] <= 1, path(), ": tensor '", name, "' is BOOL but byte ", i, " holds ", int(ptr[i]),
                  " (a bool must be 0 or 1). Perhaps a corrupt file?");
  }
  if (reinterpret_cast<uintptr_t>(ptr) % c10::elementSize(e.dtype) != 0) {
    at::Tensor copy = at::empty(e.shape, options);
    std::memcpy(copy.data_ptr(), ptr, nbytes);
    return copy;
  }
  std::shared_ptr<const MappedFile> keep = map_;
  // from_blob needs a non-const pointer; the pages are PROT_READ, see the header's note on view().
  return at::from_blob(const_cast<uint8_t*>(ptr), e.shape, [keep](void*) mutable { keep.reset(); }, options);
}

at::Tensor SafetensorsFile::load(const std::string& name, c10::Device device,
                                 c10::optional<c10::ScalarType> dtype) const {
  const TensorEntry& e = entry(name);
  map_->advise_willneed(header_->data_offset + e.begin, e.nbytes());
  at::Tensor v = view(name);
  if (device.is_cpu()) return copy_to_host(v, dtype.value_or(e.dtype));  // huge pages where possible
  return v.to(device, dtype.value_or(e.dtype), /*non_blocking=*/false, /*copy=*/true);
}

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::vector<const std::pair<std::string, at::Tensor>*> order;
  std::set<std::string> seen;
  for (const auto& item : tensors) {
    FERRY_CHECK(item.first != "__metadata__", path, ": '__metadata__' cannot be a tensor name");
    FERRY_CHECK(seen.insert(item.first).second, path, ": tensor '", item.first, "' is given twice");
    FERRY_CHECK(item.second.defined(), path, ": tensor '", item.first, "' is undefined");
    FERRY_CHECK(item.second.device().type() != c10::kMeta, path, ": tensor '", item.first,
                "' is on the meta device and has no data to save");
    order.push_back(&item);
  }
  // The Hugging Face library's order: larger elements first (keeps every tensor aligned), then name.
  std::sort(order.begin(), order.end(), [](const auto* a, const auto* b) {
    size_t sa = a->second.element_size(), sb = b->second.element_size();
    return sa != sb ? sa > sb : a->first < b->first;
  });
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = meta;
  }
  uint64_t offset = 0;
  for (const auto* item : order) {
    const at::Tensor& t = item->second;
    const uint64_t nbytes = static_cast<uint64_t>(t.numel()) * t.element_size();
    header[item->first] = {{"dtype", safetensors_dtype_code(t.scalar_type())},
                           {"shape", t.sizes().vec()},
                           {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string json_text = header.dump();
  json_text.append((8 - json_text.size() % 8) % 8, ' ');
  const uint64_t n = json_text.size();

  AtomicFileWriter writer(path);
  writer.write(&n, 8);
  writer.write(json_text.data(), json_text.size());
  for (const auto* item : order) {
    at::Tensor cpu = item->second.detach().to(c10::kCPU).contiguous();
    writer.write(cpu.data_ptr(), static_cast<size_t>(cpu.numel()) * cpu.element_size());
  }
  writer.commit();
}

}  // namespace ferry::io
