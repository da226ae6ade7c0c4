#include "ferry/dispatch/big_modeling.h"

#include "dispatch_validated.h"

#include "ferry/core/error.h"
#include "ferry/core/log.h"
#include "ferry/io/offload.h"
#include "ferry/nn/module_tensors.h"
#include "ferry/plan/tied_parameters.h"
#include "ferry/plan/max_memory.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <set>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

namespace ferry {
namespace {

// A WeightsMap that also answers tied names missing from the store (a checkpoint saves a tied
// weight once) by reading the name it is tied to.
class AliasedWeightsMap : public io::WeightsMap {
 public:
  AliasedWeightsMap(io::WeightsMapPtr base, std::unordered_map<std::string, std::string> aliases)
      : base_(std::move(base)), aliases_(std::move(aliases)) {
    keys_ = base_->keys();
    for (const auto& [alias, target] : aliases_) keys_.push_back(alias);
  }
  std::vector<std::string> keys() const override { return keys_; }
  size_t size() const override { return keys_.size(); }
  bool contains(const std::string& name) const override { return base_->contains(resolve(name)); }
  io::TensorInfo info(const std::string& name) const override { return base_->info(resolve(name)); }
  at::Tensor load(const std::string& name, c10::Device device, c10::optional<c10::ScalarType> dtype) const override {
    return base_->load(resolve(name), device, dtype);
  }
  std::optional<io::FileExtent> file_extent(const std::string& name) const override {
    return base_->file_extent(resolve(name));
  }

 private:
  const std::string& resolve(const std::string& name) const {
    auto it = aliases_.find(name);
    return it == aliases_.end() ? name : it->second;
  }
  io::WeightsMapPtr base_;
  std::unordered_map<std::string, std::string> aliases_;
  std::vector<std::string> keys_;
};

// Offloaded slots of a tie group must find their weight: under another name of the group in the
// store (a checkpoint saves a tied weight once), or, when the store has none of them, in the
// model itself, where a resident member of the group holds it (e.g. a CPU embedding tied to a
// disk-placed LM head).
io::WeightsMapPtr with_tied_aliases(Module& model, io::WeightsMapPtr weights) {
  std::unordered_map<std::string, std::string> aliases;
  io::NamedTensors resident;
  for (const auto& group : find_tied_parameters(model)) {
    auto stored = [&](const std::string& n) { return weights && weights->contains(n); };
    auto present = std::find_if(group.begin(), group.end(), stored);
    if (present != group.end()) {
      for (const auto& name : group)
        if (!stored(name)) aliases.emplace(name, *present);
      continue;
    }
    for (const auto& name : group) {
      auto [owner, leaf] = resolve_tensor_owner(model, name);
      at::Tensor t = owner->parameter(leaf);
      if (t.defined() && !t.is_meta()) {
        for (const auto& other : group) resident.emplace_back(other, t);
        break;
      }
    }
  }
  if (!resident.empty()) {
    auto held = io::make_state_dict_weights_map(std::move(resident));
    weights = weights ? io::make_union_weights_map({weights, held}) : held;
  }
  if (aliases.empty()) return weights;
  return std::make_shared<AliasedWeightsMap>(std::move(weights), std::move(aliases));
}

// The CPU copies of offloaded weights, to be brought to `execution`. For an accelerator with
// `pin`, page-locked (the streamer then copies them at the link's full speed), and each written
// back into the model as it is made, so the model never holds two copies of a weight; a tied
// weight stays one tensor.
io::NamedTensors host_copies(Module& model, io::NamedTensors tensors, c10::Device execution, bool pin) {
  pin = pin && !execution.is_cpu() && !execution.is_meta();
  std::unordered_map<c10::TensorImpl*, at::Tensor> copies;
  io::NamedTensors out;
  for (auto& [name, tensor] : tensors) {
    if (tensor.is_meta()) continue;
    at::Tensor& copy = copies[tensor.unsafeGetTensorImpl()];
    if (!copy.defined()) copy = pin ? tensor.to(c10::kCPU).pin_memory() : tensor.to(c10::kCPU);
    if (pin) set_module_tensor_to_device(model, name, c10::kCPU, copy);
    tensor = at::Tensor();  // the original goes as soon as nothing else holds it
    out.emplace_back(name, copy);
  }
  return out;
}

std::shared_ptr<WeightStreamer> make_streamer(const StreamerOptions& options) {
  // Without prefetching, weights load in the hooks, mapped; asked to read them direct, the streamer
  // does it (on demand).
  if (options.prefetch_bytes <= 0 && options.disk_read != DiskRead::direct) return nullptr;
  return std::make_shared<WeightStreamer>(options);
}

std::optional<c10::Device> first_parameter_device(Module& model) {
  for (const auto& [name, tensor] : model.named_parameters())
    if (!tensor.is_meta()) return tensor.device();
  return std::nullopt;
}

int64_t sum_offloaded_bytes(Module& model) {
  int64_t total = 0;
  for_each_hook<AlignDevicesHook>(model, [&](AlignDevicesHook& hook) { total += hook.offloaded_bytes(); });
  return total;
}

// Restores ties when the hooks are removed: each offloaded slot gets its own copy back from
// the weights map, so the tie groups found at dispatch are re-established on the root's detach
// (remove_hook_from_submodules detaches children first).
class RetieOnDetachHook : public ModelHook {
 public:
  explicit RetieOnDetachHook(std::vector<std::vector<std::string>> groups) : groups_(std::move(groups)) {}
  void detach_hook(Module& module) override { retie_parameters(module, groups_); }

 private:
  std::vector<std::vector<std::string>> groups_;
};

void install_move_guard(Module& model);

void finish_dispatch(Module& model, DispatchState& state, std::vector<std::vector<std::string>> tied_groups) {
  if (!tied_groups.empty()) add_hook_to_module(model, std::make_shared<RetieOnDetachHook>(std::move(tied_groups)), true);
  state.tied_cache->seal();
  state.offloaded_bytes_per_forward = sum_offloaded_bytes(model);
  install_move_guard(model);
}

void install_move_guard(Module& model) {
  model.set_move_guard([](Module& m, const std::string& request) {
    for (const auto& [name, module] : m.named_modules())
      FERRY_CHECK(!has_offloaded_params(*module), "cannot move a dispatched model to ", request, ": module '", name,
                  "' is offloaded to the CPU or disk and its weights are not in the model. Call "
                  "remove_hook_from_submodules(model) first, or dispatch it again with another device map");
    log_warning("[Module::to] you shouldn't move a model that is dispatched with ferry hooks (to " + request +
                "); its hooks still move inputs to the devices of the device map");
  });
}

// Dispatching a dispatched model starts from the model as it was: the old hooks go first.
void undo_previous_dispatch(Module& model) {
  if (!model.has_move_guard()) return;
  log_info("[dispatch] the model was already dispatched; removing its hooks before placing it again");
  remove_hook_from_submodules(model);
}

std::shared_ptr<DispatchState> offload_everything(Module& model, io::WeightsMapPtr weights,
                                                  const OffloadOptions& options) {
  auto tied_groups = find_tied_parameters(model);
  auto state = std::make_shared<DispatchState>();
  state->main_device = options.execution_device.value_or(first_parameter_device(model).value_or(c10::kCPU));
  state->streamer = make_streamer(options.streamer);
  state->tied_cache = std::make_shared<TiedWeightsCache>(model);
  state->weights_map = with_tied_aliases(model, std::move(weights));

  AlignDevicesOptions root;
  root.io_same_device = true;
  add_hook_to_module(model, std::make_shared<AlignDevicesHook>(root), /*append=*/true);

  AttachOptions attach;
  attach.offload_buffers = options.offload_buffers;
  attach.preload_module_classes = options.preload_module_classes;
  attach.tied_cache = state->tied_cache;
  attach.streamer = state->streamer;
  attach_align_device_hook(model, state->main_device, /*offload=*/true, state->weights_map, attach);
  finish_dispatch(model, *state, std::move(tied_groups));
  return state;
}

}  // namespace

namespace {

// For a key naming no module: what the nearest module that does exist holds, e.g. "'model.layers'
// holds model.layers.0 .. model.layers.2" for "model.layers.7".
std::string what_exists_near(Module& model, const std::unordered_set<std::string>& modules, const std::string& key) {
  std::string prefix = key;
  do {
    const auto dot = prefix.rfind('.');
    prefix = dot == std::string::npos ? "" : prefix.substr(0, dot);
  } while (!prefix.empty() && !modules.count(prefix));
  Module* holder = &model.submodule(prefix);
  std::vector<std::string> names;
  for (const auto& [name, child] : holder->children()) names.push_back(prefix.empty() ? name : prefix + "." + name);
  if (names.empty()) return "";
  const std::string where = prefix.empty() ? "the model" : "'" + prefix + "'";
  if (names.size() > 4) return "; " + where + " holds " + names.front() + " .. " + names.back();
  std::string list;
  for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
  return "; " + where + " holds " + list;
}

}  // namespace

void validate_device_map(Module& model, const DeviceMap& device_map, bool strict) {
  for (const auto& [name, placement] : device_map)
    check_placement_available(placement, "device map entry '" + name + "'");
  std::unordered_set<std::string> modules;
  for (const auto& [name, module] : model.named_modules()) modules.insert(name);
  for (const auto& [name, placement] : device_map) {
    if (name.empty() || modules.count(name)) continue;
    auto dot = name.rfind('.');
    std::string owner = dot == std::string::npos ? "" : name.substr(0, dot);
    Module* m = modules.count(owner) ? &model.submodule(owner) : nullptr;
    std::string leaf = dot == std::string::npos ? name : name.substr(dot + 1);
    if (!m || !(m->has_parameter(leaf) || m->has_buffer(leaf))) {
      // Accelerate ignores such keys with a warning; strict makes them the error they usually are.
      const std::string problem = detail::concat("the device map names '", name, "', which is not a module or tensor of this ",
                                                 model.class_name(), what_exists_near(model, modules, name));
      FERRY_CHECK(!strict, problem);
      log_warning(problem + "; the entry is ignored");
      continue;
    }
    // Offloading works module by module: a tensor alone on disk inside a module placed elsewhere would
    // leave that module half-placed (a split module's own tensors may go anywhere).
    const auto owner_placement = device_map.placement_of(owner);
    FERRY_CHECK(!placement.is_disk() || !owner_placement || *owner_placement == placement, "device map entry '", name,
                "' puts one tensor on disk, but weights are offloaded module by module: place its module '", owner,
                "' on disk instead");
  }
  // A module offloaded to disk brings all its weights in when it runs (one hook, as in Accelerate):
  // none of its submodules can be placed elsewhere.
  for (const auto& [name, placement] : device_map) {
    if (name.empty() || placement.is_disk()) continue;
    for (std::string up = name; !up.empty();) {
      auto dot = up.rfind('.');
      up = dot == std::string::npos ? "" : up.substr(0, dot);
      if (!device_map.contains(up)) continue;
      FERRY_CHECK(!device_map.at(up).is_disk(), "device map entry '", name, "' (", placement.str(), ") is inside '", up,
                  "', which is placed on disk: a disk-offloaded module loads all of its weights when it runs, so its "
                  "submodules cannot go elsewhere. Place the other submodules of '", up, "' on disk one by one instead");
      break;
    }
  }
  std::vector<std::string> uncovered;
  for (const auto& [name, tensor] : model.state_dict())
    if (!device_map.placement_of(name)) uncovered.push_back(name);
  FERRY_CHECK(uncovered.empty(), "the device map gives no placement for '", uncovered.front(), "'",
              uncovered.size() > 1 ? " (and " + std::to_string(uncovered.size() - 1) + " more tensors)" : "",
              "; add an entry for its module (or \"\" for everything)");
}

std::shared_ptr<DispatchState> cpu_offload(Module& model, const OffloadOptions& options) {
  undo_previous_dispatch(model);
  io::WeightsMapPtr weights = options.state_dict;
  if (!weights) {
    c10::Device execution = options.execution_device.value_or(first_parameter_device(model).value_or(c10::kCPU));
    weights = io::make_state_dict_weights_map(
        host_copies(model, model.state_dict(), execution, options.streamer.pin_cpu_weights));
  }
  return offload_everything(model, std::move(weights), options);
}

std::shared_ptr<DispatchState> disk_offload(Module& model, const std::string& offload_dir,
                                            const OffloadOptions& options) {
  FERRY_CHECK(!offload_dir.empty(), "an offload folder is needed to offload a ", model.class_name(), " to disk");
  undo_previous_dispatch(model);
  if (!io::has_offload_index(offload_dir)) io::offload_state_dict(offload_dir, model.state_dict());
  return offload_everything(model, io::make_offload_folder_weights_map(offload_dir), options);
}

std::shared_ptr<DispatchState> dispatch_model(Module& model, const DeviceMap& device_map,
                                              const DispatchOptions& options) {
  validate_device_map(model, device_map, options.strict);
  return detail::dispatch_validated(model, device_map, options);
}

std::shared_ptr<DispatchState> detail::dispatch_validated(Module& model, const DeviceMap& device_map,
                                                          const DispatchOptions& options) {
  undo_previous_dispatch(model);
  auto state = std::make_shared<DispatchState>();
  state->device_map = device_map;

  std::vector<Placement> placements = device_map.placements();
  bool has_disk = std::any_of(placements.begin(), placements.end(), [](const Placement& p) { return p.is_disk(); });
  if (placements.size() <= 1 && !has_disk && !options.force_hooks) {
    if (!placements.empty()) {
      state->main_device = placements.front().device();
      model.to(state->main_device);
    }
    return state;
  }

  c10::Device main = c10::kCPU;
  if (options.main_device) main = *options.main_device;
  else
    for (const auto& p : placements)
      if (p.is_accelerator()) {
        main = p.device();
        break;
      }
  state->main_device = main;

  std::vector<std::string> cpu_modules, disk_modules;
  for (const auto& [name, placement] : device_map) {
    if (placement.is_cpu()) cpu_modules.push_back(name);
    if (placement.is_disk()) disk_modules.push_back(name);
  }

  // Weights of offloaded modules, gathered before any hook moves a tensor.
  std::vector<io::WeightsMapPtr> sources;
  if (options.state_dict) {
    sources.push_back(options.state_dict);
  } else if (!main.is_cpu() && !cpu_modules.empty()) {
    sources.push_back(io::make_state_dict_weights_map(
        host_copies(model, extract_submodules_state_dict(model.state_dict(), cpu_modules), main,
                    options.streamer.pin_cpu_weights)));
  }
  if (!disk_modules.empty()) {
    if (options.disk_weights) {
      sources.push_back(options.disk_weights);
    } else {
      FERRY_CHECK(!options.offload_dir.empty(), "the device map places ", disk_modules.size(),
                  " module(s) on disk (e.g. '", disk_modules.front(),
                  "') but no offload folder was given; set DispatchOptions::offload_dir");
      if (options.offload_index) {
        sources.push_back(io::make_offload_folder_weights_map(options.offload_dir, *options.offload_index));
      } else {
        if (!io::has_offload_index(options.offload_dir)) {
          io::NamedTensors disk_part;
          for (auto& [name, tensor] : extract_submodules_state_dict(model.state_dict(), disk_modules)) {
            FERRY_CHECK(!tensor.is_meta(), "'", name, "' is on the meta device: it has no value to write to the offload "
                        "folder ", options.offload_dir, "; load the checkpoint first (load_checkpoint_and_dispatch)");
            disk_part.emplace_back(name, tensor);
          }
          io::offload_state_dict(options.offload_dir, disk_part);
        }
        sources.push_back(io::make_offload_folder_weights_map(options.offload_dir));
      }
    }
  }
  io::WeightsMapPtr weights;
  if (sources.size() == 1) weights = sources.front();
  else if (sources.size() > 1) weights = io::make_union_weights_map(sources);
  state->weights_map = with_tied_aliases(model, weights);

  std::map<std::string, c10::Device> execution;
  std::map<std::string, bool> offload;
  for (const auto& [name, placement] : device_map) {
    bool offloaded = placement.is_disk() || (placement.is_cpu() && !main.is_cpu());
    execution.emplace(name, placement.is_disk() || placement.is_cpu() ? main : placement.device());
    offload.emplace(name, offloaded);
  }
  execution.emplace("", main);

  auto tied_groups = find_tied_parameters(model);
  state->tied_cache = std::make_shared<TiedWeightsCache>(model);
  state->streamer = make_streamer(options.streamer);
  AttachOptions attach;
  attach.offload_buffers = options.offload_buffers;
  attach.skip_keys = options.skip_keys;
  attach.preload_module_classes = options.preload_module_classes;
  attach.tied_cache = state->tied_cache;
  attach.streamer = state->streamer;
  attach_align_device_hook_on_blocks(model, execution, offload, state->weights_map, attach);
  finish_dispatch(model, *state, std::move(tied_groups));
  if (state->offloaded_bytes_per_forward > 0)
    log_info("[dispatch_model] some parameters are on the meta device because they were offloaded to the cpu/disk");
  return state;
}

bool has_offloaded_params(const Module& module) {
  auto hook = hook_as<AlignDevicesHook>(module);
  return hook && hook->offload();
}

std::shared_ptr<AlignDevicesHook> find_offloading_hook(const Module& module) {
  if (auto hook = hook_as<AlignDevicesHook>(module)) return hook->offload() ? hook : nullptr;
  if (auto sequential = hook_as<SequentialHook>(module))
    for (const auto& h : sequential->hooks)
      if (auto align = std::dynamic_pointer_cast<AlignDevicesHook>(h); align && align->offload()) return align;
  return nullptr;
}

AlignModuleDevice::AlignModuleDevice(Module& module, std::optional<c10::Device> execution_device) : module_(module) {
  if (auto hook = find_offloading_hook(module)) {
    hook_ = hook;
    if (execution_device) {
      saved_execution_device_ = hook_->options().execution_device;
      hook_->set_execution_device(execution_device);
    }
    hook_->load_weights(module);
  } else if (execution_device) {
    for (const auto& [name, tensor] : module.named_parameters(/*recurse=*/false)) {
      moved_.emplace_back(name, tensor.device());
      set_module_tensor_to_device(module, name, *execution_device);
    }
  }
}

AlignModuleDevice::~AlignModuleDevice() {
  if (hook_) {
    hook_->unload_weights(module_);
    if (saved_execution_device_) hook_->set_execution_device(saved_execution_device_);
  }
  for (const auto& [name, device] : moved_) set_module_tensor_to_device(module_, name, device);
}

NamedTensors get_state_dict_offloaded_model(Module& model) {
  NamedTensors out;
  for (const auto& [prefix, module] : model.named_modules("", /*remove_duplicate=*/false)) {
    AlignModuleDevice aligned(*module, c10::Device(c10::kCPU));
    for (const auto& [name, slot] : module->parameter_slots())
      if (slot->tensor.defined()) out.emplace_back(join_name(prefix, name), slot->tensor.to(c10::kCPU));
    for (const auto& [name, slot] : module->buffer_slots())
      if (slot->tensor.defined() && slot->persistent) out.emplace_back(join_name(prefix, name), slot->tensor.to(c10::kCPU));
  }
  return out;
}

NamedTensors& get_state_dict_from_offload(Module& module, const std::string& module_name, NamedTensors& state_dict,
                                          c10::Device device) {
  const auto dot = module_name.rfind('.');
  const std::string root = dot == std::string::npos ? "" : module_name.substr(0, dot);  // without .weight
  AlignModuleDevice aligned(module, device);
  for (const auto& [key, value] : module.state_dict()) {
    const std::string full = join_name(root, key);
    for (auto& [name, tensor] : state_dict)
      if (name == full) tensor = value.to(device);
  }
  return state_dict;
}

NamedTensors extract_submodules_state_dict(const NamedTensors& state_dict, const std::vector<std::string>& names) {
  NamedTensors out;
  for (const auto& [key, tensor] : state_dict)
    for (const auto& name : names)
      if (name.empty() || key == name || key.compare(0, name.size() + 1, name + ".") == 0) {
        out.emplace_back(key, tensor);
        break;
      }
  return out;
}

}  // namespace ferry
