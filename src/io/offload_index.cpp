// The index half of offload.h: Accelerate's index.json, dtype tags and checked .dat mappings. Needs
// no LibTorch kernels (see offload.cpp for the tensor half), so `ferry inspect` stays light.
#include "ferry/io/offload.h"

#include "ferry/core/dtype.h"
#include "ferry/core/error.h"
#include "ferry/io/atomic_file.h"
#include "ferry/io/atomic_folder.h"
#include "ferry/io/json.h"
#include "ferry/io/regular_file.h"

#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace ferry::io {
namespace fs = std::filesystem;
namespace {

struct TagEntry {
  const char* tag;
  c10::ScalarType dtype;
};

const std::vector<TagEntry>& tag_table() {
  static const std::vector<TagEntry> table = {
      {"float16", c10::ScalarType::Half},   {"float32", c10::ScalarType::Float},
      {"float64", c10::ScalarType::Double}, {"bfloat16", c10::ScalarType::BFloat16},
      {"int8", c10::ScalarType::Char},      {"int16", c10::ScalarType::Short},
      {"int32", c10::ScalarType::Int},      {"int64", c10::ScalarType::Long},
      {"uint8", c10::ScalarType::Byte},     {"bool", c10::ScalarType::Bool},
      {"complex64", c10::ScalarType::ComplexFloat}, {"complex128", c10::ScalarType::ComplexDouble},
  };
  return table;
}

std::string known_tags() {
  std::string out;
  for (const auto& e : tag_table()) out += (out.empty() ? "" : ", ") + std::string(e.tag);
  return out;
}

std::vector<int64_t> stored_shape(const OffloadEntry& entry) {
  // Accelerate stores a 0-dim tensor as a 1-element 1-D array.
  return entry.shape.empty() ? std::vector<int64_t>{1} : entry.shape;
}

// Checks a .dat entry against its file and returns (dtype, stored element count x size).
c10::ScalarType checked_dat_dtype(const std::string& file, const OffloadEntry& entry, uint64_t file_size,
                                  const char* function) {
  if (entry.is_safetensors())
    throw Error(function, ::ferry::detail::concat(file, ": the index entry points to a safetensors file (",
                               entry.safetensors_file, "), not a .dat file"));
  c10::ScalarType dtype;
  try {
    dtype = parse_offload_dtype_tag(entry.dtype);
  } catch (const Error& e) {
    throw e.in(function, file + ": ");
  }
  uint64_t numel = 1;
  for (int64_t d : stored_shape(entry)) {
    if (d < 0 || __builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel))
      throw Error(function, file + ": invalid shape in the index");
  }
  uint64_t expected = 0;
  if (__builtin_mul_overflow(numel, c10::elementSize(dtype), &expected) || expected != file_size) {
    std::ostringstream shape;
    shape << c10::IntArrayRef(entry.shape);
    throw Error(function, ::ferry::detail::concat(file, ": the index says ", entry.dtype, " ", shape.str(), " (",
                               numel, " x ", c10::elementSize(dtype), " = ", expected, " bytes) but the file has ",
                               file_size, " bytes. Perhaps an interrupted offload?"));
  }
  return dtype;
}

// A bool byte other than 0 or 1 is undefined behaviour in every kernel that reads it.
void check_bool_bytes(const std::string& file, c10::ScalarType dtype, const uint8_t* data, size_t size,
                      const char* function) {
  if (dtype != c10::ScalarType::Bool) return;
  for (size_t i = 0; i < size; ++i)
    if (data[i] > 1)
      throw Error(function, ::ferry::detail::concat(file, ": the index says bool but byte ", i, " holds ", int(data[i]),
                                                    " (a bool must be 0 or 1). Perhaps a corrupt file?"));
}

}  // namespace

// ---- OffloadIndex -----------------------------------------------------------------------------

void OffloadIndex::set(const std::string& name, OffloadEntry entry) {
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    names_.push_back(name);
    entries_.emplace(name, std::move(entry));
  } else {
    it->second = std::move(entry);
  }
}

const OffloadEntry* OffloadIndex::find(const std::string& name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second;
}

const OffloadEntry& OffloadIndex::at(const std::string& name) const {
  const OffloadEntry* e = find(name);
  FERRY_CHECK(e != nullptr, "the offload index has no entry for '", name, "' (", names_.size(), " entries)");
  return *e;
}

void OffloadIndex::update(const OffloadIndex& other) {
  for (const auto& name : other.names_) set(name, other.entries_.at(name));
}

std::string OffloadIndex::to_json() const {
  nlohmann::ordered_json root = nlohmann::ordered_json::object();
  for (const auto& name : names_) {
    const OffloadEntry& e = entries_.at(name);
    nlohmann::ordered_json value = nlohmann::ordered_json::object();
    if (e.is_safetensors()) {
      value["safetensors_file"] = e.safetensors_file;
      // Written only when given: an absent weight_name means "the index key" and must stay absent, so
      // that an index read and written back is unchanged (found by fuzz/offload_index_fuzzer).
      if (!e.weight_name.empty()) value["weight_name"] = e.weight_name;
      if (!e.dtype.empty()) value["dtype"] = e.dtype;
    } else {
      value["dtype"] = e.dtype;
      value["shape"] = e.shape;
    }
    root[name] = std::move(value);
  }
  // Python's json.dump(indent=2): ", " -> "," at line ends, ": ", ASCII escapes, no final newline.
  return root.dump(2, ' ', /*ensure_ascii=*/true);
}

OffloadIndex OffloadIndex::from_json(const std::string& text, const std::string& source) {
  JsonDocument doc;
  try {
    doc = parse_json(text, source);
  } catch (const Error& e) {
    throw e.in("read_offload_index");
  }
  const JsonValue& root = doc.root();
  FERRY_CHECK(root.is_object(), source, ": an offload index must be a JSON object of tensor entries");
  OffloadIndex index;
  for (auto [key, v] : root.items()) {
    const std::string name(key);
    const std::string where = source + ": entry '" + name + "'";
    FERRY_CHECK(v.is_object(), where, " must be an object, got ", v.type_name());
    OffloadEntry entry;
    const auto dtype = v.find("dtype");
    if (auto file = v.find("safetensors_file")) {
      entry.safetensors_file = std::string(file->string(where + ": safetensors_file"));
      FERRY_CHECK(!entry.safetensors_file.empty(), where, ": safetensors_file is empty");
      if (auto weight = v.find("weight_name")) entry.weight_name = std::string(weight->string(where + ": weight_name"));
      if (dtype && !dtype->is_null()) {
        entry.dtype = std::string(dtype->string(where + ": dtype"));
        try {
          (void)parse_dtype(entry.dtype);
        } catch (const Error& e) {
          FERRY_FAIL(where, ": ", e.message());
        }
      }
    } else {
      FERRY_CHECK(dtype && dtype->is_string(), where, " needs a string \"dtype\" (or a \"safetensors_file\")");
      entry.dtype = std::string(*dtype->as_string());
      try {
        (void)parse_offload_dtype_tag(entry.dtype);
      } catch (const Error& e) {
        FERRY_FAIL(where, ": ", e.message());
      }
      const auto shape = v.find("shape");
      FERRY_CHECK(shape && shape->is_array(), where, " needs a \"shape\" array");
      for (JsonValue d : shape->elements()) {
        const auto size = d.as_uint64();
        FERRY_CHECK(size && *size <= (uint64_t(1) << 62), where, ": shape entries must be non-negative integers, got ",
                    d.dump());
        entry.shape.push_back(static_cast<int64_t>(*size));
      }
    }
    index.set(name, std::move(entry));
  }
  return index;
}

// ---- dtype tags -------------------------------------------------------------------------------

std::string offload_dtype_tag(c10::ScalarType dtype) {
  for (const auto& e : tag_table())
    if (e.dtype == dtype) return e.tag;
  FERRY_FAIL("dtype ", c10::toString(dtype),
             " cannot be stored in an Accelerate offload folder (NumPy has no such dtype, so Accelerate could not "
             "read it back); keep the weight in its safetensors file instead (supported: ",
             known_tags(), ")");
}

c10::ScalarType parse_offload_dtype_tag(const std::string& tag) {
  for (const auto& e : tag_table())
    if (tag == e.tag) return e.dtype;
  FERRY_FAIL("unknown offload dtype tag '", tag, "' (known: ", known_tags(), ")");
}

// ---- files ------------------------------------------------------------------------------------

std::string offload_file_path(const std::string& folder, const std::string& name) {
  FERRY_CHECK(!name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
                  name.find('\0') == std::string::npos,
              "tensor name '", name, "' cannot be used as a file name in offload folder ", folder);
  return (fs::path(folder) / (name + ".dat")).string();
}

MappedOffloadedWeight map_offloaded_bytes(const std::string& file, const OffloadEntry& entry, const char* function) {
  MappedOffloadedWeight out;
  out.map = MappedFile::open(file);
  out.dtype = checked_dat_dtype(file, entry, out.map->size(), function);
  check_bool_bytes(file, out.dtype, out.map->data(), out.map->size(), function);
  return out;
}

bool has_offload_index(const std::string& folder) {
  std::error_code ec;
  return fs::is_regular_file(fs::path(folder) / "index.json", ec);
}

OffloadIndex read_offload_index(const std::string& folder) {
  const std::string path = (fs::path(folder) / "index.json").string();
  std::string text;
  try {
    text = read_regular_file(path, "read_offload_index");
  } catch (const Error& e) {
    throw e.in("read_offload_index", "cannot read the offload index (is " + folder + " an offload folder?): ");
  }
  return OffloadIndex::from_json(text, path);
}

void save_offload_index(const OffloadIndex& index, const std::string& folder) {
  if (index.empty()) return;
  OffloadIndex merged;
  if (has_offload_index(folder)) merged = read_offload_index(folder);
  merged.update(index);
  // The .dat files were renamed into place without fsync; flush the whole file system once here, so
  // that the index below never becomes durable before the files it names.
  {
    int fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
      (void)::syncfs(fd);
      ::close(fd);
    }
  }
  write_file_atomically((fs::path(folder) / "index.json").string(), merged.to_json());
}

OffloadIndex update_offload_folder(const std::string& folder,
                                   const std::function<void(const std::string& staging, OffloadIndex& index)>& write) {
  OffloadIndex merged;
  replace_folder(
      folder,
      [&](const std::string& staging) {
        OffloadIndex written;
        write(staging, written);
        if (has_offload_index(folder)) merged = read_offload_index(folder);  // the entries the update keeps
        merged.update(written);
        if (merged.empty()) return;
        // Every .dat must be durable before the index that names it (one syncfs for all of them).
        const int fd = ::open(staging.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd >= 0) {
          (void)::syncfs(fd);
          ::close(fd);
        }
        write_file_atomically((fs::path(staging) / "index.json").string(), merged.to_json());
      },
      [](const std::string& name) { return name != "index.json"; });  // old .dat files the index still names
  return merged;
}

}  // namespace ferry::io
