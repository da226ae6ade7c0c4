#pragma once
/// \file
/// Accelerate's load_checkpoint_in_model: stream a safetensors or PyTorch `.bin` checkpoint (file,
/// folder or sharded index; io/checkpoint.h) into a real or empty (meta) model, each tensor to the
/// placement its device map gives it.
///
///     auto model = build_model_on_meta();                     // under init_empty_weights
///     ferry::LoadCheckpointOptions o;
///     o.device_map = DeviceMap::from_json(R"({"embed": "cpu", "layers.0": 0, "layers.1": "disk"})");
///     o.dtype = at::kHalf;                                      // floating tensors only
///     ferry::LoadCheckpointResult r = ferry::load_checkpoint_in_model(*model, "/models/llama", o);
///     // layers.1.* are meta in the model; their weights are read in place from the checkpoint:
///     ferry::dispatch_model(*model, *o.device_map, {.disk_weights = r.disk_weights});
///
/// What happens, in order:
///  1. The checkpoint is resolved and every shard header validated (io::Checkpoint::open); the model's
///     tied groups are found; every checkpoint tensor the model has is checked for a placement
///     (longest dotted prefix in the map) and a matching shape, so a bad map or a wrong checkpoint
///     fails before anything is loaded.
///  2. Shards are streamed one at a time, in sorted order: a shard is mapped, its tensors go to their
///     placement, the mapping is dropped. Peak host memory: the CPU-placed bytes plus one shard's
///     worth of page cache mapped in (released tensor by tensor), not the checkpoint.
///  3. Tensors placed on "disk" become meta tensors in the model (with the dtype they will have) and,
///     by default, are READ IN PLACE from the checkpoint (`disk_in_place`): `disk_weights` answers for
///     them, and no second copy is written. With `disk_in_place = false` they are written to
///     `offload_folder` as Accelerate does (.dat files + merged index.json, checkpoint dtype kept).
///
/// A PyTorch checkpoint (`pytorch_model.bin`, sharded or not, `.pt`, `.pth`) is listed from its pickles
/// when opened and loaded the same way, except that a `.bin` shard cannot be mapped: each shard is read
/// whole into memory (io::read_torch_state_dict), its tensors placed, and the shard freed before the
/// next one (peak host memory: the CPU-placed bytes plus one shard). Its disk-placed weights cannot be
/// read in place, so they are always written to `offload_folder` (which must then be given, as in
/// Accelerate, whatever `disk_in_place` says). A folder holding both formats is read as safetensors.
///  4. Unexpected keys (in the checkpoint, not in the model) are logged as a warning containing
///     "were not used when" (an error with `strict`); missing keys (in the model, not in the checkpoint,
///     not tied to a loaded tensor) too. Tied parameters are re-tied at the end.
///
/// Differences from Accelerate, on purpose: disk-placed buffers with `offload_buffers = false` are
/// loaded (to the CPU) instead of silently keeping the model's values (spec 9.11); shapes and
/// placements are checked before loading instead of failing halfway; missing keys are reported.

#include "ferry/io/checkpoint.h"
#include "ferry/io/offload.h"
#include "ferry/io/weights_map.h"
#include "ferry/nn/module.h"
#include "ferry/plan/device_map.h"

#include <c10/core/ScalarType.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace ferry {

/// How far load_checkpoint_in_model has got, for progress bars: bytes and tensors of the checkpoint
/// that the model takes (done and in all), and the shard being read (1-based; `shards` in all).
struct LoadProgress {
  uint64_t bytes_done = 0;
  uint64_t bytes_total = 0;
  size_t tensors_done = 0;
  size_t tensors_total = 0;
  size_t shard = 0;
  size_t shards = 0;
};

/// Accelerate's keyword arguments of load_checkpoint_in_model (bitsandbytes ones left out).
struct LoadCheckpointOptions {
  /// Where each module goes. Without a map every tensor goes to the device its model tensor is on
  /// (meta -> CPU), as Accelerate's `model.load_state_dict` path does.
  std::optional<DeviceMap> device_map;
  /// Folder for disk-placed tensors when `disk_in_place` is false (created if missing).
  std::string offload_folder;
  /// Floating tensors are cast to it; integer and bool tensors never are. Without it, tensors take
  /// the dtype the model's tensor has.
  std::optional<c10::ScalarType> dtype;
  /// Route CPU-placed tensors through a temporary offload folder (Accelerate's option to bound
  /// memory in Python). Same result; kept for compatibility.
  bool offload_state_dict = false;
  /// Disk-placed buffers are offloaded too (else they are loaded to the CPU).
  bool offload_buffers = false;
  /// Modules kept in float32 when `dtype` is float16 (a name matches a tensor equal to it or under it,
  /// e.g. "lm_head" keeps "lm_head.weight").
  std::vector<std::string> keep_in_fp32_modules;
  /// Unexpected or missing keys are an error instead of a warning.
  bool strict = false;
  /// Disk-placed tensors are read from the checkpoint in place (no copy) instead of written to
  /// `offload_folder`. Ignored for a `.bin` checkpoint, which cannot be read in place.
  bool disk_in_place = true;
  /// Put before every checkpoint name (Checkpoint::with_name_prefix), e.g. "transformer." for a
  /// GPT-2 checkpoint saved from the base model.
  std::string name_prefix;
  /// Called once before the first tensor and after each tensor (LoadProgress). An exception thrown
  /// from it stops the load there (ferry run's Ctrl-C); what was half-done is undone as on any error.
  std::function<void(const LoadProgress&)> on_progress;
};

/// What load_checkpoint_in_model did.
struct LoadCheckpointResult {
  /// Checkpoint tensors the model does not have.
  std::vector<std::string> unexpected_keys;
  /// Model tensors (state-dict names) the checkpoint does not have and no tie fills.
  std::vector<std::string> missing_keys;
  /// Weights of the disk-placed tensors (null when none): the checkpoint read in place, or the offload
  /// folder. Pass it to dispatch_model as `disk_weights`.
  io::WeightsMapPtr disk_weights;
  /// Names placed on disk, in checkpoint order.
  std::vector<std::string> disk_keys;
  /// Entries written to `offload_folder` (disk_in_place = false).
  io::OffloadIndex offload_index;
  /// Bytes copied into the model (CPU and accelerator placements), as stored in the checkpoint.
  uint64_t loaded_bytes = 0;
};

/// Loads `checkpoint` (a .safetensors or .bin/.pt/.pth file, a folder, or an index .json) into `model`;
/// see the file comment. Throws ferry::Error for a damaged checkpoint, a tensor without a placement ("...
/// doesn't have any device set"), a shape mismatch (naming the tensor, both shapes and the file),
/// "disk" in the map without an offload folder when `disk_in_place` is false or the checkpoint is a
/// `.bin`, and with `strict` for
/// unexpected or missing keys.
LoadCheckpointResult load_checkpoint_in_model(Module& model, const std::string& checkpoint,
                                              const LoadCheckpointOptions& options = {});

/// The same with a checkpoint already opened (io::Checkpoint::open): nothing is opened or parsed
/// again, so a command that planned from the checkpoint loads from the same mappings.
LoadCheckpointResult load_checkpoint_in_model(Module& model, const io::Checkpoint& checkpoint,
                                              const LoadCheckpointOptions& options = {});

/// Accelerate's load_offloaded_weights: loads every entry of `index` from `folder` into `model` on the
/// CPU (set_module_tensor_to_device, cast to the model tensor's dtype). Names containing "SCB"
/// (bitsandbytes statistics) are skipped.
void load_offloaded_weights(Module& model, const io::OffloadIndex& index, const std::string& folder);

}  // namespace ferry
