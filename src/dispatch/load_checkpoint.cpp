#include "ferry/dispatch/load_checkpoint.h"

#include "ferry/core/dtype.h"
#include "ferry/core/error.h"
#include "ferry/core/log.h"
#include "ferry/io/checkpoint.h"
#include "ferry/io/torch_checkpoint.h"
#include "ferry/nn/module_tensors.h"
#include "ferry/plan/tied_parameters.h"

#include <ATen/ATen.h>

#include <filesystem>
#include <random>
#include <unordered_map>
#include <unordered_set>

namespace ferry {
namespace fs = std::filesystem;
namespace {

bool covers(const std::string& module, const std::string& name) {
  return name == module || name.compare(0, module.size() + 1, module + ".") == 0 ||
         name.find("." + module + ".") != std::string::npos;
}

std::string join_names(const std::vector<std::string>& names, size_t limit = 20) {
  std::string out = "[";
  for (size_t i = 0; i < names.size() && i < limit; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > limit) out += ", ... (" + std::to_string(names.size() - limit) + " more)";
  return out + "]";
}

// What the model holds under `name` (parameter or buffer), for shapes and dtypes.
struct ModelTensor {
  at::Tensor tensor;
  bool is_buffer = false;
};

// A temporary folder removed at scope exit (offload_state_dict's staging area).
struct TempFolder {
  std::string path;
  ~TempFolder() {
    if (path.empty()) return;
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

}  // namespace

void load_offloaded_weights(Module& model, const io::OffloadIndex& index, const std::string& folder) {
  for (const auto& name : index.names()) {
    if (name.find("SCB") != std::string::npos) continue;
    const io::OffloadEntry& entry = index.at(name);
    at::Tensor value = entry.is_safetensors()
                           ? io::make_offload_folder_weights_map(folder, index)->load(name, c10::kCPU)
                           : io::load_offloaded_weight(io::offload_file_path(folder, name), entry);
    set_module_tensor_to_device(model, name, c10::kCPU, value);
  }
}

LoadCheckpointResult load_checkpoint_in_model(Module& model, const std::string& checkpoint,
                                              const LoadCheckpointOptions& options) {
  return load_checkpoint_in_model(model, io::Checkpoint::open(checkpoint), options);
}

LoadCheckpointResult load_checkpoint_in_model(Module& model, const io::Checkpoint& opened,
                                              const LoadCheckpointOptions& options) {
  LoadCheckpointResult result;
  const auto tied = find_tied_parameters(model);
  const DeviceMap* device_map = options.device_map ? &*options.device_map : nullptr;

  // 1. Everything that can be checked before loading: placements, shapes (the files were checked
  // when the checkpoint was opened).
  const io::Checkpoint ckpt = opened.with_name_prefix(options.name_prefix);
  const std::string& checkpoint = ckpt.source();

  std::unordered_map<std::string, ModelTensor> model_tensors;
  std::vector<std::string> model_keys;
  for (auto& [name, t] : model.state_dict()) {
    if (model_tensors.count(name)) continue;
    model_keys.push_back(name);
    model_tensors[name] = {t, false};
  }
  for (auto& [name, t] : model.named_buffers(true, false)) {
    auto it = model_tensors.find(name);
    if (it != model_tensors.end()) it->second.is_buffer = true;
    else model_tensors[name] = {t, true};  // non-persistent: loadable if the checkpoint has it
  }

  bool any_disk = false;
  std::unordered_map<std::string, Placement> placement_of;
  for (const auto& t : ckpt.tensors()) {
    if (t.name.find("SCB") != std::string::npos) continue;
    auto mt = model_tensors.find(t.name);
    if (mt == model_tensors.end()) {
      result.unexpected_keys.push_back(t.name);
      continue;
    }
    const at::Tensor& current = mt->second.tensor;
    FERRY_CHECK(!current.defined() || current.sizes() == at::IntArrayRef(t.shape), "tensor '", t.name,
                "' has shape ", shape_str(t.shape), " in ", t.file, " but the model expects ",
                shape_str(current.sizes()), ". Is this checkpoint for another model or configuration?");
    // A floating weight stored as integers (or complex) would be value-cast: numbers silently wrong.
    FERRY_CHECK(!current.defined() || !is_floating_dtype(current.scalar_type()) ||
                    (is_floating_dtype(t.dtype) && !c10::isComplexType(t.dtype)),
                "tensor '", t.name, "' is stored as ", dtype_name(t.dtype), " in ", t.file, ", but the model's is ",
                dtype_name(current.scalar_type()), ": ferry does not convert integer or complex data to floating point "
                "(no quantisation format is supported yet)");
    Placement p;
    if (device_map != nullptr) {
      auto found = device_map->placement_of(t.name);
      FERRY_CHECK(found.has_value(), t.name, " doesn't have any device set: no key of the device map (",
                  device_map->size(), " entries) is it or one of its dotted prefixes");
      p = *found;
    } else {
      p = (!current.defined() || current.is_meta()) ? Placement::cpu() : Placement(current.device());
    }
    if (p.is_disk()) any_disk = true;
    placement_of.emplace(t.name, p);
  }
  // A .bin cannot be read in place: its disk-placed weights are written to offload_folder, as
  // Accelerate writes every non-safetensors checkpoint's.
  const bool torch_format = ckpt.format() == io::CheckpointFormat::torch;
  FERRY_CHECK(!torch_format || !any_disk || !options.offload_folder.empty(), "the device map places weights on disk, "
              "but ", checkpoint, " is a PyTorch .bin checkpoint, which cannot be read in place (only safetensors "
              "shards are mapped): give an offload_folder to write them to, as Accelerate requires, or convert the "
              "checkpoint once with ferry convert to read them in place");
  const bool disk_in_place = options.disk_in_place && !torch_format;
  FERRY_CHECK(disk_in_place || !any_disk || !options.offload_folder.empty(),
              "the device map places weights on disk, but no offload_folder was given to write them to "
              "(or keep disk_in_place = true to read them from the checkpoint)");
  if (!result.unexpected_keys.empty() && options.strict)
    FERRY_FAIL("Error(s) in loading the checkpoint ", checkpoint, " into ", model.class_name(), ": unexpected keys ",
               join_names(result.unexpected_keys));

  // Missing: model keys neither in the checkpoint nor tied to a name that is.
  {
    std::unordered_set<std::string> filled;
    for (const auto& k : model_keys)
      if (ckpt.contains(k)) filled.insert(k);
    for (const auto& group : tied) {
      bool any = false;
      for (const auto& n : group) any = any || filled.count(n);
      if (any) filled.insert(group.begin(), group.end());
    }
    for (const auto& k : model_keys)
      if (!filled.count(k)) result.missing_keys.push_back(k);
  }
  if (!result.missing_keys.empty() && options.strict)
    FERRY_FAIL("Error(s) in loading the checkpoint ", checkpoint, " into ", model.class_name(), ": missing keys ",
               join_names(result.missing_keys));

  if (!disk_in_place && any_disk) {
    std::error_code ec;
    fs::create_directories(options.offload_folder, ec);
    FERRY_CHECK(!ec, "cannot create offload folder ", options.offload_folder, ": ", ec.message());
  }
  TempFolder staging;
  io::OffloadIndex staging_index;
  if (options.offload_state_dict) {
    std::random_device rd;
    staging.path = (fs::temp_directory_path() / ("ferry_state_dict_" + std::to_string(rd()))).string();
    std::error_code ec;
    fs::create_directories(staging.path, ec);
    FERRY_CHECK(!ec, "cannot create the staging folder ", staging.path, ": ", ec.message());
  }

  auto target_dtype = [&](const io::CheckpointTensor& t, const at::Tensor& current) -> c10::ScalarType {
    if (options.dtype && is_floating_dtype(t.dtype)) {
      if (*options.dtype == at::kHalf)
        for (const auto& keep : options.keep_in_fp32_modules)
          if (covers(keep, t.name)) return at::kFloat;
      return *options.dtype;
    }
    return current.defined() ? current.scalar_type() : t.dtype;
  };

  // 2. Stream shard by shard.
  LoadProgress progress;
  progress.shards = ckpt.files().size();
  if (options.on_progress) {
    for (const auto& t : ckpt.tensors())
      if (placement_of.count(t.name)) {
        progress.bytes_total += t.nbytes;
        ++progress.tensors_total;
      }
    options.on_progress(progress);
  }
  auto report = [&](uint64_t bytes) {
    progress.bytes_done += bytes;
    ++progress.tensors_done;
    if (options.on_progress) options.on_progress(progress);
  };
  for (size_t shard_index = 0; shard_index < ckpt.files().size(); ++shard_index) {
    progress.shard = shard_index + 1;
    // A safetensors shard is mapped and read in place; a .bin shard is loaded whole into memory
    // (its tensors are zip records described by a pickle) and freed once its tensors are placed.
    const io::SafetensorsFile* shard = torch_format ? nullptr : &ckpt.shard(shard_index);
    io::NamedTensors loaded;
    std::unordered_map<std::string_view, const at::Tensor*> loaded_by_name;
    std::unordered_map<const void*, int> storage_users;  // storage -> tensors of the shard viewing it
    if (shard != nullptr) {
      shard->mapping()->advise_sequential(0, shard->mapping()->size());  // read once, front to back
    } else {
      loaded = io::read_torch_state_dict(ckpt.files()[shard_index]);
      for (const auto& [name, tensor] : loaded) {
        loaded_by_name.emplace(name, &tensor);
        ++storage_users[tensor.storage().unsafeGetStorageImpl()];
      }
    }
    // The stored tensor, zero-copy: a view of the mapping, or the loaded .bin tensor.
    auto stored = [&](const io::CheckpointTensor& t) -> at::Tensor {
      if (shard != nullptr) return shard->view(t.stored_name);
      auto it = loaded_by_name.find(t.stored_name);
      FERRY_CHECK(it != loaded_by_name.end(), t.file, " no longer holds tensor '", t.stored_name,
                  "' that its pickle listed when the checkpoint was opened: was the file replaced?");
      return *it->second;
    };
    // A copy the model can own: loaded .bin tensors that share their storage (tied weights saved
    // once) or view part of one are copied, so that no two slots alias memory unasked.
    auto owned = [&](const at::Tensor& t) -> at::Tensor {
      const at::StorageImpl* s = t.storage().unsafeGetStorageImpl();
      const bool alone = storage_users[s] == 1 && t.storage_offset() == 0 &&
                         t.storage().nbytes() == static_cast<size_t>(t.numel()) * t.element_size();
      return alone ? t : t.clone();
    };
    auto done_with = [&](const io::CheckpointTensor& t) {
      if (shard != nullptr) shard->mapping()->advise_dontneed(static_cast<size_t>(t.offset), t.nbytes);
    };
    for (const io::CheckpointTensor& t : ckpt.tensors_in(shard_index)) {  // in file order
      auto placed = placement_of.find(t.name);
      if (placed == placement_of.end()) continue;  // unexpected or SCB
      const ModelTensor& mt = model_tensors.at(t.name);
      const Placement& p = placed->second;
      const c10::ScalarType dtype = target_dtype(t, mt.tensor);

      if (p.is_disk() && (options.offload_buffers || !mt.is_buffer)) {
        set_module_tensor_to_device(model, t.name, c10::kMeta, c10::nullopt, dtype);
        result.disk_keys.push_back(t.name);
        if (!disk_in_place) {
          // As Accelerate: the .dat keeps the checkpoint dtype; the module's meta tensor has `dtype`.
          io::offload_weight(stored(t), t.name, options.offload_folder, &result.offload_index);
          done_with(t);
        }
        report(t.nbytes);
        continue;
      }
      if (p.is_device() && p.is_cpu() && options.offload_state_dict) {
        set_module_tensor_to_device(model, t.name, c10::kMeta, c10::nullopt, dtype);
        io::offload_weight(stored(t), t.name, staging.path, &staging_index);
        done_with(t);
        report(t.nbytes);
        continue;
      }
      // A device (disk buffers without offload_buffers land on the CPU). The model gets its own copy,
      // never a view of the mapping, so that its tensors stay writable and the shard can be unmapped.
      const c10::Device device = p.is_disk() ? c10::Device(c10::kCPU) : p.device();
      at::Tensor value;
      if (shard == nullptr) value = device.is_cpu() && stored(t).scalar_type() == dtype ? owned(stored(t)) : stored(t);
      else value = device.is_cpu() ? shard->load(t.stored_name, c10::kCPU, dtype) : shard->view(t.stored_name);
      set_module_tensor_to_device(model, t.name, device, value, dtype);
      done_with(t);
      result.loaded_bytes += t.nbytes;
      report(t.nbytes);
    }
  }

  // 3. Report, index, staged CPU weights, ties.
  if (!result.unexpected_keys.empty())
    log_warning(detail::concat("Some weights of the model checkpoint at ", checkpoint,
                               " were not used when initializing ", model.class_name(), ": ",
                               join_names(result.unexpected_keys)));
  if (!result.missing_keys.empty())
    log_warning(detail::concat("Some weights of ", model.class_name(), " were not initialized from the model checkpoint at ",
                               checkpoint, ": ", join_names(result.missing_keys)));
  if (!result.disk_keys.empty()) {
    if (disk_in_place) {
      result.disk_weights = io::make_checkpoint_weights_map(ckpt, result.disk_keys);
    } else {
      io::save_offload_index(result.offload_index, options.offload_folder);
      result.disk_weights = io::make_offload_folder_weights_map(options.offload_folder);
    }
  }
  if (!staging_index.empty()) load_offloaded_weights(model, staging_index, staging.path);
  retie_parameters(model, tied);
  return result;
}

}  // namespace ferry
