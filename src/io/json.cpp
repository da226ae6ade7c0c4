#include "ferry/io/json.h"

#include "ferry/core/error.h"
#include "ferry/io/regular_file.h"

#include <nlohmann/json.hpp>
#include <simdjson.h>

#include <cstring>
#include <type_traits>
#include <unordered_set>

namespace ferry::io {
namespace {

namespace dom = simdjson::dom;

// Note [Opaque simdjson values]: simdjson's element and iterators are trivially copyable 16-byte
// views (a document pointer and a tape index). JsonValue stores those bytes, so that the public
// header needs no simdjson include; these two functions are the only place that converts.
template <class T>
JsonValue::Opaque to_opaque(const T& v) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) == sizeof(JsonValue::Opaque),
                "simdjson's DOM views changed shape; update JsonValue::Opaque");
  JsonValue::Opaque o;
  std::memcpy(static_cast<void*>(&o), &v, sizeof o);
  return o;
}
template <class T>
T from_opaque(const JsonValue::Opaque& o) {
  T v;
  std::memcpy(static_cast<void*>(&v), &o, sizeof o);
  return v;
}

dom::element element_of(const JsonValue::Opaque& o) { return from_opaque<dom::element>(o); }

const char* error_text(simdjson::error_code code) {
  switch (code) {
    case simdjson::DEPTH_ERROR: return "nested too deep";
    case simdjson::NUMBER_ERROR: return "a number that cannot be read, or too large for 64 bits";
    case simdjson::NUMBER_OUT_OF_RANGE: return "a number that does not fit in 64 bits";
    case simdjson::UTF8_ERROR: return "invalid UTF-8";
    case simdjson::UNCLOSED_STRING: return "a string is not closed";
    case simdjson::EMPTY: return "the text is empty";
    case simdjson::TAPE_ERROR: return "a syntax error (a missing or extra bracket, comma or colon)";
    case simdjson::STRING_ERROR: return "a string has an invalid escape";
    case simdjson::T_ATOM_ERROR:
    case simdjson::F_ATOM_ERROR:
    case simdjson::N_ATOM_ERROR: return "a misspelt true, false or null";
    case simdjson::UNESCAPED_CHARS: return "a control character inside a string";
    case simdjson::CAPACITY: return "the text is too large";
    default: return simdjson::error_message(code);
  }
}

// Strictness that simdjson leaves to its users: a key repeated within one object. Objects are
// small (a linear scan) except a few large ones (an index's weight_map: a hash set).
void check_unique_keys(dom::element e, const std::string& source) {
  if (e.type() == dom::element_type::ARRAY) {
    for (dom::element v : dom::array(e)) check_unique_keys(v, source);
    return;
  }
  if (e.type() != dom::element_type::OBJECT) return;
  const dom::object object(e);
  constexpr size_t kLinearScanKeys = 16;
  std::unordered_set<std::string_view> seen;
  size_t n = 0;
  for (auto it = object.begin(); it != object.end(); ++it, ++n) {
    const std::string_view key = it.key();
    bool repeated = false;
    if (n < kLinearScanKeys) {
      for (auto prev = object.begin(); prev != it; ++prev) repeated = repeated || prev.key() == key;
    } else {
      if (seen.empty())
        for (auto prev = object.begin(); prev != it; ++prev) seen.insert(prev.key());
      repeated = !seen.insert(key).second;
    }
    if (repeated) throw Error("parse_json", source + " names '" + std::string(key) + "' twice in one object");
    check_unique_keys(it.value(), source);
  }
}

// Where the text goes wrong, for the message: simdjson says what kind of error but not where, so
// an invalid document (a rare, slow path) is scanned again by nlohmann's SAX parser, which reports a
// line and column. No DOM is built, so no input is too deep for it.
struct ErrorLocator {
  using json = nlohmann::json;
  std::string message;
  bool null() { return true; }
  bool boolean(bool) { return true; }
  bool number_integer(json::number_integer_t) { return true; }
  bool number_unsigned(json::number_unsigned_t) { return true; }
  bool number_float(json::number_float_t, const json::string_t&) { return true; }
  bool string(json::string_t&) { return true; }
  bool binary(json::binary_t&) { return true; }
  bool start_object(std::size_t) { return true; }
  bool key(json::string_t&) { return true; }
  bool end_object() { return true; }
  bool start_array(std::size_t) { return true; }
  bool end_array() { return true; }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) {
    message = e.what();
    const size_t tag_end = message.find("] ");  // "[json.exception.parse_error.101] parse error at line 1, ..."
    if (tag_end != std::string::npos) message = message.substr(tag_end + 2);
    return false;
  }
};

std::string describe_invalid(std::string_view text, simdjson::error_code code) {
  ErrorLocator locator;
  nlohmann::json::sax_parse(text.begin(), text.end(), &locator, nlohmann::detail::input_format_t::json, true);
  return locator.message.empty() ? error_text(code) : locator.message;
}

}  // namespace

// ---- JsonValue ----------------------------------------------------------------------------------

JsonValue::Type JsonValue::type() const {
  switch (element_of(raw_).type()) {
    case dom::element_type::ARRAY: return Type::Array;
    case dom::element_type::OBJECT: return Type::Object;
    case dom::element_type::INT64: return Type::Int;
    case dom::element_type::UINT64: return Type::Uint;
    case dom::element_type::DOUBLE: return Type::Double;
    case dom::element_type::STRING: return Type::String;
    case dom::element_type::BOOL: return Type::Bool;
    case dom::element_type::NULL_VALUE: return Type::Null;
  }
  return Type::Null;
}

const char* JsonValue::type_name() const {
  switch (type()) {
    case Type::Null: return "null";
    case Type::Bool: return "boolean";
    case Type::Int:
    case Type::Uint:
    case Type::Double: return "number";
    case Type::String: return "string";
    case Type::Array: return "array";
    case Type::Object: return "object";
  }
  return "value";
}

std::optional<std::string_view> JsonValue::as_string() const {
  std::string_view s;
  if (element_of(raw_).get_string().get(s)) return std::nullopt;
  return s;
}

std::optional<bool> JsonValue::as_bool() const {
  bool b = false;
  if (element_of(raw_).get_bool().get(b)) return std::nullopt;
  return b;
}

std::optional<int64_t> JsonValue::as_int64() const {
  int64_t v = 0;
  if (element_of(raw_).get_int64().get(v)) return std::nullopt;
  return v;
}

std::optional<uint64_t> JsonValue::as_uint64() const {
  uint64_t v = 0;
  if (element_of(raw_).get_uint64().get(v)) return std::nullopt;
  return v;
}

std::optional<double> JsonValue::as_double() const {
  double v = 0;
  if (element_of(raw_).get_double().get(v)) return std::nullopt;
  return v;
}

std::string_view JsonValue::string(const std::string& what) const {
  auto s = as_string();
  FERRY_CHECK(s.has_value(), what, " must be a string, got ", dump());
  return *s;
}

size_t JsonValue::size() const {
  const dom::element e = element_of(raw_);
  if (e.type() == dom::element_type::ARRAY) return dom::array(e).size();
  if (e.type() == dom::element_type::OBJECT) return dom::object(e).size();
  return 0;
}

std::optional<JsonValue> JsonValue::find(std::string_view key) const {
  const dom::element e = element_of(raw_);
  if (e.type() != dom::element_type::OBJECT) return std::nullopt;
  dom::element v;
  if (dom::object(e).at_key(key).get(v)) return std::nullopt;
  return JsonValue(to_opaque(v));
}

JsonValue JsonValue::at(std::string_view key, const std::string& what) const {
  auto v = find(key);
  FERRY_CHECK(v.has_value(), what, " has no \"", key, "\"");
  return *v;
}

std::string JsonValue::dump(size_t max_chars) const {
  std::string text = simdjson::minify(element_of(raw_));
  if (text.size() > max_chars) text = text.substr(0, max_chars) + "...";
  return text;
}

JsonValue::ArrayIterator JsonValue::ArrayRange::begin() const {
  const dom::element e = element_of(owner);
  if (e.type() != dom::element_type::ARRAY) return ArrayIterator(Opaque{});
  return ArrayIterator(to_opaque(dom::array(e).begin()));
}
JsonValue::ArrayIterator JsonValue::ArrayRange::end() const {
  const dom::element e = element_of(owner);
  if (e.type() != dom::element_type::ARRAY) return ArrayIterator(Opaque{});
  return ArrayIterator(to_opaque(dom::array(e).end()));
}
JsonValue JsonValue::ArrayIterator::operator*() const {
  return JsonValue(to_opaque(*from_opaque<dom::array::iterator>(raw_)));
}
JsonValue::ArrayIterator& JsonValue::ArrayIterator::operator++() {
  auto it = from_opaque<dom::array::iterator>(raw_);
  ++it;
  raw_ = to_opaque(it);
  return *this;
}

JsonValue::ObjectIterator JsonValue::ObjectRange::begin() const {
  const dom::element e = element_of(owner);
  if (e.type() != dom::element_type::OBJECT) return ObjectIterator(Opaque{});
  return ObjectIterator(to_opaque(dom::object(e).begin()));
}
JsonValue::ObjectIterator JsonValue::ObjectRange::end() const {
  const dom::element e = element_of(owner);
  if (e.type() != dom::element_type::OBJECT) return ObjectIterator(Opaque{});
  return ObjectIterator(to_opaque(dom::object(e).end()));
}
std::pair<std::string_view, JsonValue> JsonValue::ObjectIterator::operator*() const {
  const auto it = from_opaque<dom::object::iterator>(raw_);
  return {it.key(), JsonValue(to_opaque(it.value()))};
}
JsonValue::ObjectIterator& JsonValue::ObjectIterator::operator++() {
  auto it = from_opaque<dom::object::iterator>(raw_);
  ++it;
  raw_ = to_opaque(it);
  return *this;
}

// ---- JsonDocument -------------------------------------------------------------------------------

struct JsonDocument::Parser {
  dom::parser parser;
};

JsonDocument::JsonDocument() = default;
JsonDocument::~JsonDocument() = default;
JsonDocument::JsonDocument(JsonDocument&&) noexcept = default;
JsonDocument& JsonDocument::operator=(JsonDocument&&) noexcept = default;

JsonDocument parse_json(std::string_view text, const std::string& source, int max_depth) {
  JsonDocument doc;
  doc.parser_ = std::make_unique<JsonDocument::Parser>();
  dom::parser& parser = doc.parser_->parser;
  if (auto error = parser.allocate(text.size(), static_cast<size_t>(max_depth)))
    throw Error("parse_json", source + ": cannot allocate the parser: " + simdjson::error_message(error));
  dom::element root;
  if (auto error = parser.parse(text.data(), text.size(), /*realloc_if_needed=*/true).get(root)) {
    if (error == simdjson::DEPTH_ERROR)
      throw Error("parse_json", source + " nests deeper than " + std::to_string(max_depth) + " levels");
    throw Error("parse_json", source + " is not valid JSON (" + describe_invalid(text, error) + ")");
  }
  check_unique_keys(root, source);
  doc.root_ = JsonValue(to_opaque(root));
  return doc;
}

void append_json_string(std::string& out, std::string_view text) {
  static const char* const hex = "0123456789abcdef";
  out += '"';
  for (const char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += "\\u00";
          out += hex[(c >> 4) & 0xF];
          out += hex[c & 0xF];
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

JsonDocument read_json_file(const std::string& path, int max_depth) {
  return parse_json(read_regular_file(path, "read_json_file"), path, max_depth);
}

}  // namespace ferry::io
