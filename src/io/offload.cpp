// The tensor half of offload.h: writing weights to .dat files and reading them back as tensors.
#include "ferry/io/offload.h"

#include "ferry/core/error.h"
#include "ferry/io/atomic_file.h"

#include <ATen/Functions.h>

#include <cstring>
#include <filesystem>

namespace ferry::io {
namespace fs = std::filesystem;

OffloadEntry offload_weight(const at::Tensor& tensor, const std::string& name, const std::string& folder,
                            OffloadIndex* index) {
  FERRY_CHECK(tensor.defined(), "tensor '", name, "' is undefined");
  FERRY_CHECK(tensor.device().type() != c10::kMeta, "tensor '", name,
              "' is on the meta device: there are no values to offload");
  OffloadEntry entry;
  entry.dtype = offload_dtype_tag(tensor.scalar_type());  // bf16 -> "bfloat16", bytes are its int16 bits
  entry.shape = tensor.sizes().vec();
  const std::string path = offload_file_path(folder, name);
  at::Tensor cpu = tensor.detach().to(c10::kCPU).contiguous();
  AtomicFileWriter writer(path, /*sync=*/false);  // save_offload_index syncs before the index
  writer.write(cpu.data_ptr(), static_cast<size_t>(cpu.numel()) * cpu.element_size());
  writer.commit();
  if (index != nullptr) index->set(name, entry);
  return entry;
}

at::Tensor map_offloaded_weight(const std::string& file, const OffloadEntry& entry) {
  auto [map, dtype] = map_offloaded_bytes(file, entry, "map_offloaded_weight");
  const auto options = at::TensorOptions().dtype(dtype).device(c10::kCPU);
  if (map->size() == 0) return at::empty(entry.shape, options);
  std::shared_ptr<const MappedFile> keep = map;
  // Accelerate stores a 0-dim tensor as a 1-element 1-D array.
  const std::vector<int64_t> stored_shape = entry.shape.empty() ? std::vector<int64_t>{1} : entry.shape;
  at::Tensor t = at::from_blob(const_cast<uint8_t*>(map->data()), stored_shape,
                               [keep](void*) mutable { keep.reset(); }, options);
  return entry.shape.empty() ? t.reshape({}) : t;
}

at::Tensor load_offloaded_weight(const std::string& file, const OffloadEntry& entry) {
  auto [map, dtype] = map_offloaded_bytes(file, entry, "load_offloaded_weight");
  at::Tensor out = at::empty(entry.shape, at::TensorOptions().dtype(dtype).device(c10::kCPU));
  if (map->size() > 0) std::memcpy(out.data_ptr(), map->data(), map->size());
  return out;
}

OffloadIndex offload_state_dict(const std::string& folder, const NamedTensors& state_dict) {
  std::error_code ec;
  fs::create_directories(folder, ec);
  FERRY_CHECK(!ec, "cannot create offload folder ", folder, ": ", ec.message());
  OffloadIndex index;
  for (const auto& [name, tensor] : state_dict) offload_weight(tensor, name, folder, &index);
  save_offload_index(index, folder);
  return index;
}

}  // namespace ferry::io
