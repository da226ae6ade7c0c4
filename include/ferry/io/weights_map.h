#pragma once
/// \file
/// WeightsMap: where offloaded weights live while a module's slots hold meta tensors. One read-only
/// interface (keys, contains, info, load) over an in-memory state dict, an Accelerate offload folder,
/// a safetensors checkpoint read in place, a prefixed view, and their union (Accelerate's
/// OffloadedWeightsLoader).
///
///     using namespace ferry::io;
///     auto ckpt = make_checkpoint_weights_map(Checkpoint::open("/models/llama"));   // nothing copied
///     auto layer = make_prefixed_weights_map(ckpt, "model.layers.3.");
///     TensorInfo i = layer->info("mlp.up_proj.weight");                // dtype, shape, bytes
///     at::Tensor w = layer->load("mlp.up_proj.weight", at::kCPU);      // zero-copy view of the file
///     at::Tensor g = layer->load("mlp.up_proj.weight", c10::Device("cuda:0"), at::kHalf);
///
/// All implementations are immutable after construction and safe to call from several threads at
/// once (the streamer loads on I/O threads); lazily opened files are cached under a mutex.

#include "ferry/io/checkpoint.h"
#include "ferry/io/file_extent.h"
#include "ferry/io/offload.h"
#include "ferry/io/safetensors.h"

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ferry::io {

/// What a weight is, without loading it.
struct TensorInfo {
  c10::ScalarType dtype = c10::ScalarType::Float;
  std::vector<int64_t> shape;
  /// Bytes it occupies stored (and in memory at its dtype).
  uint64_t nbytes = 0;
};

/// A read-only name -> tensor map. Share it as `std::shared_ptr<const WeightsMap>`.
class WeightsMap {
 public:
  virtual ~WeightsMap() = default;

  /// Every name, in the map's natural order (state-dict order; file order for checkpoints).
  virtual std::vector<std::string> keys() const = 0;
  /// Number of names (equal to keys().size(); ferry's prefixed view counts only its own keys, see
  /// make_prefixed_weights_map).
  virtual size_t size() const = 0;
  virtual bool contains(const std::string& name) const = 0;
  /// Dtype, shape and bytes of `name` from metadata only. Throws ferry::Error for an unknown name.
  virtual TensorInfo info(const std::string& name) const = 0;

  /// The tensor `name` on `device`, cast to `dtype` when given (and different).
  ///
  /// Zero-copy contract (the streamer relies on it): for a CPU target whose dtype matches the stored
  /// one, file-backed maps (safetensors checkpoint, offload folder `.dat` entries) return a READ-ONLY
  /// tensor over a memory mapping of the file, not a copy; writing to it faults. The state-dict map
  /// returns the very tensor object it holds when device and dtype already match (identity
  /// preserved, as Accelerate's loader does). Every other request returns a new tensor. Throws
  /// ferry::Error for an unknown name.
  virtual at::Tensor load(const std::string& name, c10::Device device = c10::kCPU,
                          c10::optional<c10::ScalarType> dtype = c10::nullopt) const = 0;

  /// Where `name`'s stored bytes are in a file (a safetensors shard, an offload folder's `.dat`
  /// file), so that they can be read without mapping it (io::DirectReader; the streamer's direct
  /// reads). nullopt for a weight held in memory. The extent's dtype is the stored one, which may
  /// differ from info().dtype where the map casts on load. Throws ferry::Error for an unknown name.
  virtual std::optional<FileExtent> file_extent(const std::string& name) const {
    (void)info(name);  // unknown names throw, as everywhere
    return std::nullopt;
  }
};

using WeightsMapPtr = std::shared_ptr<const WeightsMap>;

/// An in-memory state dict (name -> tensor, in the given order). Names must be unique.
WeightsMapPtr make_state_dict_weights_map(NamedTensors state_dict);

/// An Accelerate offload folder: `folder/index.json` and its `.dat` files (safetensors-form entries are
/// read from their files). Validates the index now and each `.dat` file's size on first use. Pass
/// `index` to use an index other than the folder's own.
WeightsMapPtr make_offload_folder_weights_map(const std::string& folder);
WeightsMapPtr make_offload_folder_weights_map(const std::string& folder, OffloadIndex index);

/// A safetensors checkpoint read in place: disk-offloaded weights need no second copy. Shards are
/// mapped on first use and stay mapped for the map's lifetime (only touched pages use memory). With
/// `names`, only those tensors are visible (e.g. the disk-placed ones).
WeightsMapPtr make_checkpoint_weights_map(Checkpoint checkpoint);
WeightsMapPtr make_checkpoint_weights_map(Checkpoint checkpoint, const std::vector<std::string>& names);

/// A view of the names of `base` that start with `prefix`, with the prefix stripped: `load("weight")`
/// reads `base["<prefix>weight"]`, keys() lists "weight", size() counts only those.
///
/// Differs from Accelerate's PrefixedDataset on purpose (spec section 9.10): there, iteration yields
/// the FULL names and len() is the whole dataset's length, so `for k in view: view[k]` looks up
/// "<prefix><prefix>k" and fails. ferry's view is consistent: every listed key loads.
WeightsMapPtr make_prefixed_weights_map(WeightsMapPtr base, std::string prefix);

/// The union of several maps, earlier ones winning on a shared name (keys: the first map's, then each
/// later map's names not seen yet). make_offloaded_weights_loader builds Accelerate's
/// OffloadedWeightsLoader from it.
WeightsMapPtr make_union_weights_map(std::vector<WeightsMapPtr> maps);

/// Accelerate's OffloadedWeightsLoader(state_dict, save_folder, index): answers from the state dict
/// first, then from the index (the folder's index.json when `index` is absent) with `.dat` files in
/// `save_folder`. At least one source must be given (throws ferry::Error otherwise).
WeightsMapPtr make_offloaded_weights_loader(const NamedTensors* state_dict, const std::string& save_folder,
                                            const OffloadIndex* index = nullptr);

}  // namespace ferry::io
