#pragma once
/// \file
/// The one JSON reader of ferry: every file ferry reads (safetensors headers, checkpoint indexes,
/// offload `index.json`, model trees, device maps, config.json) goes through it.
///
///     JsonDocument doc = read_json_file("model.safetensors.index.json");
///     JsonValue map = doc.root().at("weight_map", "the index");   // throws if absent
///     for (auto [name, shard] : map.items())                      // document order
///       use(name, shard.string("a shard name"));                  // throws if not a string
///
/// It is built on simdjson (parsing at GB/s: an index of 100,000 tensors takes milliseconds, where
/// nlohmann's ordered DOM took 92 s), and it is strict where a lenient reader would be silently
/// wrong: a key repeated within one object is an error (a lenient reader keeps one of the two; for a
/// checkpoint that picks one of two tensors), and so is nesting deeper than `max_depth`. Values are
/// views into their document: they live as long as it does. Writers use nlohmann's `dump()`.

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace ferry::io {

/// The nesting limit of parse_json: far above any file ferry reads (model trees nest a few dozen
/// levels), far below what could exhaust memory or stack in the walks that follow.
constexpr int kDefaultJsonMaxDepth = 512;

/// One value of a JsonDocument (null, bool, number, string, array or object): a 16-byte view.
class JsonValue {
 public:
  /// Storage of simdjson's element (a document pointer and a tape index), kept opaque so that
  /// simdjson's 1.5 MB header stays out of every file that includes this one.
  struct Opaque {
    const void* a = nullptr;
    size_t b = 0;
  };

  enum class Type { Null, Bool, Int, Uint, Double, String, Array, Object };

  Type type() const;
  /// "null", "boolean", "number", "string", "array" or "object" (for messages).
  const char* type_name() const;
  bool is_null() const { return type() == Type::Null; }
  bool is_bool() const { return type() == Type::Bool; }
  bool is_string() const { return type() == Type::String; }
  bool is_array() const { return type() == Type::Array; }
  bool is_object() const { return type() == Type::Object; }
  /// An integer in the document (no '.' or exponent), of either sign.
  bool is_integer() const { return type() == Type::Int || type() == Type::Uint; }
  bool is_number() const { return is_integer() || type() == Type::Double; }

  /// The value, when it has that type; else nullopt.
  std::optional<std::string_view> as_string() const;
  std::optional<bool> as_bool() const;
  /// Integers that fit (a negative one is not a uint64, one above 2^63 - 1 is not an int64).
  std::optional<int64_t> as_int64() const;
  std::optional<uint64_t> as_uint64() const;
  /// Any number, as a double.
  std::optional<double> as_double() const;

  /// The string; throws ferry::Error "<what> must be a string, got <json>" otherwise.
  std::string_view string(const std::string& what) const;

  /// Elements of an array, or fields of an object (0 for other values).
  size_t size() const;

  /// The member `key` of an object, or nullopt (also for a non-object). Linear in the object's size:
  /// iterate items() to visit every member.
  std::optional<JsonValue> find(std::string_view key) const;
  /// The member `key`; throws ferry::Error "<what> has no \"key\"" when absent.
  JsonValue at(std::string_view key, const std::string& what) const;

  /// The value as compact JSON text (for messages; long values are cut at `max_chars`).
  std::string dump(size_t max_chars = 200) const;

  class ArrayIterator;
  class ObjectIterator;
  /// A range for `for (JsonValue v : value.elements())`; empty for a non-array. It holds a copy of
  /// the value (a view), so `f().elements()` is safe in a range-for even when f returns a temporary.
  struct ArrayRange {
    ArrayIterator begin() const;
    ArrayIterator end() const;
    Opaque owner;
  };
  /// A range for `for (auto [key, value] : value.items())`; empty for a non-object.
  struct ObjectRange {
    ObjectIterator begin() const;
    ObjectIterator end() const;
    Opaque owner;
  };
  ArrayRange elements() const { return ArrayRange{raw_}; }
  ObjectRange items() const { return ObjectRange{raw_}; }

  explicit JsonValue(Opaque o) : raw_(o) {}
  JsonValue() = default;

 private:
  Opaque raw_;
};

/// Iterates an array's elements.
class JsonValue::ArrayIterator {
 public:
  using value_type = JsonValue;
  using difference_type = std::ptrdiff_t;
  using iterator_category = std::input_iterator_tag;
  explicit ArrayIterator(Opaque o) : raw_(o) {}
  JsonValue operator*() const;
  ArrayIterator& operator++();
  bool operator==(const ArrayIterator& o) const { return raw_.a == o.raw_.a && raw_.b == o.raw_.b; }
  bool operator!=(const ArrayIterator& o) const { return !(*this == o); }

 private:
  Opaque raw_;
};

/// Iterates an object's (key, value) members in document order.
class JsonValue::ObjectIterator {
 public:
  using value_type = std::pair<std::string_view, JsonValue>;
  using difference_type = std::ptrdiff_t;
  using iterator_category = std::input_iterator_tag;
  explicit ObjectIterator(Opaque o) : raw_(o) {}
  std::pair<std::string_view, JsonValue> operator*() const;
  ObjectIterator& operator++();
  bool operator==(const ObjectIterator& o) const { return raw_.a == o.raw_.a && raw_.b == o.raw_.b; }
  bool operator!=(const ObjectIterator& o) const { return !(*this == o); }

 private:
  Opaque raw_;
};

/// A parsed document: owns the parsed tape that its JsonValues view. Move-only.
class JsonDocument {
 public:
  JsonDocument();
  ~JsonDocument();
  JsonDocument(JsonDocument&&) noexcept;
  JsonDocument& operator=(JsonDocument&&) noexcept;
  JsonDocument(const JsonDocument&) = delete;
  JsonDocument& operator=(const JsonDocument&) = delete;

  /// The top-level value.
  const JsonValue& root() const { return root_; }

 private:
  friend JsonDocument parse_json(std::string_view, const std::string&, int);
  struct Parser;
  std::unique_ptr<Parser> parser_;
  JsonValue root_;
};

/// Parses `text`. Throws ferry::Error "[parse_json] <source> is not valid JSON (<reason>)",
/// "<source> names '<key>' twice in one object" or "<source> nests deeper than N levels"; callers
/// re-throw it under their own name with Error::in.
JsonDocument parse_json(std::string_view text, const std::string& source, int max_depth = kDefaultJsonMaxDepth);

/// Reads a whole regular file (io::read_regular_file: a folder or FIFO is refused by name) and
/// parses it with parse_json.
JsonDocument read_json_file(const std::string& path, int max_depth = kDefaultJsonMaxDepth);

/// Appends `text` to `out` as a JSON string literal (quotes, backslashes and control characters
/// escaped; other bytes as they are). For writers that stream large documents, where building an
/// nlohmann value per string would cost more than the text.
void append_json_string(std::string& out, std::string_view text);

}  // namespace ferry::io
