#pragma once
/// \file
/// The big-model entry points (Accelerate's big_modeling.py): place a model over GPUs, CPU RAM
/// and disk, and run it as if it were resident. Weights of offloaded modules live in a WeightsMap
/// (a state dict, an offload folder, the checkpoint itself) and are streamed in ahead of use.
///
///     // A resident model, its blocks placed by hand (see load_checkpoint_and_dispatch.h for the
///     // one-call path from a checkpoint into an empty model):
///     ferry::DispatchOptions o;
///     o.offload_dir = "/tmp/offload";                    // disk-placed weights are written here
///     ferry::dispatch_model(*model, ferry::DeviceMap{{"embed", ferry::Placement::cpu()},
///                                                    {"layers", ferry::Placement::disk()},
///                                                    {"head", ferry::Placement::cpu()}}, o);
///     at::Tensor y = (*model)(x);                        // layers stream in from the folder
///     ferry::remove_hook_from_submodules(*model);        // and back to resident

#include "ferry/hooks/align_devices_hook.h"
#include "ferry/hooks/attach.h"
#include "ferry/hooks/weight_streamer.h"
#include "ferry/io/weights_map.h"
#include "ferry/nn/module.h"
#include "ferry/plan/device_map.h"

#include <c10/core/Device.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ferry {

/// What a dispatched model shares: its streamer, tied-weight cache and the weights it reads.
struct DispatchState {
  std::shared_ptr<WeightStreamer> streamer;
  std::shared_ptr<TiedWeightsCache> tied_cache;
  io::WeightsMapPtr weights_map;
  DeviceMap device_map;
  c10::Device main_device = c10::kCPU;
  /// Bytes of offloaded weights brought in per full forward (sum over offloading hooks).
  int64_t offloaded_bytes_per_forward = 0;
};

/// Options of cpu_offload and disk_offload.
struct OffloadOptions {
  /// Where forward runs; default: the device of the model's first parameter.
  std::optional<c10::Device> execution_device;
  bool offload_buffers = false;
  /// Classes loaded as a whole by one hook (modules that use a child's weights directly).
  std::vector<std::string> preload_module_classes;
  /// Weights to offload from (cpu_offload); default: the model's state dict on the CPU.
  io::WeightsMapPtr state_dict;
  /// Prefetching; prefetch_bytes = 0 loads synchronously, as Accelerate does.
  StreamerOptions streamer;
};

/// Keeps every weight in CPU RAM (a WeightsMap) and brings each module's weights to the
/// execution device for its forward. Returns the shared state.
std::shared_ptr<DispatchState> cpu_offload(Module& model, const OffloadOptions& options = {});

/// Writes the model's state dict to an Accelerate offload folder (or reuses `offload_dir` if it
/// already holds a complete one) and runs the model from it, module by module.
std::shared_ptr<DispatchState> disk_offload(Module& model, const std::string& offload_dir,
                                            const OffloadOptions& options = {});

/// Options of dispatch_model (Accelerate's keyword arguments).
struct DispatchOptions {
  /// Device that executes CPU- and disk-placed modules; default: the first accelerator of the map,
  /// else the CPU.
  std::optional<c10::Device> main_device;
  /// Weights of CPU-offloaded modules; default: taken from the model.
  io::WeightsMapPtr state_dict;
  /// Folder for disk-placed modules' weights (written if it holds no index.json yet).
  std::string offload_dir;
  /// Accelerate's offload_index: the entries of `offload_dir` to use instead of its index.json (as
  /// load_checkpoint_in_model returns them, LoadCheckpointResult::offload_index).
  std::optional<io::OffloadIndex> offload_index;
  /// Weights of disk-placed modules already elsewhere (e.g. the checkpoint read in place).
  io::WeightsMapPtr disk_weights;
  bool offload_buffers = false;
  std::vector<std::string> skip_keys;
  std::vector<std::string> preload_module_classes;
  /// Attach hooks even when everything is on one device.
  bool force_hooks = false;
  /// Device-map keys that name no module or tensor are an error instead of a warning.
  bool strict = false;
  StreamerOptions streamer;
};

/// What dispatch_model checks before anything moves: every placement exists on this machine (no
/// cuda:7 on a machine with one GPU, no 'meta'), every tensor of the model gets one, and no tensor
/// is put on disk apart from its module. Throws ferry::Error naming the entry. A key that names no
/// module or tensor of the model is ignored with a warning, as Accelerate does (an error if `strict`).
void validate_device_map(Module& model, const DeviceMap& device_map, bool strict = false);

/// Places `model` as `device_map` says and attaches the hooks that run it there. The map is
/// checked completely first: a tensor without a placement is an error before anything moves.
/// Moving the model afterwards with Module::to() is refused (remove the hooks first).
std::shared_ptr<DispatchState> dispatch_model(Module& model, const DeviceMap& device_map,
                                              const DispatchOptions& options = {});

/// True when `module`'s hook is an AlignDevicesHook that offloads (its weights are not resident).
/// As in Accelerate, a SequentialHook does not count.
bool has_offloaded_params(const Module& module);

/// The offloading AlignDevicesHook of `module`, also when it sits inside a SequentialHook; null if none.
std::shared_ptr<AlignDevicesHook> find_offloading_hook(const Module& module);

/// RAII: materialises an offloaded module's weights (on `execution_device` if given) for a scope;
/// for a module that is not offloaded, moves its direct parameters to `execution_device` and back.
class AlignModuleDevice {
 public:
  explicit AlignModuleDevice(Module& module, std::optional<c10::Device> execution_device = std::nullopt);
  ~AlignModuleDevice();
  AlignModuleDevice(const AlignModuleDevice&) = delete;
  AlignModuleDevice& operator=(const AlignModuleDevice&) = delete;

 private:
  Module& module_;
  std::shared_ptr<AlignDevicesHook> hook_;
  std::optional<c10::Device> saved_execution_device_;
  std::vector<std::pair<std::string, c10::Device>> moved_;
};

/// The state dict of a model whose modules may be offloaded, every tensor on the CPU. Unlike
/// Accelerate, the root module's own tensors are included.
NamedTensors get_state_dict_offloaded_model(Module& model);

/// Accelerate's get_state_dict_from_offload: `module` is the module that owns the tensor
/// `module_name` ("layers.0.linear.weight"); every entry of `state_dict` named after one of its
/// tensors is replaced by that tensor's value, loaded from wherever it is offloaded and put on
/// `device`. Returns `state_dict`.
NamedTensors& get_state_dict_from_offload(Module& module, const std::string& module_name, NamedTensors& state_dict,
                                          c10::Device device = c10::Device(c10::kCPU));

/// Accelerate's extract_submodules_state_dict: the entries of `state_dict` equal to or under
/// one of `names` ("a.1" does not catch "a.10").
NamedTensors extract_submodules_state_dict(const NamedTensors& state_dict, const std::vector<std::string>& names);

}  // namespace ferry
