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
/// folder must hold exactly one safetensors `*.index.json`. An index maps tensor names to shard files
/// (entries may be wrapped in "weight_map"); its shards are opened relative to the index's folder.
///
/// PyTorch checkpoints saved by `torch.save` (`pytorch_model.bin`, a sharded
/// `pytorch_model.bin.index.json`, `.pt`, `.pth`) open too, as CheckpointFormat::torch: a `.bin`/`.pt`/
/// `.pth` file, an index whose shards are such files, or a folder with such weights and no safetensors
/// ones. Their listing comes from the pickles alone (io/torch_checkpoint.h: a restricted reader that
/// runs nothing from the file), so planning and `ferry inspect` cost what they cost for safetensors.
/// A `.bin` cannot be mapped and read in place (its tensors are zip records described by a pickle):
/// shard() refuses, and a loader reads a whole shard into memory with io::read_torch_state_dict, one
/// shard at a time (load_checkpoint_in_model does). A folder holding both formats is opened as
/// safetensors, and the choice is logged (log_info): Accelerate prefers the `.bin` there, ferry the
/// format it can map (the tensors are the same in a folder saved by transformers).
///
/// The zip reader is LibTorch's, so the listing of a `.bin` is only available in programs that link
/// ferry::ferry (its io/torch_checkpoint.cpp installs it, internal::set_torch_checkpoint_lister);
/// ferry::base alone refuses a `.bin` with a message saying so.

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

/// How a checkpoint's shards are stored (see the file comment).
enum class CheckpointFormat {
  safetensors,  ///< mapped and read in place
  torch,        ///< torch.save zips: listed from their pickles, loaded a whole shard at a time
};

/// "safetensors" or "pytorch".
const char* checkpoint_format_name(CheckpointFormat format);

/// One tensor of a checkpoint, from its shard's header.
struct CheckpointTensor {
  /// The name the model uses: the stored name, after Checkpoint::with_name_prefix if any.
  std::string name;
  /// The name in the shard's header (what SafetensorsFile::view takes), or the state dict key of a
  /// `.bin` shard.
  std::string stored_name;
  /// Absolute or index-relative-resolved path of the shard holding it.
  std::string file;
  /// Position of that shard in Checkpoint::files() (and Checkpoint::shard()).
  size_t shard = 0;
  c10::ScalarType dtype = c10::ScalarType::Float;
  std::vector<int64_t> shape;
  /// Absolute offset of the first byte in `file` (0 in a `.bin`, whose tensors are not read by
  /// offset), and the stored size (numel x element size in a `.bin`).
  uint64_t offset = 0;
  uint64_t nbytes = 0;

  int64_t numel() const;
};

/// The listing of a checkpoint, with its shards mapped. Opening reads and validates every shard's
/// header (a few KB each) and no tensor data; it is cheap enough for a planner to call on a 100 GB
/// checkpoint of 100,000 tensors. Copies share the mappings.
class Checkpoint {
 public:
  /// Resolves `path` (file, folder or index), maps every shard and validates every header (for a
  /// `.bin` checkpoint: lists every shard's pickle and checks its records). Throws ferry::Error for a
  /// `.bin` checkpoint in a program without ferry::ferry's reader, a missing shard or one
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

  /// How the shards are stored: safetensors (mapped) or torch (`.bin`, loaded whole).
  CheckpointFormat format() const { return format_; }

  /// What was opened: the file or the index file.
  const std::string& source() const { return source_; }
  /// The index file, or empty for a single-file checkpoint.
  const std::string& index_file() const { return index_file_; }
  /// The shard files in sorted order (as Accelerate streams them), each once.
  const std::vector<std::string>& files() const { return files_; }
  /// Every tensor, ordered by shard (as in files()) and then by offset within the shard.
  const std::vector<CheckpointTensor>& tensors() const { return listing_->tensors; }
  /// The index's "metadata" object as JSON text ("{}" when absent, single-file, or a `.bin` checkpoint).
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

  /// Shard `i` of files(), already mapped and validated. Throws ferry::Error for a `.bin` checkpoint,
  /// which has no mapping (io::read_torch_state_dict(files()[i]) loads its tensors).
  const SafetensorsFile& shard(size_t i) const {
    if (format_ != CheckpointFormat::safetensors) refuse_mapping(i);
    return (*shards_)[i];
  }
  /// The shard whose path is `file` (one of files()); throws ferry::Error for another path, and as
  /// shard() for a `.bin` checkpoint.
  const SafetensorsFile& open_file(const std::string& file) const;

 private:
  static Checkpoint open_checked(const std::string& path);  // open() without re-branding errors
  static Checkpoint open_torch(const std::string& path);    // the .bin branch of open_checked
  [[noreturn]] void refuse_mapping(size_t shard) const;

  CheckpointFormat format_ = CheckpointFormat::safetensors;
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

/// Resolves a safetensors checkpoint path to (index file or "", shard files) without reading the
/// shards, with Accelerate's rules (see the file comment). Throws ferry::Error for ambiguous folders,
/// and for a `.bin` checkpoint (io::resolve_torch_checkpoint resolves those).
struct ResolvedCheckpoint {
  std::string index_file;
  std::vector<std::string> files;
};
ResolvedCheckpoint resolve_checkpoint_files(const std::string& path);

/// The format Checkpoint::open would open `path` as, from names alone (and, for a `*.json` index, its
/// first entry): no shard is read. Throws ferry::Error where Checkpoint::open would fail to resolve.
CheckpointFormat checkpoint_format(const std::string& path);

namespace internal {

/// What a reader of torch.save zips tells Checkpoint::open about a `.bin` checkpoint: the index (or
/// ""), the shard files in sorted order, and every tensor (name, stored_name, file, shard, dtype,
/// shape, nbytes), shard after shard, every index claim and record size already checked.
struct TorchCheckpointContents {
  std::string index_file;
  std::vector<std::string> files;
  std::vector<CheckpointTensor> tensors;
};
/// Lists the `.bin` checkpoint at `path` (a file, an index or a folder), or throws ferry::Error.
using TorchCheckpointLister = TorchCheckpointContents (*)(const std::string& path);
/// Installs the lister Checkpoint::open uses for `.bin` checkpoints. io/torch_checkpoint.cpp (in
/// ferry::ferry) installs the LibTorch-based one at start-up; the `ferry` program, which links only
/// ferry::base, installs one that hands the command to `ferry-torch`. Not for other callers.
void set_torch_checkpoint_lister(TorchCheckpointLister lister);

}  // namespace internal

}  // namespace ferry::io
