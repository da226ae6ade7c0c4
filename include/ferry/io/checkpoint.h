#pragma once
/// \file
/// A Hugging Face checkpoint, listed from its headers alone: a single `.safetensors` file, a folder,
/// or a sharded checkpoint with `model.safetensors.index.json`.
///
///     auto ckpt = ferry::io::Checkpoint::open("/models/llama");   // folder, index or file
///     for (const CheckpointTensor& t : ckpt.tensors())            // no tensor bytes read
///       plan_tree.add(t.name, t.dtype, t.shape);
///     const CheckpointTensor* w = ckpt.find("lm_head.weight");   // w->file, w->nbytes, ...
///     SafetensorsFile shard = ckpt.open_file(w->file);            // map one shard to read its tensors
///
/// Resolution follows Accelerate's load_checkpoint_in_model: a `*.json` file is an index; any other
/// file is the checkpoint itself; a folder holding `model.safetensors` is that file; otherwise the
/// folder must hold exactly one `*.index.json`. An index maps tensor names to shard files (entries
/// may be wrapped in "weight_map"); its shards are opened relative to the index's folder. PyTorch
/// pickles (`.bin`) are refused with instructions to convert them: LibTorch cannot read Python
/// pickles of arbitrary state dicts reliably.

#include "ferry/io/safetensors.h"

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace ferry::io {

/// One tensor of a checkpoint, from its shard's header.
struct CheckpointTensor {
  /// The name the model uses: the stored name, after Checkpoint::with_name_prefix if any.
  std::string name;
  /// The name in the shard's header (what SafetensorsFile::view takes).
  std::string stored_name;
  /// Absolute or index-relative-resolved path of the shard holding it.
  std::string file;
  c10::ScalarType dtype = c10::ScalarType::Float;
  std::vector<int64_t> shape;
  /// Absolute offset of the first byte in `file`, and the stored size.
  uint64_t offset = 0;
  uint64_t nbytes = 0;

  int64_t numel() const;
};

/// The listing of a checkpoint. Opening reads and validates every shard's header (a few KB each) and
/// no tensor data; it is cheap enough for a planner to call on a 100 GB checkpoint.
class Checkpoint {
 public:
  /// Resolves `path` (file, folder or index) and validates every header. Throws ferry::Error for a
  /// `.bin` checkpoint (with the conversion command), a missing shard, a damaged header, a tensor
  /// named twice (by the index, or present in two shards), or a tensor the index names but its
  /// shard lacks.
  static Checkpoint open(const std::string& path);

  /// The same checkpoint with `prefix` put before every tensor name: a GPT-2 checkpoint saved from
  /// the base model ("h.0.attn.c_attn.weight") read as the LM's ("transformer.h.0...."), as
  /// transformers does with `base_model_prefix`. `stored_name` keeps the names in the files.
  Checkpoint with_name_prefix(const std::string& prefix) const;

  /// What was opened: the file or the index file.
  const std::string& source() const { return source_; }
  /// The index file, or empty for a single-file checkpoint.
  const std::string& index_file() const { return index_file_; }
  /// The shard files in sorted order (as Accelerate streams them), each once.
  const std::vector<std::string>& files() const { return files_; }
  /// Every tensor, ordered by shard (as in files()) and then by offset within the shard.
  const std::vector<CheckpointTensor>& tensors() const { return tensors_; }
  /// The index's "metadata" object as JSON text ("{}" when absent or single-file).
  const std::string& index_metadata_json() const { return index_metadata_; }

  /// The tensor named `name`, or nullptr.
  const CheckpointTensor* find(const std::string& name) const;
  /// The tensor named `name`; throws ferry::Error naming the checkpoint when absent.
  const CheckpointTensor& at(const std::string& name) const;
  bool contains(const std::string& name) const { return find(name) != nullptr; }
  /// Names of the tensors stored in `file` (one of files()), in offset order.
  std::vector<std::string> tensors_in(const std::string& file) const;
  /// Total stored bytes.
  uint64_t total_bytes() const;

  /// Maps and re-validates one shard (one of files()).
  SafetensorsFile open_file(const std::string& file) const;

 private:
  std::string source_;
  std::string index_file_;
  std::string index_metadata_ = "{}";
  std::vector<std::string> files_;
  std::vector<CheckpointTensor> tensors_;
  std::unordered_map<std::string, size_t> by_name_;
};

/// Resolves a checkpoint path to (index file or "", shard files) without reading the shards, with
/// Accelerate's rules (see the file comment). Throws ferry::Error for `.bin` files and ambiguous folders.
struct ResolvedCheckpoint {
  std::string index_file;
  std::vector<std::string> files;
};
ResolvedCheckpoint resolve_checkpoint_files(const std::string& path);

}  // namespace ferry::io
