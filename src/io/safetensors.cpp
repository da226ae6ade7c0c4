#include "ferry/io/safetensors.h"

#include "ferry/core/dtype.h"
#include "ferry/core/error.h"
#include "ferry/core/shape.h"
#include "ferry/core/torch_compat.h"
#include "ferry/io/io_counters.h"
#include "ferry/io/json.h"

#include <memory>
#include <optional>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <set>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "ferry reads and writes little-endian files in place and needs a little-endian host"
#endif

namespace ferry::io {
namespace {


struct CodeEntry {
  const char* code;
  c10::ScalarType dtype;
};

const std::vector<CodeEntry>& code_table() {
  static const std::vector<CodeEntry> table = {
      {"F64", c10::ScalarType::Double}, {"F32", c10::ScalarType::Float},  {"F16", c10::ScalarType::Half},
      {"BF16", c10::ScalarType::BFloat16}, {"I64", c10::ScalarType::Long}, {"I32", c10::ScalarType::Int},
      {"I16", c10::ScalarType::Short}, {"I8", c10::ScalarType::Char},     {"U8", c10::ScalarType::Byte},
      {"BOOL", c10::ScalarType::Bool},
#if defined(FERRY_HAS_FLOAT8)
      {"F8_E4M3", c10::ScalarType::Float8_e4m3fn}, {"F8_E5M2", c10::ScalarType::Float8_e5m2},
#endif
  };
  return table;
}

std::string known_codes() {
  std::string out;
  for (const auto& e : code_table()) out += (out.empty() ? "" : ", ") + std::string(e.code);
  return out;
}

// Codes the format defines that this LibTorch cannot represent (a clearer message than "unknown").
bool is_format_code_without_torch_dtype(const std::string& code) {
  static const std::set<std::string> codes = {"U16", "U32", "U64", "F8_E4M3", "F8_E5M2", "F8_E8M0",
                                              "F6_E2M3", "F6_E3M2", "F4", "C64"};
  return codes.count(code) > 0;
}

uint64_t read_le_u64(const uint8_t* p) {
  uint64_t v = 0;
  std::memcpy(&v, p, 8);  // little-endian host (checked above)
  return v;
}

}  // namespace

int64_t TensorEntry::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafetensorsHeader::SafetensorsHeader(const SafetensorsHeader& other)
    : header_bytes(other.header_bytes), data_offset(other.data_offset), tensors(other.tensors), metadata(other.metadata) {}

SafetensorsHeader& SafetensorsHeader::operator=(const SafetensorsHeader& other) {
  if (this != &other) *this = SafetensorsHeader(other);
  return *this;
}

const TensorEntry* SafetensorsHeader::find(const std::string& name) const {
  std::shared_ptr<const Index> index = std::atomic_load(&index_);
  if (!index) {
    auto built = std::make_shared<Index>();
    built->reserve(tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) built->emplace(tensors[i].name, i);
    index = std::move(built);
    std::atomic_store(&index_, index);  // a racing thread may store an equal table: both are valid
  }
  auto it = index->find(name);
  return it == index->end() ? nullptr : &tensors[it->second];
}

std::string safetensors_dtype_code(c10::ScalarType dtype) {
  for (const auto& e : code_table())
    if (e.dtype == dtype) return e.code;
  FERRY_FAIL("dtype ", c10::toString(dtype), " cannot be stored in a safetensors file by this build (supported: ",
             known_codes(), ")");
}

c10::ScalarType parse_safetensors_dtype_code(const std::string& code) {
  for (const auto& e : code_table())
    if (code == e.code) return e.dtype;
  if (is_format_code_without_torch_dtype(code))
    FERRY_FAIL("dtype '", code, "' is a safetensors dtype that this LibTorch cannot represent (supported: ",
               known_codes(), ")");
  FERRY_FAIL("unknown safetensors dtype '", code, "' (known: ", known_codes(), ")");
}

// Note [Validate everything before returning anything]: every number in the header is checked with
// overflow-safe arithmetic against the real file size, so that a later view() can trust the entry and
// never reads outside the mapping, whatever bytes the file holds.
SafetensorsHeader parse_safetensors_header(const uint8_t* data, size_t size, uint64_t file_size,
                                           const std::string& source) {
#define HEADER_FAIL(...) \
  throw ::ferry::Error(::ferry::detail::concat("[parse_safetensors_header] ", source, ": ", __VA_ARGS__))
  const char* const hint = ". Perhaps an incomplete download or corrupt file?";
  if (file_size < 8 || size < 8)
    HEADER_FAIL("the file is only ", file_size,
                " bytes long, but a safetensors file starts with an 8-byte header length", hint);
  const uint64_t n = read_le_u64(data);
  if (n > kMaxSafetensorsHeaderBytes)
    HEADER_FAIL("the header length field says ", n, " bytes, more than the ", kMaxSafetensorsHeaderBytes,
                "-byte limit; this is not a safetensors file or it is corrupt");
  if (8 + n > file_size)
    HEADER_FAIL("the JSON header is ", n, " bytes long but the file is only ", file_size, " bytes", hint);
  FERRY_ASSERT(8 + n <= size, "caller must pass the whole header: ", size, " < ", 8 + n);
  if (n < 2 || data[8] != '{') HEADER_FAIL("the JSON header does not start with '{'", hint);

  // The strict reader rejects a name given twice (a JSON object may legally repeat a key, and a
  // lenient reader keeps the last: for a checkpoint that would silently pick one of two tensors) and
  // absurd nesting (valid headers nest 3 deep).
  JsonDocument doc;
  try {
    doc = parse_json(std::string_view(reinterpret_cast<const char*>(data + 8), static_cast<size_t>(n)),
                     "the JSON header", 16);
  } catch (const Error& e) {
    const bool repeated = e.message().find("twice") != std::string::npos;
    HEADER_FAIL(e.message(), repeated ? " (a tensor listed twice)" : hint);
  }
  ++io_counters().safetensors_headers_parsed;
  const JsonValue& root = doc.root();
  if (!root.is_object()) HEADER_FAIL("the JSON header is not a JSON object");

  SafetensorsHeader header;
  header.header_bytes = n;
  header.data_offset = 8 + n;
  header.tensors.reserve(root.size());
  const uint64_t data_size = file_size - 8 - n;

  for (auto [key, value] : root.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) HEADER_FAIL("__metadata__ must be a map of strings to strings, got ", value.type_name());
      for (auto [mkey, mvalue] : value.items()) {
        auto text = mvalue.as_string();
        if (!text)
          HEADER_FAIL("__metadata__ must be a map of strings to strings, but '", mkey, "' is a ", mvalue.type_name());
        header.metadata[std::string(mkey)] = std::string(*text);
      }
      continue;
    }
    TensorEntry entry;
    entry.name = std::string(key);
    const std::string& name = entry.name;
    if (!value.is_object()) HEADER_FAIL("tensor '", name, "': expected an object, got ", value.type_name());
    std::optional<JsonValue> dtype_v, shape_v, offsets_v;
    for (auto [field, v] : value.items()) {
      if (field == "dtype") dtype_v = v;
      else if (field == "shape") shape_v = v;
      else if (field == "data_offsets") offsets_v = v;
    }
    if (!dtype_v || !shape_v || !offsets_v) HEADER_FAIL("tensor '", name, "': needs 'dtype', 'shape' and 'data_offsets'");
    const auto code = dtype_v->as_string();
    if (!code) HEADER_FAIL("tensor '", name, "': 'dtype' must be a string");
    try {
      entry.dtype = parse_safetensors_dtype_code(std::string(*code));
    } catch (const Error& e) {
      HEADER_FAIL("tensor '", name, "': ", e.message());  // with the file and tensor named
    }

    if (!shape_v->is_array()) HEADER_FAIL("tensor '", name, "': 'shape' must be an array of sizes");
    // Elements, computed so that it cannot overflow: every size must fit int64 and the product of the
    // non-zero sizes too (LibTorch computes strides from them even for an empty tensor).
    uint64_t nonzero_product = 1;
    bool empty = false;
    entry.shape.reserve(shape_v->size());
    for (JsonValue d : shape_v->elements()) {
      const auto size = d.as_uint64();
      if (!size) HEADER_FAIL("tensor '", name, "': shape entries must be non-negative integers, got ", d.dump());
      const uint64_t v = *size;
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        HEADER_FAIL("tensor '", name, "': shape size ", v, " is too large");
      if (v == 0) empty = true;
      uint64_t product = 0;
      if (v != 0 && (__builtin_mul_overflow(nonzero_product, v, &product) ||
                     product > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())))
        HEADER_FAIL("tensor '", name, "': shape ", shape_v->dump(), " has more elements than fit in 64 bits");
      if (v != 0) nonzero_product = product;
      entry.shape.push_back(static_cast<int64_t>(v));
    }
    const uint64_t numel = empty ? 0 : nonzero_product;

    std::optional<uint64_t> offsets[2];
    size_t count = 0;
    if (offsets_v->is_array())
      for (JsonValue o : offsets_v->elements()) {
        if (count < 2) offsets[count] = o.as_uint64();
        ++count;
      }
    if (count != 2 || !offsets[0] || !offsets[1])
      HEADER_FAIL("tensor '", name, "': 'data_offsets' must be two non-negative integers [begin, end], got ",
                  offsets_v->dump());
    entry.begin = *offsets[0];
    entry.end = *offsets[1];
    if (entry.end < entry.begin)
      HEADER_FAIL("tensor '", name, "': data_offsets [", entry.begin, ", ", entry.end, "] end before they begin");
    if (entry.end > data_size)
      HEADER_FAIL("tensor '", name, "': data_offsets [", entry.begin, ", ", entry.end,
                  "] lie outside the data section, which is only ", data_size, " bytes", hint);
    const uint64_t element_size = c10::elementSize(entry.dtype);
    uint64_t expected = 0;
    if (__builtin_mul_overflow(numel, element_size, &expected) || expected != entry.nbytes())
      HEADER_FAIL("tensor '", name, "': shape ", shape_str(entry.shape), " of ", *code, " needs ", numel, " x ",
                  element_size, " bytes, but data_offsets [", entry.begin, ", ", entry.end, "] hold ", entry.nbytes(),
                  " bytes");
    header.tensors.push_back(std::move(entry));
  }

  std::sort(header.tensors.begin(), header.tensors.end(), [](const TensorEntry& a, const TensorEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (size_t i = 1; i < header.tensors.size(); ++i) {
    const auto& prev = header.tensors[i - 1];
    const auto& cur = header.tensors[i];
    if (cur.begin < prev.end)
      HEADER_FAIL("tensors '", prev.name, "' [", prev.begin, ", ", prev.end, "] and '", cur.name, "' [", cur.begin,
                  ", ", cur.end, "] overlap in the data section", hint);
  }
  return header;
#undef HEADER_FAIL
}

SafetensorsHeader read_safetensors_header(const std::string& path) {
  struct Fd {
    int fd;
    ~Fd() {
      if (fd >= 0) ::close(fd);
    }
  } fd{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  FERRY_CHECK(fd.fd >= 0, path, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  FERRY_CHECK(::fstat(fd.fd, &st) == 0 && S_ISREG(st.st_mode), path, ": not a readable regular file");
  const auto file_size = static_cast<uint64_t>(st.st_size);
  auto read_at = [&](std::vector<uint8_t>& buf, size_t count) {
    buf.resize(count);
    size_t done = 0;
    while (done < count) {
      ssize_t r = ::pread(fd.fd, buf.data() + done, count - done, static_cast<off_t>(done));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) break;
      done += static_cast<size_t>(r);
    }
    buf.resize(done);
  };
  std::vector<uint8_t> buf;
  read_at(buf, static_cast<size_t>(std::min<uint64_t>(file_size, 8)));
  if (buf.size() == 8) {
    const uint64_t n = read_le_u64(buf.data());
    if (n <= kMaxSafetensorsHeaderBytes && 8 + n <= file_size) {
      read_at(buf, static_cast<size_t>(8 + n));
      FERRY_CHECK(buf.size() == 8 + n, path, ": short read of the header (", buf.size(), " of ", 8 + n, " bytes)");
    }
  }
  // parse_safetensors_header reports what is wrong with a short or damaged header.
  return parse_safetensors_header(buf.data(), buf.size(), file_size, path);
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  auto map = MappedFile::open(path);
  auto header = std::make_shared<const SafetensorsHeader>(
      parse_safetensors_header(map->data(), map->size(), map->size(), path));
  return SafetensorsFile(std::move(map), std::move(header));
}

const TensorEntry& SafetensorsFile::entry(const std::string& name) const {
  const TensorEntry* e = header_->find(name);
  FERRY_CHECK(e != nullptr, path(), ": no tensor named '", name, "' (the file holds ", header_->tensors.size(),
              " tensors)");
  return *e;
}

std::pair<const uint8_t*, size_t> SafetensorsFile::bytes(const std::string& name) const {
  const TensorEntry& e = entry(name);
  return {map_->data() + header_->data_offset + e.begin, static_cast<size_t>(e.nbytes())};
}

}  // namespace ferry::io
