#pragma once
/// \file
/// A Hugging Face checkpoint, listed from its headers alone: a single `.safetensors` file, a folder,
/// or a sharded checkpoint with `model.safetensors.index.json`.
///
///     auto ckpt = ferry::io::Checkpoint::open("/models/llama");   // folder, index or file
///     for (const CheckpointTensor& t : ckpt.tensors())            // no tensor bytes read
///       plan_tree.add(t.name, t.dtype, t.shape);
///     const CheckpointTensor* w = ckpt.find("lm_head.weight");   // w->file, w->nbytes, ...
///     at::Tensor v = ckpt.shard(w->shard).view(w->stored_name);  // zero-copy, from the open mapping
///
/// Open once: opening maps every shard and parses its header exactly once; the object (and its
/// copies, which share the mappings) is then handed down through planning, loading and dispatch,
/// so a command never re-reads an index or a header. Mapping costs address space, not memory.
///
/// Resolution follows Accelerate's load_checkpoint_in_model: a `*.json` file is an index; any other
/// file is the checkpoint itself; a folder holding `model.safetensors` is that file; otherwise the
/// folder must hold exactly one `*.index.json`. An index maps tensor names to shard files (entries
/// may be wrapped in "weight_map"); its shards are opened relative to the index's folder. PyTorch
/// pickles (`.bin`) are refused with instructions to convert them once (`ferry convert`, which reads
/// them with io/torch_checkpoint.h): a checkpoint is mapped and read in place, a pickle cannot be.

#include "ferry/io/safetensors.h"

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
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
  /// Position of that shard in Checkpoint::files() (and Checkpoint::shard()).
  size_t shard = 0;
  c10::ScalarType dtype = c10::ScalarType::Float;
  std::vector<int64_t> shape;
  /// Absolute offset of the first byte in `file`, and the stored size.
  uint64_t offset = 0;
  uint64_t nbytes = 0;

  int64_t numel() const;
};

/// The listing of a checkpoint, with its shards mapped. Opening reads and validates every shard's
/// header (a few KB each) and no tensor data; it is cheap enough for a planner to call on a 100 GB
/// checkpoint of 100,000 tensors. Copies share the mappings.
class Checkpoint {
 public:
  /// Resolves `path` (file, folder or index), maps every shard and validates every header. Throws
  /// ferry::Error for a `.bin` checkpoint (with the conversion command), a missing shard or one
  /// outside the index's folder, a damaged header, a tensor named twice (by the index, or present in
  /// two shards), or a tensor the index names but its shard lacks.
  static Checkpoint open(const std::string& path);

  /// The same checkpoint with `prefix` put before every tensor name: a GPT-2 checkpoint saved from
  /// the base model ("h.0.attn.c_attn.weight") read as the LM's ("transformer.h.0...."), as
  /// transformers does with `base_model_prefix`. `stored_name` keeps the names in the files.
  Checkpoint with_name_prefix(const std::string& prefix) const;

  /// transformers' base_model_prefix rule, decided here once: when the checkpoint lacks
  /// `expected_name` ("transformer.wte.weight") but holds it without its first component
  /// ("wte.weight"), the checkpoint was saved from the base model and is returned under the model's
  /// names; otherwise the checkpoint itself.
  Checkpoint matched_to(const std::string& expected_name) const;
  /// The prefix put before every stored name ("" unless with_name_prefix or matched_to added one).
  const std::string& name_prefix() const { return name_prefix_; }

  /// What was opened: the file or the index file.
  const std::string& source() const { return source_; }
  /// The index file, or empty for a single-file checkpoint.
  const std::string& index_file() const { return index_file_; }
  /// The shard files in sorted order (as Accelerate streams them), each once.
  const std::vector<std::string>& files() const { return files_; }
  /// Every tensor, ordered by shard (as in files()) and then by offset within the shard.
  const std::vector<CheckpointTensor>& tensors() const { return listing_->tensors; }
  /// The index's "metadata" object as JSON text ("{}" when absent or single-file).
  const std::string& index_metadata_json() const { return index_metadata_; }

  /// The tensor named `name`, or nullptr.
  const CheckpointTensor* find(const std::string& name) const;
  /// The tensor named `name`; throws ferry::Error naming the checkpoint when absent.
  const CheckpointTensor& at(const std::string& name) const;
  bool contains(const std::string& name) const { return find(name) != nullptr; }
  /// A slice of tensors(), for range-for.
  struct TensorRange {
    const CheckpointTensor* first;
    const CheckpointTensor* last;
    const CheckpointTensor* begin() const { return first; }
    const CheckpointTensor* end() const { return last; }
    size_t size() const { return static_cast<size_t>(last - first); }
  };
  /// The tensors stored in shard `i` of files(), in offset order.
  TensorRange tensors_in(size_t shard) const;
  /// Total stored bytes.
  uint64_t total_bytes() const;

  /// Shard `i` of files(), already mapped and validated.
  const SafetensorsFile& shard(size_t i) const { return (*shards_)[i]; }
  /// The shard whose path is `file` (one of files()); throws ferry::Error for another path.
  const SafetensorsFile& open_file(const std::string& file) const;

 private:
  static Checkpoint open_checked(const std::string& path);  // open() without re-branding errors

  std::string source_;
  std::string index_file_;
  std::string index_metadata_ = "{}";
  std::string name_prefix_;
  std::vector<std::string> files_;
  std::shared_ptr<const std::vector<SafetensorsFile>> shards_;  // shared by copies
  // The tensors and their lookup, immutable once built and shared by copies. The name table views
  // the names in `tensors` (so a Listing is never copied) and is built on the first lookup: listing
  // or planning 100,000 tensors never pays for it.
  struct Listing {
    Listing() = default;
    Listing(const Listing&) = delete;
    Listing& operator=(const Listing&) = delete;
    std::vector<CheckpointTensor> tensors;
    std::vector<size_t> shard_begin;  // tensors[shard_begin[i], shard_begin[i + 1]) are in shard i
    const std::unordered_map<std::string_view, size_t>& by_name() const;

   private:
    mutable std::once_flag built_;
    mutable std::unordered_map<std::string_view, size_t> by_name_;
  };
  std::shared_ptr<const Listing> listing_ = std::make_shared<const Listing>();
};

/// Resolves a checkpoint path to (index file or "", shard files) without reading the shards, with
/// Accelerate's rules (see the file comment). Throws ferry::Error for `.bin` files and ambiguous folders.
struct ResolvedCheckpoint {
  std::string index_file;
  std::vector<std::string> files;
};
ResolvedCheckpoint resolve_checkpoint_files(const std::string& path);

}  // namespace ferry::io
