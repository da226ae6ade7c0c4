#pragma once
/// \file
/// Checkpoints saved by `torch.save`: `pytorch_model.bin` (single or sharded with
/// `pytorch_model.bin.index.json`), `.pt` and `.pth` state dicts, in PyTorch's zip format (the default
/// since PyTorch 1.6).
///
///     using namespace ferry::io;
///     NamedTensors sd = read_torch_state_dict("/models/gpt/pytorch_model.bin");  // one file
///     NamedTensors all = read_torch_checkpoint("/models/llama-bin");           // folder, index or file
///     for (const TorchTensorInfo& t : list_torch_state_dict("/x/model.pt"))    // the pickle only
///       std::cout << t.name << ' ' << shape_str(t.shape) << '\n';
///
/// The zip is read by LibTorch's own reader (caffe2::serialize::PyTorchStreamReader, on miniz, which
/// LibTorch builds without CRC checks: a flipped byte inside a tensor goes unnoticed, as in safetensors,
/// but a damaged or truncated archive structure is refused). The pickle inside it (`data.pkl`) is read by ferry's restricted unpickler, not LibTorch's:
/// LibTorch's turns `collections.OrderedDict` into None (it expects one only as a tensor's backward
/// hooks), so it cannot read `torch.save(model.state_dict())`, the most common `.bin` on the Hub, and it
/// checks neither a storage's size against its record nor a view's extent against its storage.
///
/// Note [Restricted unpickler]: the unpickler knows the ~35 opcodes Python's pickler writes for a state
/// dict (protocols 2 to 5) and exactly these globals: `collections.OrderedDict`,
/// `torch._utils._rebuild_tensor_v2`, `torch._utils._rebuild_parameter` and the storage types
/// (`torch.FloatStorage`, ..., `torch.float8_e4m3fn`). It calls nothing: a global is a tag that
/// REDUCE interprets, so a pickle that names any other global (`os.system`, `builtins.eval`, a
/// TorchScript class) is refused when that global is read, before anything else happens. Values live
/// in an arena (self-referencing lists cannot leak); memo ids are looked up, never used to size a
/// table. Every tensor is checked before any byte is read: its storage's record exists and holds
/// exactly numel x element size bytes, its offset, sizes and strides stay inside the storage (with
/// overflow checks), the same storage key always has the same dtype and size.

#include "ferry/io/safetensors.h"  // NamedTensors

#include <c10/core/ScalarType.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ferry::io {

/// One tensor of a torch.save'd state dict, as its pickle describes it (no tensor bytes read).
struct TorchTensorInfo {
  /// The state dict key.
  std::string name;
  c10::ScalarType dtype = c10::ScalarType::Float;
  std::vector<int64_t> shape;
  /// Strides and offset in elements, into the storage.
  std::vector<int64_t> strides;
  int64_t storage_offset = 0;
  /// The storage's key: its bytes are the zip record `data/<key>`.
  std::string storage_key;
  /// Elements in the storage (several tensors may view one storage: tied weights).
  int64_t storage_numel = 0;

  /// Elements of the tensor (1 for a 0-dim tensor).
  int64_t numel() const;
  /// Bytes the tensor takes once contiguous.
  uint64_t nbytes() const;
};

/// Interprets the bytes of a `data.pkl` with the restricted unpickler (Note [Restricted unpickler])
/// and returns the state dict's tensors in the dict's order, every view checked against its storage's
/// size as the pickle states it. `source` names the file in messages. Throws ferry::Error for anything
/// else: an opcode or global torch.save does not write, a malformed pickle (stack underflow, missing
/// MARK, truncation), a root that is not a dict of string -> tensor (the message names the key), a
/// view outside its storage. Never reads past `size`. This is the function the fuzzer drives.
std::vector<TorchTensorInfo> parse_torch_pickle(const uint8_t* data, size_t size, const std::string& source);

/// Lists the tensors of the torch.save zip at `path` from its pickle alone, every storage record
/// checked for presence and size (no tensor bytes read). Throws as read_torch_state_dict.
std::vector<TorchTensorInfo> list_torch_state_dict(const std::string& path);

/// Loads the state dict torch.save wrote to `path` (a zip): every tensor on the CPU, contiguous, with
/// its dtype and shape, in the dict's order. Tensors that share a storage (tied weights) share memory
/// when their view is contiguous (a strided view is copied out). Throws ferry::Error naming the file for:
/// a pre-1.6 (legacy pickle or tar) file, with how to re-save it; a safetensors file under a .bin name;
/// a truncated or damaged zip (LibTorch's message kept); a record whose size disagrees with its
/// storage; a big-endian file; and everything parse_torch_pickle refuses.
NamedTensors read_torch_state_dict(const std::string& path);

/// The same for a file image in memory (`source` names it in messages).
NamedTensors read_torch_state_dict(const uint8_t* data, size_t size, const std::string& source);

/// The files of a `.bin` checkpoint, resolved like transformers: a `.bin`/`.pt`/`.pth` file is itself;
/// a `*.json` file is an index (`{"metadata": ..., "weight_map": {name: file}}`) whose files sit next
/// to it; a folder holds `pytorch_model.bin.index.json`, `pytorch_model.bin`, or exactly one
/// `.bin`/`.pt`/`.pth` file.
struct TorchCheckpointFiles {
  /// The index file, or empty for a single file.
  std::string index_file;
  /// The weight files, sorted, each once.
  std::vector<std::string> files;
};
TorchCheckpointFiles resolve_torch_checkpoint(const std::string& path);

/// True when `path` holds PyTorch pickle weights and no safetensors ones: a `.bin`/`.pt`/`.pth`
/// file, an index whose shards are such files, or a folder with `pytorch_model*.bin` (or one `.pt`/`.pth`)
/// but no `*.safetensors`. A folder holding both is a safetensors checkpoint (read in preference).
bool is_torch_checkpoint(const std::string& path);

/// The tensors of a `.bin` checkpoint from the pickles alone, each with the file holding it.
struct TorchCheckpointListing {
  TorchCheckpointFiles files;
  /// Every tensor, file after file (as in files.files), in each file's dict order.
  std::vector<TorchTensorInfo> tensors;
  /// file_of[i]: the position in files.files of the file holding tensors[i].
  std::vector<size_t> file_of;
};

/// Lists the `.bin` checkpoint at `path` (resolve_torch_checkpoint) without reading tensor bytes, with
/// the same checks as read_torch_checkpoint.
TorchCheckpointListing list_torch_checkpoint(const std::string& path);

/// Loads every tensor of the `.bin` checkpoint at `path` (resolve_torch_checkpoint), shard after shard.
/// Throws ferry::Error for a tensor in two shards, a tensor the index names but its shard lacks (or
/// holds under another shard), a shard outside the index's folder, and anything read_torch_state_dict
/// refuses.
NamedTensors read_torch_checkpoint(const std::string& path);

}  // namespace ferry::io
