#include "ferry/io/weights_map.h"

#include "ferry/core/dtype.h"
#include "ferry/core/error.h"
#include "ferry/core/host_memory.h"

#include <filesystem>
#include <map>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

namespace ferry::io {
namespace fs = std::filesystem;
namespace {

uint64_t nbytes_of(c10::ScalarType dtype, const std::vector<int64_t>& shape) {
  uint64_t n = c10::elementSize(dtype);
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

// A tensor on `device` with `dtype` from a zero-copy CPU view: the view itself when nothing changes.
at::Tensor from_view(const at::Tensor& view, c10::Device device, c10::optional<c10::ScalarType> dtype) {
  const c10::ScalarType target = dtype.value_or(view.scalar_type());
  if (device.is_cpu() && target == view.scalar_type()) return view;
  if (device.is_cpu()) return copy_to_host(view, target);
  return view.to(device, target, /*non_blocking=*/false, /*copy=*/true);
}

// Where tensor `name` of an open safetensors file is stored.
FileExtent extent_in(const SafetensorsFile& file, const std::string& name) {
  const TensorEntry& t = file.entry(name);
  return FileExtent{file.path(), file.header().data_offset + t.begin, t.nbytes(), t.dtype, t.shape};
}

// Shards (or safetensors-form offload entries) mapped on first use, shared by all threads.
class FileCache {
 public:
  SafetensorsFile get(const std::string& path) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = files_.find(path);
    if (it != files_.end()) return it->second;
    SafetensorsFile file = SafetensorsFile::open(path);
    files_.emplace(path, file);
    return file;
  }

 private:
  mutable std::mutex mutex_;
  mutable std::unordered_map<std::string, SafetensorsFile> files_;
};

// ---- state dict -------------------------------------------------------------------------------

class StateDictWeightsMap final : public WeightsMap {
 public:
  explicit StateDictWeightsMap(NamedTensors sd) : sd_(std::move(sd)) {
    for (size_t i = 0; i < sd_.size(); ++i) {
      FERRY_CHECK(sd_[i].second.defined(), "state dict entry '", sd_[i].first, "' is undefined");
      FERRY_CHECK(index_.emplace(sd_[i].first, i).second, "state dict names '", sd_[i].first, "' twice");
    }
  }
  std::vector<std::string> keys() const override {
    std::vector<std::string> out;
    out.reserve(sd_.size());
    for (const auto& item : sd_) out.push_back(item.first);
    return out;
  }
  size_t size() const override { return sd_.size(); }
  bool contains(const std::string& name) const override { return index_.count(name) > 0; }
  TensorInfo info(const std::string& name) const override {
    const at::Tensor& t = get(name);
    return {t.scalar_type(), t.sizes().vec(), static_cast<uint64_t>(t.numel()) * t.element_size()};
  }
  at::Tensor load(const std::string& name, c10::Device device, c10::optional<c10::ScalarType> dtype) const override {
    const at::Tensor& t = get(name);
    const c10::ScalarType target = dtype.value_or(t.scalar_type());
    if (t.device() == device && t.scalar_type() == target) return t;  // the very object
    return t.to(device, target);
  }

 private:
  const at::Tensor& get(const std::string& name) const {
    auto it = index_.find(name);
    FERRY_CHECK(it != index_.end(), "the state dict has no tensor named '", name, "' (", sd_.size(), " tensors)");
    return sd_[it->second].second;
  }
  NamedTensors sd_;
  std::unordered_map<std::string, size_t> index_;
};

// ---- offload folder ---------------------------------------------------------------------------

class OffloadFolderWeightsMap final : public WeightsMap {
 public:
  OffloadFolderWeightsMap(std::string folder, OffloadIndex index) : folder_(std::move(folder)), index_(std::move(index)) {}

  std::vector<std::string> keys() const override { return index_.names(); }
  size_t size() const override { return index_.size(); }
  bool contains(const std::string& name) const override { return index_.contains(name); }

  TensorInfo info(const std::string& name) const override {
    const OffloadEntry& e = entry(name);
    if (!e.is_safetensors()) {
      const c10::ScalarType dtype = parse_offload_dtype_tag(e.dtype);
      return {dtype, e.shape, nbytes_of(dtype, e.shape)};
    }
    SafetensorsFile file = files_.get(safetensors_path(e));
    const TensorEntry& t = file.entry(weight_name(name, e));
    const c10::ScalarType dtype = e.dtype.empty() ? t.dtype : parse_dtype(e.dtype);
    return {dtype, t.shape, nbytes_of(dtype, t.shape)};
  }

  std::optional<FileExtent> file_extent(const std::string& name) const override {
    const OffloadEntry& e = entry(name);
    if (!e.is_safetensors()) {
      if (folder_.empty()) return std::nullopt;
      const c10::ScalarType dtype = parse_offload_dtype_tag(e.dtype);
      return FileExtent{offload_file_path(folder_, name), 0, nbytes_of(dtype, e.shape), dtype, e.shape};
    }
    SafetensorsFile file = files_.get(safetensors_path(e));
    return extent_in(file, weight_name(name, e));
  }

  at::Tensor load(const std::string& name, c10::Device device, c10::optional<c10::ScalarType> dtype) const override {
    const OffloadEntry& e = entry(name);
    if (!e.is_safetensors()) {
      FERRY_CHECK(!folder_.empty(), "offload entry '", name, "' is a .dat entry, but no offload folder was given");
      return from_view(map_offloaded_weight(offload_file_path(folder_, name), e), device, dtype);
    }
    SafetensorsFile file = files_.get(safetensors_path(e));
    at::Tensor view = file.view(weight_name(name, e));
    if (!dtype && !e.dtype.empty()) dtype = parse_dtype(e.dtype);
    return from_view(view, device, dtype);
  }

 private:
  const OffloadEntry& entry(const std::string& name) const {
    const OffloadEntry* e = index_.find(name);
    FERRY_CHECK(e != nullptr, "offload folder ", folder_.empty() ? std::string("(index only)") : folder_,
                " has no weight named '", name, "' (", index_.size(), " entries)");
    return *e;
  }
  std::string safetensors_path(const OffloadEntry& e) const {
    fs::path p(e.safetensors_file);
    std::error_code ec;
    if (p.is_relative() && !folder_.empty() && fs::exists(fs::path(folder_) / p, ec)) return (fs::path(folder_) / p).string();
    return p.string();
  }
  static const std::string& weight_name(const std::string& name, const OffloadEntry& e) {
    return e.weight_name.empty() ? name : e.weight_name;
  }

  std::string folder_;
  OffloadIndex index_;
  FileCache files_;
};

// ---- checkpoint in place ----------------------------------------------------------------------

class CheckpointWeightsMap final : public WeightsMap {
 public:
  CheckpointWeightsMap(Checkpoint ckpt, const std::vector<std::string>* names) : ckpt_(std::move(ckpt)) {
    if (names == nullptr) {
      for (const auto& t : ckpt_.tensors()) keys_.push_back(t.name);
    } else {
      for (const auto& n : *names) {
        (void)ckpt_.at(n);  // throws for a name the checkpoint lacks
        keys_.push_back(n);
      }
    }
    visible_.insert(keys_.begin(), keys_.end());
  }
  std::vector<std::string> keys() const override { return keys_; }
  size_t size() const override { return keys_.size(); }
  bool contains(const std::string& name) const override { return visible_.count(name) > 0; }
  TensorInfo info(const std::string& name) const override {
    const CheckpointTensor& t = get(name);
    return {t.dtype, t.shape, t.nbytes};
  }
  at::Tensor load(const std::string& name, c10::Device device, c10::optional<c10::ScalarType> dtype) const override {
    const CheckpointTensor& t = get(name);
    return from_view(ckpt_.shard(t.shard).view(t.stored_name), device, dtype);
  }
  std::optional<FileExtent> file_extent(const std::string& name) const override {
    const CheckpointTensor& t = get(name);
    return extent_in(ckpt_.shard(t.shard), t.stored_name);
  }

 private:
  const CheckpointTensor& get(const std::string& name) const {
    if (!visible_.count(name))
      throw Error("WeightsMap::load", detail::concat(ckpt_.source(), ": no tensor named '", name,
                                                     "' in this weights map (", keys_.size(), " tensors)"));
    return ckpt_.at(name);
  }
  Checkpoint ckpt_;  // its shards are already mapped: nothing is opened again
  std::vector<std::string> keys_;
  std::unordered_set<std::string> visible_;
};

// ---- prefixed view ----------------------------------------------------------------------------

class PrefixedWeightsMap final : public WeightsMap {
 public:
  PrefixedWeightsMap(WeightsMapPtr base, std::string prefix) : base_(std::move(base)), prefix_(std::move(prefix)) {
    FERRY_CHECK(base_ != nullptr, "the base weights map is null");
    for (const auto& k : base_->keys())
      if (k.compare(0, prefix_.size(), prefix_) == 0) keys_.push_back(k.substr(prefix_.size()));
  }
  std::vector<std::string> keys() const override { return keys_; }
  size_t size() const override { return keys_.size(); }
  bool contains(const std::string& name) const override { return base_->contains(prefix_ + name); }
  TensorInfo info(const std::string& name) const override { return base_->info(prefix_ + name); }
  at::Tensor load(const std::string& name, c10::Device device, c10::optional<c10::ScalarType> dtype) const override {
    return base_->load(prefix_ + name, device, dtype);
  }
  std::optional<FileExtent> file_extent(const std::string& name) const override {
    return base_->file_extent(prefix_ + name);
  }

 private:
  WeightsMapPtr base_;
  std::string prefix_;
  std::vector<std::string> keys_;
};

// ---- union ------------------------------------------------------------------------------------

class UnionWeightsMap final : public WeightsMap {
 public:
  explicit UnionWeightsMap(std::vector<WeightsMapPtr> maps) : maps_(std::move(maps)) {
    std::unordered_set<std::string> seen;
    for (const auto& m : maps_) {
      FERRY_CHECK(m != nullptr, "a weights map in the union is null");
      for (const auto& k : m->keys())
        if (seen.insert(k).second) keys_.push_back(k);
    }
  }
  std::vector<std::string> keys() const override { return keys_; }
  size_t size() const override { return keys_.size(); }
  bool contains(const std::string& name) const override { return owner(name) != nullptr; }
  TensorInfo info(const std::string& name) const override { return get(name).info(name); }
  at::Tensor load(const std::string& name, c10::Device device, c10::optional<c10::ScalarType> dtype) const override {
    return get(name).load(name, device, dtype);
  }
  std::optional<FileExtent> file_extent(const std::string& name) const override { return get(name).file_extent(name); }

 private:
  const WeightsMap* owner(const std::string& name) const {
    for (const auto& m : maps_)
      if (m->contains(name)) return m.get();
    return nullptr;
  }
  const WeightsMap& get(const std::string& name) const {
    const WeightsMap* m = owner(name);
    FERRY_CHECK(m != nullptr, "no weight named '", name, "' in any of the ", maps_.size(), " weights maps (",
                keys_.size(), " names)");
    return *m;
  }
  std::vector<WeightsMapPtr> maps_;
  std::vector<std::string> keys_;
};

}  // namespace

WeightsMapPtr make_state_dict_weights_map(NamedTensors state_dict) {
  return std::make_shared<const StateDictWeightsMap>(std::move(state_dict));
}

WeightsMapPtr make_offload_folder_weights_map(const std::string& folder) {
  return make_offload_folder_weights_map(folder, read_offload_index(folder));
}

WeightsMapPtr make_offload_folder_weights_map(const std::string& folder, OffloadIndex index) {
  return std::make_shared<const OffloadFolderWeightsMap>(folder, std::move(index));
}

WeightsMapPtr make_checkpoint_weights_map(Checkpoint checkpoint) {
  return std::make_shared<const CheckpointWeightsMap>(std::move(checkpoint), nullptr);
}

WeightsMapPtr make_checkpoint_weights_map(Checkpoint checkpoint, const std::vector<std::string>& names) {
  return std::make_shared<const CheckpointWeightsMap>(std::move(checkpoint), &names);
}

WeightsMapPtr make_prefixed_weights_map(WeightsMapPtr base, std::string prefix) {
  return std::make_shared<const PrefixedWeightsMap>(std::move(base), std::move(prefix));
}

WeightsMapPtr make_union_weights_map(std::vector<WeightsMapPtr> maps) {
  return std::make_shared<const UnionWeightsMap>(std::move(maps));
}

WeightsMapPtr make_offloaded_weights_loader(const NamedTensors* state_dict, const std::string& save_folder,
                                            const OffloadIndex* index) {
  FERRY_CHECK(state_dict != nullptr || !save_folder.empty() || index != nullptr,
              "need at least one of a state dict, an offload folder or an index");
  std::vector<WeightsMapPtr> maps;
  if (state_dict != nullptr) maps.push_back(make_state_dict_weights_map(*state_dict));
  if (index != nullptr) maps.push_back(make_offload_folder_weights_map(save_folder, *index));
  else if (!save_folder.empty()) maps.push_back(make_offload_folder_weights_map(save_folder));
  return make_union_weights_map(std::move(maps));
}

}  // namespace ferry::io
