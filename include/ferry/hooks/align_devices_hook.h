#pragma once
/// \file
/// AlignDevicesHook: Accelerate's workhorse. It runs a module on its execution device: inputs are
/// moved there, and, when the module is offloaded, its weights are brought in from a WeightsMap
/// just before forward and dropped (back to meta tensors) right after.
///
///     ferry::AlignDevicesOptions o;
///     o.execution_device = c10::Device("cuda:0");
///     o.offload = true;                                   // weights live in o.weights_map
///     o.weights_map = ferry::io::make_state_dict_weights_map(layer.state_dict());
///     ferry::add_hook_to_module(layer, std::make_shared<ferry::AlignDevicesHook>(o));
///     // layer's parameters are now meta tensors; layer(x) loads, computes, unloads.

#include "ferry/hooks/model_hook.h"
#include "ferry/hooks/tied_weights_cache.h"
#include "ferry/io/weights_map.h"

#include <c10/core/Device.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ferry {

class WeightStreamer;
enum class StreamedModuleId : uint64_t;  // ferry/hooks/weight_streamer.h

/// How an AlignDevicesHook places its module (Accelerate's constructor arguments).
struct AlignDevicesOptions {
  /// Where forward runs; nullopt: where the inputs are (nothing is moved).
  std::optional<c10::Device> execution_device;
  /// Keep the weights out of the module (meta) between calls, loading them from weights_map.
  bool offload = false;
  /// Move the output back to the device of the first input tensor.
  bool io_same_device = false;
  /// Where offloaded weights live, keyed relative to the hooked module. When null with offload,
  /// init_hook takes a CPU copy of the module's tensors.
  io::WeightsMapPtr weights_map;
  /// Offload buffers too (otherwise they stay on the execution device).
  bool offload_buffers = false;
  /// The hook owns the tensors of the whole subtree, not only the module's direct ones.
  bool place_submodules = false;
  /// Keyword arguments not to move (e.g. a KV cache that manages its own devices).
  std::vector<std::string> skip_keys;
  /// Tied-weight cache shared by every hook of a dispatched model (may be null).
  std::shared_ptr<TiedWeightsCache> tied_cache;
  /// Prefetcher shared by every hook of a dispatched model (may be null: synchronous loads). An
  /// offloading hook registers its weights with it at init_hook and unregisters at detach_hook.
  std::shared_ptr<WeightStreamer> streamer;
};

/// Moves inputs (and offloaded weights) to the execution device around forward; see file comment.
class AlignDevicesHook : public ModelHook {
 public:
  explicit AlignDevicesHook(AlignDevicesOptions options);
  /// Unregisters from the streamer, if still registered (a hook dropped without detach_hook).
  ~AlignDevicesHook() override;
  AlignDevicesHook(const AlignDevicesHook&) = delete;
  AlignDevicesHook& operator=(const AlignDevicesHook&) = delete;

  /// Offloading: replaces the module's tensors with meta ones, records what to load (and
  /// registers it with the streamer); otherwise moves the tensors to the execution device.
  void init_hook(Module& module) override;
  /// Loads the offloaded weights (through the streamer, when there is one) and moves the inputs.
  void pre_forward(Module& module, Args& args) override;
  /// Drops the offloaded weights; moves the output back with io_same_device.
  c10::IValue post_forward(Module& module, c10::IValue output) override;
  /// Puts the weights back where they were before init_hook and unregisters from the streamer.
  void detach_hook(Module& module) override;
  /// Drops the weights pre_forward loaded, so an exception leaks no memory.
  void abort_forward(Module& module) override;

  /// The options it was made with (weights_map filled in by init_hook when it was null).
  const AlignDevicesOptions& options() const { return options_; }
  /// Changes the execution device (align_module_device's override); takes effect at the next load
  /// (and the streamer prefetches for it from its next prefetch).
  void set_execution_device(std::optional<c10::Device> device);
  /// Whether the weights are kept out of the module between calls.
  bool offload() const { return options_.offload; }

  /// One tensor this hook loads before forward and drops after it.
  struct OffloadedTensor {
    std::string name;                   ///< relative to the hooked module; key in weights_map
    std::shared_ptr<TensorSlot> slot;   ///< the module's slot, written directly (no path lookup per call)
    at::Tensor meta;                    ///< what the slot holds while offloaded
    std::optional<int> tie_group;       ///< tie group in the shared cache, if tied
  };
  /// The tensors loaded per call, in order (empty unless offload).
  const std::vector<OffloadedTensor>& offloaded_tensors() const { return offloaded_; }
  /// Bytes brought in per call (sum over offloaded_tensors, at their stored size).
  int64_t offloaded_bytes() const { return offloaded_bytes_; }
  /// Loads the weights into the slots now (pre_forward's weight part).
  void load_weights(Module& module);
  /// The module runs only when a router picks it (a mixture of experts' expert), and it was just
  /// picked: its weights start loading now, and the streamer never loads it by the learned order
  /// (see WeightStreamer::load_routed). Does nothing unless its weights are streamed.
  void load_routed();
  /// Drops them (back to meta tensors) and tells the streamer they are no longer needed.
  void unload_weights(Module& module);

  /// True when every tensor of the module is offloaded and held in RAM (a CPU-offloaded module's
  /// state dict, not a file): it can run on the CPU beside its weights, nothing copied.
  bool weights_in_memory() const { return weights_in_memory_; }
  /// The next forward (only) runs on the CPU with the weights where they are held: its inputs move
  /// to the CPU and its output back to their device, and nothing is copied or streamed. A mixture
  /// of experts asks this for an expert whose few tokens cost less to move than its weights
  /// (ferry/plan/expert_cost_model.h). Throws ferry::Error unless weights_in_memory().
  void run_next_forward_on_cpu();
  /// Whether the streamer's expert cache holds this module's weights (loaded where it executes).
  bool weights_cached() const;

 private:
  AlignDevicesOptions options_;
  std::vector<OffloadedTensor> offloaded_;
  std::vector<std::pair<std::string, c10::Device>> original_devices_;
  std::vector<std::pair<int, c10::Device>> tied_to_release_;
  std::optional<c10::Device> input_device_;
  int64_t offloaded_bytes_ = 0;
  bool loaded_ = false;
  bool weights_in_memory_ = false;
  bool on_cpu_next_ = false;  // run_next_forward_on_cpu() was called
  bool in_place_ = false;     // the slots hold the weights map's own tensors (load_in_place)
  void load_in_place();
  void unload_in_place();
  /// Its registration with options_.streamer (none: not registered).
  StreamedModuleId streamed_{};
  bool streamed() const;
  void unregister_streamed();
};

/// (name, slot) for the tensors a hook on `module` owns: parameters, and buffers when
/// `include_buffers` (non-persistent ones left out with `skip_non_persistent`), of the module
/// alone or of its subtree (`recurse`). Tied slots all appear (no de-duplication by identity).
std::vector<std::pair<std::string, std::shared_ptr<TensorSlot>>> module_tensor_slots(
    Module& module, bool include_buffers, bool recurse, bool skip_non_persistent);
/// (name, slot) for the buffers of `module` (or its subtree with `recurse`), persistent or not.
std::vector<std::pair<std::string, std::shared_ptr<TensorSlot>>> module_buffer_slots(Module& module, bool recurse);

}  // namespace ferry
