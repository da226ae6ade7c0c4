#pragma once
/// \file
/// safetensors files: a validated, memory-mapped reader and an atomic writer.
///
/// Worked example:
///
///     using namespace ferry::io;
///     // Opening validates the WHOLE header (sizes, JSON, dtypes, shapes x sizes, ranges) before
///     // anything is returned; a damaged file throws ferry::Error naming the file and the numbers.
///     SafetensorsFile file = SafetensorsFile::open("/models/llama/model-00001-of-00002.safetensors");
///     for (const TensorEntry& e : file.tensors())            // in file order, from the header only
///       std::cout << e.name << ' ' << dtype_name(e.dtype) << ' ' << e.nbytes() << '\n';
///     at::Tensor w = file.view("lm_head.weight");             // zero-copy, read-only, keeps the map alive
///     at::Tensor h = file.load("lm_head.weight", at::kCPU, at::kHalf);  // a fresh copy, cast to fp16
///
///     save_safetensors("/tmp/out.safetensors", {{"w", w}}, {{"format", "pt"}});  // temp file + rename
///
/// The on-disk format (https://github.com/huggingface/safetensors): an unsigned little-endian 64-bit
/// header length N, N bytes of JSON `{"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [b, e]},
/// "__metadata__": {"k": "v"}}`, then the data section; offsets are relative to the data section.

#include "ferry/io/mapped_file.h"

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ferry::io {

/// The largest JSON header ferry accepts (the Hugging Face library's own limit, 100 MB).
constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

/// One tensor as its header describes it.
struct TensorEntry {
  std::string name;
  c10::ScalarType dtype = c10::ScalarType::Float;
  std::vector<int64_t> shape;
  /// Byte range relative to the start of the data section: [begin, end).
  uint64_t begin = 0;
  uint64_t end = 0;

  /// Stored bytes (end - begin).
  uint64_t nbytes() const { return end - begin; }
  /// Number of elements (1 for a 0-dim tensor).
  int64_t numel() const;
};

/// A validated header: every entry checked against the file it came from.
struct SafetensorsHeader {
  /// Length N of the JSON header.
  uint64_t header_bytes = 0;
  /// Absolute file offset of the data section (8 + N).
  uint64_t data_offset = 0;
  /// Tensors sorted by their offset in the file.
  std::vector<TensorEntry> tensors;
  /// The `__metadata__` map (empty when absent).
  std::map<std::string, std::string> metadata;

  /// The entry named `name`, or nullptr. The lookup table is built on the first call (thread-safe):
  /// a checkpoint opened only to be listed or planned never pays for 100,000 of them.
  const TensorEntry* find(const std::string& name) const;

  SafetensorsHeader() = default;
  SafetensorsHeader(SafetensorsHeader&&) noexcept = default;
  SafetensorsHeader& operator=(SafetensorsHeader&&) noexcept = default;
  /// Copies rebuild their own lookup table (it views the names of `tensors`).
  SafetensorsHeader(const SafetensorsHeader& other);
  SafetensorsHeader& operator=(const SafetensorsHeader& other);

 private:
  using Index = std::unordered_map<std::string_view, size_t>;
  mutable std::shared_ptr<const Index> index_;  // views tensors[i].name; atomic load/store
};

/// Parses and validates a header held in memory. `data` holds the first `size` bytes of a file of
/// `file_size` bytes (`size` may be less than the file; it must cover the 8 + N header bytes).
/// `source` names the file in error messages. Checks: the file has at least 8 bytes, N is at most
/// kMaxSafetensorsHeaderBytes and 8 + N fits in the file, the JSON is well formed and an object with
/// no duplicate names, every dtype is known to this LibTorch, every shape holds non-negative sizes
/// whose product x element size equals its byte range, ranges lie inside the data section and do not
/// overlap, and `__metadata__` is a string -> string map. Throws ferry::Error otherwise; never reads
/// past `size`. This is the function the fuzzer drives.
SafetensorsHeader parse_safetensors_header(const uint8_t* data, size_t size, uint64_t file_size,
                                           const std::string& source);

/// Reads and validates the header of the file at `path` with two small reads (no mapping): the cheap
/// way to list a checkpoint.
SafetensorsHeader read_safetensors_header(const std::string& path);

/// safetensors dtype code ("F32", "BF16", "F8_E4M3", ...) for a LibTorch dtype; throws for dtypes
/// safetensors cannot store.
std::string safetensors_dtype_code(c10::ScalarType dtype);
/// LibTorch dtype for a safetensors code; throws ferry::Error for an unknown code (the message lists
/// the known ones).
c10::ScalarType parse_safetensors_dtype_code(const std::string& code);

/// An open, validated safetensors file. Cheap to copy (the mapping and header are shared) and safe to
/// use from several threads at once (it never changes after open()).
class SafetensorsFile {
 public:
  /// Maps `path` and validates its header. Throws ferry::Error on any damage.
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const { return map_->path(); }
  const SafetensorsHeader& header() const { return *header_; }
  /// Tensors in file order.
  const std::vector<TensorEntry>& tensors() const { return header_->tensors; }
  const std::map<std::string, std::string>& metadata() const { return header_->metadata; }
  bool contains(const std::string& name) const { return header_->find(name) != nullptr; }
  /// The entry named `name`; throws ferry::Error naming the file when absent.
  const TensorEntry& entry(const std::string& name) const;

  /// The stored bytes of `name` (pointer into the mapping, and length).
  std::pair<const uint8_t*, size_t> bytes(const std::string& name) const;

  /// A CPU tensor over the mapped bytes: no copy. It keeps the mapping alive and is READ-ONLY (the
  /// pages are mapped PROT_READ: writing to it faults). When the bytes are not aligned to the element
  /// size (legal in the format, unusual in practice) it returns an aligned copy instead.
  at::Tensor view(const std::string& name) const;

  /// A new tensor with the contents of `name` on `device`, cast to `dtype` when given. Never aliases
  /// the mapping, so it may be written to.
  at::Tensor load(const std::string& name, c10::Device device = c10::kCPU,
                  c10::optional<c10::ScalarType> dtype = c10::nullopt) const;

  /// The underlying mapping (for madvise hints and lifetime sharing).
  const std::shared_ptr<const MappedFile>& mapping() const { return map_; }

 private:
  SafetensorsFile(std::shared_ptr<const MappedFile> map, std::shared_ptr<const SafetensorsHeader> header)
      : map_(std::move(map)), header_(std::move(header)) {}
  std::shared_ptr<const MappedFile> map_;
  std::shared_ptr<const SafetensorsHeader> header_;
};

/// Tensors to write, in any order; names must be unique and not "__metadata__".
using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

/// Writes `tensors` to `path` as a safetensors file the Hugging Face library reads: tensors ordered
/// as it orders them (larger element size first, then by name), contiguous offsets, the JSON header
/// padded with spaces to a multiple of 8, `metadata` as `__metadata__` (omitted when empty). Tensors
/// may live on any device; they are copied to the CPU one at a time. The file is written to a
/// temporary name in the same folder and renamed into place, so `path` is either the old file or the
/// complete new one. Throws ferry::Error for a duplicate name or a dtype safetensors cannot store.
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace ferry::io
