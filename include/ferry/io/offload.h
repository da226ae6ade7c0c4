#pragma once
/// \file
/// Accelerate's offload folder (accelerate/utils/offload.py), byte-compatible in both directions:
/// one raw `<tensor name>.dat` per tensor (row-major element bytes, little-endian, no header) and an
/// `index.json` mapping each name to `{"dtype": <NumPy name>, "shape": [...]}`.
///
///     using namespace ferry::io;
///     OffloadIndex index;
///     offload_weight(weight, "model.layers.0.mlp.up_proj.weight", "/tmp/offload", &index);
///     save_offload_index(index, "/tmp/offload");                 // merges with an existing index.json
///     OffloadIndex read = read_offload_index("/tmp/offload");
///     at::Tensor w = load_offloaded_weight("/tmp/offload/model.layers.0.mlp.up_proj.weight.dat",
///                                          read.at("model.layers.0.mlp.up_proj.weight"));
///
/// Format details Accelerate relies on: bfloat16 is stored as its int16 bit pattern under the tag
/// "bfloat16" (NumPy has no bfloat16); a 0-dim tensor is stored as one element with shape `[]`;
/// dtype tags are NumPy names (float16, float32, float64, int8, int16, int32, int64, uint8, bool,
/// complex64, complex128); index.json is written with indent 2 and ASCII escapes, as Python's
/// `json.dump(index, f, indent=2)` writes it. float8 cannot be offloaded this way (NumPy has no
/// float8, so Accelerate could not read it back): keep such weights in their safetensors file.
/// Entries written by other tools may instead read `{"safetensors_file": path, "weight_name": key,
/// "dtype": torch name}`; those are read too.

#include "ferry/io/safetensors.h"

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

namespace ferry::io {

/// One index.json entry.
struct OffloadEntry {
  /// `.dat` form: the dtype tag ("float32", "bfloat16", ...). safetensors form: the torch dtype name
  /// to cast to, or empty for "as stored".
  std::string dtype;
  /// `.dat` form only: the logical shape ([] for a scalar).
  std::vector<int64_t> shape;
  /// safetensors form: the file (absolute, or relative to the offload folder) and the key inside it
  /// (empty: the index key).
  std::string safetensors_file;
  std::string weight_name;

  bool is_safetensors() const { return !safetensors_file.empty(); }
  bool operator==(const OffloadEntry& o) const {
    return dtype == o.dtype && shape == o.shape && safetensors_file == o.safetensors_file &&
           weight_name == o.weight_name;
  }
};

/// An index.json: entries in insertion order (the order Python's dict keeps, and writes).
class OffloadIndex {
 public:
  /// Adds or replaces an entry; a replaced entry keeps its position (as Python's dict.update does).
  void set(const std::string& name, OffloadEntry entry);
  /// The entry for `name`, or nullptr.
  const OffloadEntry* find(const std::string& name) const;
  /// The entry for `name`; throws ferry::Error when absent.
  const OffloadEntry& at(const std::string& name) const;
  bool contains(const std::string& name) const { return find(name) != nullptr; }
  /// Names in insertion order.
  const std::vector<std::string>& names() const { return names_; }
  size_t size() const { return names_.size(); }
  bool empty() const { return names_.empty(); }
  /// Adds every entry of `other` (its values win), like Python's `index.update(other)`.
  void update(const OffloadIndex& other);

  /// The index.json text exactly as Python's `json.dump(index, f, indent=2)` writes it.
  std::string to_json() const;
  /// Parses index.json text; `source` names it in errors. Validates every entry's form, dtype tag and
  /// shape; throws ferry::Error on anything else (including a name given twice).
  static OffloadIndex from_json(const std::string& text, const std::string& source);

 private:
  std::vector<std::string> names_;
  std::unordered_map<std::string, OffloadEntry> entries_;
};

/// The `.dat` dtype tag for a LibTorch dtype: NumPy's name, or "bfloat16". Throws ferry::Error for
/// float8 (not representable in Accelerate's format) and other dtypes NumPy lacks.
std::string offload_dtype_tag(c10::ScalarType dtype);
/// The LibTorch dtype a `.dat` dtype tag describes ("bfloat16" -> BFloat16). Throws for unknown tags.
c10::ScalarType parse_offload_dtype_tag(const std::string& tag);

/// The `.dat` path of `name` in `folder` (`folder/name.dat`). Throws ferry::Error for a name that
/// would escape the folder (empty, containing '/', or "." / "..").
std::string offload_file_path(const std::string& folder, const std::string& name);

/// Writes `tensor` (any device; copied to the CPU) to `folder/<name>.dat` as Accelerate does, and
/// records its entry in `index` when given. The folder must exist. The `.dat` is written under a
/// temporary name and renamed into place. Returns the entry.
OffloadEntry offload_weight(const at::Tensor& tensor, const std::string& name, const std::string& folder,
                            OffloadIndex* index = nullptr);

/// Reads a `.dat` file described by a `.dat`-form entry into a NEW CPU tensor (Accelerate's
/// load_offloaded_weight: shape [] gives a 0-dim tensor, "bfloat16" gives bf16). Throws ferry::Error
/// naming the file when its size does not match dtype x shape.
at::Tensor load_offloaded_weight(const std::string& file, const OffloadEntry& entry);

/// Like load_offloaded_weight, but returns a read-only CPU tensor over a memory mapping of the file
/// (no copy); the tensor keeps the mapping alive.
at::Tensor map_offloaded_weight(const std::string& file, const OffloadEntry& entry);

/// A `.dat` file mapped and checked against its index entry (size, dtype, bool bytes 0 or 1): what
/// the two functions above make tensors of, and what `ferry inspect` reads without LibTorch kernels.
struct MappedOffloadedWeight {
  std::shared_ptr<const MappedFile> map;
  c10::ScalarType dtype = c10::ScalarType::Float;
};
/// Maps and checks `file`; errors are reported as coming from `function`.
MappedOffloadedWeight map_offloaded_bytes(const std::string& file, const OffloadEntry& entry,
                                          const char* function = "map_offloaded_bytes");

/// Accelerate's save_offload_index: does nothing for an empty index; otherwise merges `index` into
/// `folder/index.json` (existing entries kept, new ones win) and writes it atomically (temporary file,
/// fsync, rename) after flushing the folder's `.dat` files to disk, so that index.json never names a
/// file that is not completely there.
void save_offload_index(const OffloadIndex& index, const std::string& folder);

/// Writes into an offload folder all or nothing. `write(staging, index)` writes the new `.dat` files
/// into `staging` (a fresh folder beside `folder`) and records them in `index`; then the files of
/// an existing `folder` that the new index does not replace are linked in, the merged index is
/// written, and the staging folder takes the place of `folder` (two renames; the old folder is
/// removed last). If `write` throws (a full disk, an interrupt), or anything after it fails,
/// the staging folder is removed and `folder` is exactly as it was. Returns the merged index.
OffloadIndex update_offload_folder(const std::string& folder,
                                   const std::function<void(const std::string& staging, OffloadIndex& index)>& write);

/// Reads and validates `folder/index.json` (throws ferry::Error when missing or damaged).
OffloadIndex read_offload_index(const std::string& folder);

/// True when `folder/index.json` exists.
bool has_offload_index(const std::string& folder);

/// Accelerate's offload_state_dict: creates `folder` (with parents), offloads every tensor and saves
/// (merges) the index. Returns the index of the tensors written.
OffloadIndex offload_state_dict(const std::string& folder, const NamedTensors& state_dict);

}  // namespace ferry::io
