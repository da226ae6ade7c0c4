#include "ferry/hooks/align_devices_hook.h"

#include "ferry/core/error.h"
#include "ferry/hooks/send_to_device.h"
#include "ferry/hooks/weight_streamer.h"
#include "ferry/nn/module_tensors.h"

#include <ATen/ATen.h>

namespace ferry {

std::vector<std::pair<std::string, std::shared_ptr<TensorSlot>>> module_tensor_slots(Module& module,
                                                                                      bool include_buffers,
                                                                                      bool recurse,
                                                                                      bool skip_non_persistent) {
  std::vector<std::pair<std::string, std::shared_ptr<TensorSlot>>> out;
  std::vector<std::pair<std::string, Module*>> modules;
  if (recurse) modules = module.named_modules();
  else modules.emplace_back("", &module);
  for (const auto& [prefix, m] : modules) {
    for (const auto& [name, slot] : m->parameter_slots())
      if (slot->tensor.defined()) out.emplace_back(join_name(prefix, name), slot);
  }
  if (include_buffers) {
    for (auto& named : module_buffer_slots(module, recurse))
      if (!(skip_non_persistent && !named.second->persistent)) out.push_back(std::move(named));
  }
  return out;
}

std::vector<std::pair<std::string, std::shared_ptr<TensorSlot>>> module_buffer_slots(Module& module, bool recurse) {
  std::vector<std::pair<std::string, std::shared_ptr<TensorSlot>>> out;
  std::vector<std::pair<std::string, Module*>> modules;
  if (recurse) modules = module.named_modules();
  else modules.emplace_back("", &module);
  for (const auto& [prefix, m] : modules)
    for (const auto& [name, slot] : m->buffer_slots())
      if (slot->tensor.defined()) out.emplace_back(join_name(prefix, name), slot);
  return out;
}

AlignDevicesHook::AlignDevicesHook(AlignDevicesOptions options) : options_(std::move(options)) {
  // Meta "execution" means nothing is materialised: sharing tied tensors makes no sense there.
  if (options_.execution_device && options_.execution_device->type() == c10::kMeta) options_.tied_cache = nullptr;
}

AlignDevicesHook::~AlignDevicesHook() { unregister_streamed(); }

bool AlignDevicesHook::streamed() const { return options_.streamer && streamed_ != StreamedModuleId::none; }

void AlignDevicesHook::unregister_streamed() {
  if (!streamed()) return;
  options_.streamer->remove_module(streamed_);
  streamed_ = StreamedModuleId::none;
}

void AlignDevicesHook::set_execution_device(std::optional<c10::Device> device) {
  options_.execution_device = device;
  if (streamed()) options_.streamer->set_device(streamed_, device.value_or(c10::Device(c10::kCPU)));
}

void AlignDevicesHook::init_hook(Module& module) {
  const bool recurse = options_.place_submodules;
  if (!options_.offload) {
    if (!options_.execution_device) return;
    const c10::Device device = *options_.execution_device;
    for (auto& [name, slot] : module_tensor_slots(module, /*include_buffers=*/true, recurse, false)) {
      if (slot->tensor.device() == device) continue;
      FERRY_CHECK(!slot->tensor.is_meta(), "'", name, "' of a ", module.class_name(),
                  " is on the meta device but its module is not offloaded; load its weights before "
                  "placing it on ",
                  device);
      std::optional<int> group;
      if (options_.tied_cache) group = options_.tied_cache->group_of(slot->tensor);
      at::Tensor placed = group ? options_.tied_cache->find(*group, device) : at::Tensor();
      if (!placed.defined()) {
        placed = slot->tensor.to(device);
        if (group) placed = options_.tied_cache->put(*group, device, placed);
      }
      slot->tensor = placed;
    }
    return;
  }

  if (!offloaded_.empty() || loaded_) return;  // re-initialised (append): the state is already set up
  original_devices_.clear();
  for (auto& [name, slot] : module_tensor_slots(module, true, recurse, false))
    original_devices_.emplace_back(name, slot->tensor.device());

  auto slots = module_tensor_slots(module, options_.offload_buffers, recurse, /*skip_non_persistent=*/true);
  if (!options_.weights_map) {
    io::NamedTensors snapshot;
    for (auto& [name, slot] : slots) {
      FERRY_CHECK(!slot->tensor.is_meta(), "'", name, "' of a ", module.class_name(),
                  " is on the meta device and no weights map was given to offload it from");
      snapshot.emplace_back(name, slot->tensor.to(c10::kCPU));
    }
    options_.weights_map = io::make_state_dict_weights_map(std::move(snapshot));
  }
  offloaded_bytes_ = 0;
  for (auto& [name, slot] : slots) {
    FERRY_CHECK(options_.weights_map->contains(name), "no weights for '", name, "' of a ", module.class_name(),
                ": the weights map of this module (", options_.weights_map->keys().size(),
                " tensors) does not hold it; check the checkpoint or offload folder");
    io::TensorInfo info = options_.weights_map->info(name);
    const at::Tensor& current = slot->tensor;
    FERRY_CHECK(at::IntArrayRef(info.shape) == current.sizes(), "the stored '", name, "' has shape ",
                shape_str(info.shape), " but the ", module.class_name(), " expects ", shape_str(current.sizes()));
    OffloadedTensor t;
    t.name = name;
    t.slot = slot;
    if (options_.tied_cache) t.tie_group = options_.tied_cache->group_of(current);
    t.meta = current.is_meta() ? current : at::empty(current.sizes(), current.options().device(c10::kMeta));
    slot->tensor = t.meta;
    offloaded_bytes_ += static_cast<int64_t>(info.nbytes);
    offloaded_.push_back(std::move(t));
  }
  // Every tensor of the module offloaded, none of them read from a file: it can run beside them.
  weights_in_memory_ = !offloaded_.empty() && offloaded_.size() == original_devices_.size();
  for (const auto& t : offloaded_)
    if (options_.weights_map->file_extent(t.name)) weights_in_memory_ = false;
  if (options_.streamer) {
    // What the streamer needs to load these tensors ahead of pre_forward.
    StreamedModule needs;
    needs.weights = options_.weights_map;
    needs.device = options_.execution_device.value_or(c10::Device(c10::kCPU));
    needs.bytes = offloaded_bytes_;
    needs.tensors.reserve(offloaded_.size());
    for (const auto& t : offloaded_)  // tied tensors go through the shared cache: not prefetched
      needs.tensors.push_back(StreamedTensor{t.name, t.meta.scalar_type(), /*streamed=*/!t.tie_group});
    unregister_streamed();  // re-initialised without tensors: register afresh
    streamed_ = options_.streamer->add_module(std::move(needs));
  }

  if (options_.execution_device) {
    const c10::Device device = *options_.execution_device;
    // Buffers that are not offloaded live on the execution device (all of them without
    // offload_buffers; the non-persistent ones, which are never offloaded, with it).
    for (auto& [name, slot] : module_buffer_slots(module, recurse)) {
      bool stays = options_.offload_buffers ? !slot->persistent : true;
      if (!stays || slot->tensor.is_meta() || slot->tensor.device() == device) continue;
      slot->tensor = slot->tensor.to(device);
    }
  }
}

void AlignDevicesHook::load_weights(Module& module) {
  if (loaded_) return;
  const c10::Device device = options_.execution_device.value_or(c10::Device(c10::kCPU));
  loaded_ = true;  // from the first tensor on: a load that fails half way is undone in full
  try {
    for (size_t i = 0; i < offloaded_.size(); ++i) {
      OffloadedTensor& t = offloaded_[i];
      at::Tensor value;
      if (t.tie_group) value = options_.tied_cache->find(*t.tie_group, device);
      if (!value.defined()) {
        value = streamed() ? options_.streamer->fetch(streamed_, i, device)
                           : options_.weights_map->load(t.name, device, t.meta.scalar_type());
        if (t.tie_group) {
          at::Tensor kept = options_.tied_cache->put(*t.tie_group, device, value);
          if (kept.is_same(value)) tied_to_release_.emplace_back(*t.tie_group, device);
          value = kept;
        }
      }
      t.slot->tensor = std::move(value);
    }
  } catch (...) {
    unload_weights(module);  // no weight of this module stays in it
    throw;
  }
}

void AlignDevicesHook::run_next_forward_on_cpu() {
  FERRY_CHECK(weights_in_memory_, "only a module whose weights are all offloaded to RAM can run beside them on the CPU; "
              "this one's are ", options_.offload ? "read from a file" : "not offloaded",
              ": it runs on its execution device");
  on_cpu_next_ = true;
}

bool AlignDevicesHook::weights_cached() const { return streamed() && options_.streamer->expert_cached(streamed_); }

void AlignDevicesHook::load_in_place() {
  // The weights map holds them in RAM: a CPU load at their dtype is the held tensor itself.
  on_cpu_next_ = false;
  in_place_ = true;
  for (auto& t : offloaded_) t.slot->tensor = options_.weights_map->load(t.name, c10::kCPU, t.meta.scalar_type());
  if (streamed()) options_.streamer->count_run_in_place(streamed_);
}

void AlignDevicesHook::unload_in_place() {
  for (auto& t : offloaded_) t.slot->tensor = t.meta;
  in_place_ = false;
}

void AlignDevicesHook::load_routed() {
  if (streamed()) options_.streamer->load_routed(streamed_);
}

void AlignDevicesHook::unload_weights(Module& module) {
  if (!loaded_) return;
  for (auto& t : offloaded_) t.slot->tensor = t.meta;
  for (const auto& [group, device] : tied_to_release_) options_.tied_cache->erase(group, device);
  tied_to_release_.clear();
  loaded_ = false;
  if (streamed()) options_.streamer->release(streamed_);
}

void AlignDevicesHook::pre_forward(Module& module, Args& args) {
  if (on_cpu_next_) {  // run_next_forward_on_cpu(): inputs to the weights, output back to the inputs' device
    input_device_ = find_device(args);
    load_in_place();
    send_to_device(args, c10::kCPU, options_.skip_keys);
    return;
  }
  if (options_.io_same_device) input_device_ = find_device(args);
  if (options_.offload) {
    if (streamed()) options_.streamer->on_forward(streamed_);
    load_weights(module);
  }
  if (options_.execution_device) send_to_device(args, *options_.execution_device, options_.skip_keys);
}

c10::IValue AlignDevicesHook::post_forward(Module& module, c10::IValue output) {
  if (in_place_) {
    unload_in_place();
    return input_device_ ? send_to_device(output, *input_device_, options_.skip_keys) : output;
  }
  if (options_.offload) unload_weights(module);
  if (options_.io_same_device && input_device_) output = send_to_device(output, *input_device_, options_.skip_keys);
  return output;
}

void AlignDevicesHook::abort_forward(Module& module) {
  on_cpu_next_ = false;
  if (in_place_) return unload_in_place();
  if (options_.offload) unload_weights(module);
}

void AlignDevicesHook::detach_hook(Module& module) {
  if (!options_.offload) return;
  unload_weights(module);
  unregister_streamed();
  for (const auto& [name, device] : original_devices_) {
    if (device.type() == c10::kMeta) continue;
    if (options_.weights_map->contains(name)) {
      auto [owner, leaf] = resolve_tensor_owner(module, name);
      at::Tensor current = owner->has_buffer(leaf) ? owner->buffer(leaf) : owner->parameter(leaf);
      set_module_tensor_to_device(module, name, device,
                                  options_.weights_map->load(name, device, current.scalar_type()));
    } else {
      set_module_tensor_to_device(module, name, device);
    }
  }
  offloaded_.clear();
  original_devices_.clear();
}

}  // namespace ferry
