// The values a chat template computes with: Python's types as jinja2 sees them (None, bool, int, float,
// str, list, dict, jinja2's Undefined and callables), with Python's rules for truth, equality, str() and
// repr(), and json.dumps as transformers' `tojson` filter calls it. Internal to ferry_tokenizers.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ferry::tokenizers::jinja {

class Value;

/// A dict: insertion-ordered (as Python's), string keys (all a chat template gets from JSON).
struct Object {
  std::vector<std::pair<std::string, Value>> items;
  bool is_namespace = false;  // jinja2's namespace(): the one object `{% set ns.x = ... %}` may change

  const Value* find(std::string_view key) const;
  /// Replaces the value of `key`, or appends it.
  void set(std::string key, Value value);
};

/// Arguments of a call: positional, then keyword (`f(1, indent=4)`).
struct Args {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> named;

  /// The argument at `index` or named `name`; nullopt when given neither way.
  std::optional<Value> get(size_t index, std::string_view name) const;
};

using Function = std::function<Value(const Args&)>;

/// One value. Lists and dicts are shared, as Python's are (the sandbox forbids changing them in place;
/// namespaces are the exception, changed through `set`).
class Value {
 public:
  enum class Kind { Undefined, None, Bool, Int, Float, String, Array, Object, Function };

  Value() = default;  // Undefined
  static Value undefined(std::string hint);
  static Value none();
  Value(bool b);
  Value(int64_t i);
  Value(int i) : Value(static_cast<int64_t>(i)) {}
  Value(double f);
  Value(std::string s);
  Value(const char* s) : Value(std::string(s)) {}
  Value(std::vector<Value> items);
  Value(Object object);
  static Value function(std::string name, Function fn);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::Undefined; }
  bool is_none() const { return kind_ == Kind::None; }
  bool is_bool() const { return kind_ == Kind::Bool; }
  bool is_int() const { return kind_ == Kind::Int; }    // not bool (jinja's `integer` test)
  bool is_float() const { return kind_ == Kind::Float; }
  bool is_number() const { return kind_ == Kind::Int || kind_ == Kind::Float || kind_ == Kind::Bool; }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_array() const { return kind_ == Kind::Array; }
  bool is_object() const { return kind_ == Kind::Object; }
  bool is_function() const { return kind_ == Kind::Function; }

  bool as_bool() const { return b_; }
  int64_t as_int() const;   // Int or Bool
  double as_float() const;  // any number
  const std::string& str() const { return s_; }  // String; the hint of an Undefined; a function's name
  const std::vector<Value>& array() const { return *a_; }
  const Object& object() const { return *o_; }
  Object& mutable_object() const { return *o_; }
  const Function& fn() const { return *fn_; }

  /// Python's bool(): empty strings, lists and dicts, 0, None and Undefined are false.
  bool truthy() const;
  /// Python's ==: 1 == 1.0 == True, lists and dicts element by element; two Undefined are equal.
  bool operator==(const Value& other) const;
  bool operator!=(const Value& other) const { return !(*this == other); }
  /// Python's type name, as jinja2 writes it in messages ("str", "dict", "undefined", ...).
  std::string type_name() const;

 private:
  Kind kind_ = Kind::Undefined;
  bool b_ = false;
  int64_t i_ = 0;
  double f_ = 0;
  std::string s_;
  std::shared_ptr<std::vector<Value>> a_;
  std::shared_ptr<Object> o_;
  std::shared_ptr<Function> fn_;
};

/// Python's str(value) (what `{{ value }}` prints: "None", "True", "[1, 'a']"; "" for Undefined).
std::string to_str(const Value& v);
/// Python's repr(value).
std::string to_repr(const Value& v);
/// Python's repr(float): the shortest text that reads back to the same double ("1.0", "1e-05").
std::string float_repr(double f);

/// json.dumps(value, ensure_ascii=False, indent=indent, separators=..., sort_keys=...), as transformers'
/// tojson filter calls it. Throws std::invalid_argument for a value JSON cannot hold (Undefined, a function).
struct JsonDumpOptions {
  std::optional<std::string> indent;  // nullopt: one line
  std::string item_separator = ", ";
  std::string key_separator = ": ";
  bool sort_keys = false;
  bool ensure_ascii = false;
};
std::string to_json(const Value& v, const JsonDumpOptions& options);

// ---- Text as Python sees it: a sequence of code points -----------------------------------------
/// The code points of UTF-8 text (a byte that is not valid UTF-8 counts as one code point, its value).
std::u32string decode_utf8(std::string_view s);
std::string encode_utf8(std::u32string_view s);
/// Python's str.isspace() for one code point (the whitespace str.strip() and str.split() remove).
bool is_py_space(char32_t c);

}  // namespace ferry::tokenizers::jinja
