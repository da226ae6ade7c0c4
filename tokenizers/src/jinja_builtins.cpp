// jinja2's filters and tests, Python's str and dict methods, and jinja2's attribute and item lookup for
// the chat-template engine; see jinja_builtins.h.
#include "jinja_builtins.h"

#include <utf8proc.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <stdexcept>

namespace ferry::tokenizers::jinja {

namespace {

[[noreturn]] void fail(std::string message) { throw TemplateError{0, std::move(message)}; }

std::string py_type(const Value& v) { return v.type_name(); }

// ---- str helpers (Python's str methods work on code points) ------------------------------------

char32_t upper(char32_t c) { return static_cast<char32_t>(utf8proc_toupper(static_cast<utf8proc_int32_t>(c))); }
char32_t lower(char32_t c) { return static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c))); }
char32_t title(char32_t c) { return static_cast<char32_t>(utf8proc_totitle(static_cast<utf8proc_int32_t>(c))); }
bool is_cased(char32_t c) {
  auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT;
}

std::string str_upper(const std::string& s) {
  std::u32string c = decode_utf8(s);
  for (auto& ch : c) ch = upper(ch);
  return encode_utf8(c);
}
std::string str_lower(const std::string& s) {
  std::u32string c = decode_utf8(s);
  for (auto& ch : c) ch = lower(ch);
  return encode_utf8(c);
}
std::string str_capitalize(const std::string& s) {
  std::u32string c = decode_utf8(s);
  for (size_t i = 0; i < c.size(); ++i) c[i] = i == 0 ? title(c[i]) : lower(c[i]);
  return encode_utf8(c);
}
/// Python's str.title(): a cased character after an uncased one starts a word.
std::string str_title(const std::string& s) {
  std::u32string c = decode_utf8(s);
  bool previous_cased = false;
  for (auto& ch : c) {
    const bool cased = is_cased(ch);
    ch = previous_cased ? lower(ch) : title(ch);
    previous_cased = cased;
  }
  return encode_utf8(c);
}
/// jinja2's `title` filter: words start after whitespace and any of -({[<.
std::string jinja_title(const std::string& s) {
  std::u32string c = decode_utf8(s), out;
  bool word_start = true;
  for (char32_t ch : c) {
    const bool separator = is_py_space(ch) || ch == '-' || ch == '(' || ch == '{' || ch == '[' || ch == '<';
    if (separator) {
      out.push_back(ch);
      word_start = true;
    } else {
      out.push_back(word_start ? upper(ch) : lower(ch));
      word_start = false;
    }
  }
  return encode_utf8(out);
}

std::string strip(const std::string& s, const Value& chars, bool left, bool right) {
  std::u32string c = decode_utf8(s);
  std::u32string set;
  const bool whitespace = chars.is_undefined() || chars.is_none();
  if (!whitespace) {
    if (!chars.is_string()) fail("strip arg must be None or str");
    set = decode_utf8(chars.str());
  }
  auto strip_it = [&](char32_t ch) { return whitespace ? is_py_space(ch) : set.find(ch) != std::u32string::npos; };
  size_t b = 0, e = c.size();
  if (left)
    while (b < e && strip_it(c[b])) ++b;
  if (right)
    while (e > b && strip_it(c[e - 1])) --e;
  return encode_utf8(std::u32string_view(c).substr(b, e - b));
}

Value split(const std::string& s, const Value& sep, int64_t maxsplit) {
  std::vector<Value> out;
  if (sep.is_undefined() || sep.is_none()) {  // runs of whitespace, no empty pieces
    std::u32string c = decode_utf8(s);
    size_t i = 0;
    while (true) {
      while (i < c.size() && is_py_space(c[i])) ++i;
      if (i >= c.size()) break;
      if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
        size_t e = c.size();
        while (e > i && is_py_space(c[e - 1])) --e;
        out.emplace_back(encode_utf8(std::u32string_view(c).substr(i, e - i)));
        break;
      }
      size_t j = i;
      while (j < c.size() && !is_py_space(c[j])) ++j;
      out.emplace_back(encode_utf8(std::u32string_view(c).substr(i, j - i)));
      i = j;
    }
    return Value(std::move(out));
  }
  if (!sep.is_string()) fail("must be str or None, not " + py_type(sep));
  const std::string& d = sep.str();
  if (d.empty()) fail("empty separator");
  size_t pos = 0;
  while (true) {
    size_t hit = s.find(d, pos);
    if (hit == std::string::npos || (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit)) {
      out.emplace_back(s.substr(pos));
      break;
    }
    out.emplace_back(s.substr(pos, hit - pos));
    pos = hit + d.size();
  }
  return Value(std::move(out));
}

std::string replace(const std::string& s, const std::string& from, const std::string& to, int64_t count) {
  std::string out;
  if (from.empty()) {  // Python inserts `to` around every character
    std::u32string c = decode_utf8(s);
    int64_t done = 0;
    for (size_t i = 0; i <= c.size(); ++i) {
      if (count < 0 || done < count) {
        out += to;
        ++done;
      }
      if (i < c.size()) out += encode_utf8(std::u32string_view(&c[i], 1));
    }
    return out;
  }
  size_t pos = 0;
  int64_t done = 0;
  for (size_t hit; (count < 0 || done < count) && (hit = s.find(from, pos)) != std::string::npos; ++done) {
    out.append(s, pos, hit - pos);
    out += to;
    pos = hit + from.size();
  }
  out.append(s, pos, std::string::npos);
  return out;
}

bool affix_matches(const std::string& s, const Value& affix, bool prefix) {
  auto one = [&](const Value& a) {
    if (!a.is_string()) fail(std::string(prefix ? "startswith" : "endswith") + " first arg must be str or a tuple of str");
    const std::string& x = a.str();
    if (x.size() > s.size()) return false;
    return prefix ? s.compare(0, x.size(), x) == 0 : s.compare(s.size() - x.size(), x.size(), x) == 0;
  };
  if (affix.is_array()) {
    for (const Value& a : affix.array())
      if (one(a)) return true;
    return false;
  }
  return one(affix);
}

int64_t int_arg(const Args& args, size_t index, const char* name, int64_t fallback) {
  auto v = args.get(index, name);
  if (!v || v->is_none()) return fallback;
  if (!v->is_int() && !v->is_bool()) fail(std::string("argument '") + name + "' must be an integer");
  return v->as_int();
}

Value arg(const Args& args, size_t index, const char* name) {
  auto v = args.get(index, name);
  return v ? *v : Value();
}

std::string str_arg(const Args& args, size_t index, const char* name) {
  auto v = args.get(index, name);
  if (!v || !v->is_string()) fail(std::string("argument '") + name + "' must be a string");
  return v->str();
}

// ---- methods -----------------------------------------------------------------------------------

const std::set<std::string> kStrMethods = {
    "strip", "lstrip", "rstrip", "split", "startswith", "endswith", "upper", "lower", "title", "capitalize",
    "replace", "find", "rfind", "count", "join", "isdigit", "isalpha", "isalnum", "isspace", "isupper",
    "islower", "removeprefix", "removesuffix"};
const std::set<std::string> kDictMethods = {"items", "keys", "values", "get"};
/// dict's other methods: jinja2 finds them before the items of the same name; unsupported here.
const std::set<std::string> kUnsupportedDictMethods = {"pop", "popitem", "setdefault", "update", "clear", "copy",
                                                       "fromkeys"};
const std::set<std::string> kUnsupportedMethods = {
    // str
    "format", "format_map", "casefold", "center", "encode", "expandtabs", "index", "rindex", "ljust",
    "rjust", "partition", "rpartition", "rsplit", "splitlines", "swapcase", "translate", "zfill",
    "isdecimal", "isnumeric", "isidentifier", "isprintable", "istitle", "isascii", "maketrans",
    // list and dict (the sandbox forbids changing them; the others are unimplemented)
    "append", "extend", "insert", "pop", "remove", "sort", "reverse", "clear", "copy", "update",
    "setdefault", "popitem", "fromkeys"};

Value str_method(const std::string& s, const std::string& name, const Args& a) {
  if (name == "strip") return Value(strip(s, arg(a, 0, "chars"), true, true));
  if (name == "lstrip") return Value(strip(s, arg(a, 0, "chars"), true, false));
  if (name == "rstrip") return Value(strip(s, arg(a, 0, "chars"), false, true));
  if (name == "split") return split(s, arg(a, 0, "sep"), int_arg(a, 1, "maxsplit", -1));
  if (name == "startswith") return Value(affix_matches(s, arg(a, 0, "prefix"), true));
  if (name == "endswith") return Value(affix_matches(s, arg(a, 0, "suffix"), false));
  if (name == "upper") return Value(str_upper(s));
  if (name == "lower") return Value(str_lower(s));
  if (name == "title") return Value(str_title(s));
  if (name == "capitalize") return Value(str_capitalize(s));
  if (name == "replace")
    return Value(replace(s, str_arg(a, 0, "old"), str_arg(a, 1, "new"), int_arg(a, 2, "count", -1)));
  if (name == "find" || name == "rfind") {
    const std::string sub = str_arg(a, 0, "sub");
    size_t hit = name == "find" ? s.find(sub) : s.rfind(sub);
    if (hit == std::string::npos) return Value(int64_t{-1});
    return Value(static_cast<int64_t>(decode_utf8(std::string_view(s).substr(0, hit)).size()));
  }
  if (name == "count") {
    const std::string sub = str_arg(a, 0, "sub");
    if (sub.empty()) return Value(static_cast<int64_t>(decode_utf8(s).size() + 1));
    int64_t n = 0;
    for (size_t pos = 0; (pos = s.find(sub, pos)) != std::string::npos; pos += sub.size()) ++n;
    return Value(n);
  }
  if (name == "join") {
    std::string out;
    bool first = true;
    for (const Value& v : iterate(arg(a, 0, "iterable"))) {
      if (!v.is_string()) fail("sequence item: expected str instance, " + py_type(v) + " found");
      if (!first) out += s;
      first = false;
      out += v.str();
    }
    return Value(out);
  }
  if (name == "removeprefix") {
    const std::string p = str_arg(a, 0, "prefix");
    return Value(s.compare(0, p.size(), p) == 0 ? s.substr(p.size()) : s);
  }
  if (name == "removesuffix") {
    const std::string p = str_arg(a, 0, "suffix");
    return Value(!p.empty() && s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0
                     ? s.substr(0, s.size() - p.size())
                     : s);
  }
  // is* predicates: false for the empty string
  std::u32string c = decode_utf8(s);
  if (c.empty()) return Value(false);
  auto all = [&](auto pred) { return Value(std::all_of(c.begin(), c.end(), pred)); };
  auto cat = [](char32_t ch) { return utf8proc_category(static_cast<utf8proc_int32_t>(ch)); };
  auto alpha = [&](char32_t ch) {
    auto k = cat(ch);
    return k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT ||
           k == UTF8PROC_CATEGORY_LM || k == UTF8PROC_CATEGORY_LO;
  };
  auto digit = [&](char32_t ch) { return cat(ch) == UTF8PROC_CATEGORY_ND; };
  if (name == "isdigit") return all(digit);
  if (name == "isalpha") return all(alpha);
  if (name == "isalnum") return all([&](char32_t ch) { return alpha(ch) || digit(ch); });
  if (name == "isspace") return all(is_py_space);
  const bool any_cased = std::any_of(c.begin(), c.end(), is_cased);
  if (name == "isupper")
    return Value(any_cased && std::none_of(c.begin(), c.end(), [&](char32_t ch) { return cat(ch) == UTF8PROC_CATEGORY_LL || cat(ch) == UTF8PROC_CATEGORY_LT; }));
  if (name == "islower")
    return Value(any_cased && std::none_of(c.begin(), c.end(), [&](char32_t ch) { return cat(ch) == UTF8PROC_CATEGORY_LU || cat(ch) == UTF8PROC_CATEGORY_LT; }));
  fail("'str." + name + "' is not supported");
}

Value dict_method(const Value& d, const std::string& name, const Args& a) {
  const Object& o = d.object();
  if (name == "items") {
    std::vector<Value> out;
    for (const auto& [k, v] : o.items) out.emplace_back(std::vector<Value>{Value(k), v});
    return Value(std::move(out));
  }
  if (name == "keys") {
    std::vector<Value> out;
    for (const auto& kv : o.items) out.emplace_back(kv.first);
    return Value(std::move(out));
  }
  if (name == "values") {
    std::vector<Value> out;
    for (const auto& kv : o.items) out.push_back(kv.second);
    return Value(std::move(out));
  }
  // get(key, default=None)
  Value key = arg(a, 0, "key");
  if (key.is_string())
    if (const Value* v = o.find(key.str())) return *v;
  auto fallback = a.get(1, "default");
  return fallback ? *fallback : Value::none();
}

// ---- sort and compare --------------------------------------------------------------------------

bool less(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) return a.as_float() < b.as_float();
  if (a.is_string() && b.is_string()) return a.str() < b.str();
  if (a.is_array() && b.is_array())
    return std::lexicographical_compare(a.array().begin(), a.array().end(), b.array().begin(), b.array().end(),
                                        less);
  fail("'<' not supported between instances of '" + py_type(a) + "' and '" + py_type(b) + "'");
}

/// The value at a dotted attribute path ("a.b" or "a.0"), as jinja2's make_attrgetter.
Value attribute_path(const Value& v, const std::string& path) {
  Value cur = v;
  size_t pos = 0;
  while (true) {
    size_t dot = path.find('.', pos);
    std::string part = path.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
    bool numeric = !part.empty() && std::all_of(part.begin(), part.end(), ::isdigit);
    cur = numeric ? get_item(cur, Value(static_cast<int64_t>(std::stoll(part)))) : get_item(cur, Value(part));
    if (dot == std::string::npos) return cur;
    pos = dot + 1;
  }
}

Value sort_key(const Value& v, bool case_sensitive) {
  if (!case_sensitive && v.is_string()) return Value(str_lower(v.str()));
  return v;
}

/// Test name and arguments of select/reject (args from `first`), or truthiness when no test is named.
bool select_test(const Value& v, const Args& args, size_t first) {
  if (args.positional.size() <= first) return v.truthy();
  const Value& test = args.positional[first];
  if (!test.is_string()) fail("the test of select/reject must be named by a string");
  Args rest;
  rest.positional.assign(args.positional.begin() + static_cast<std::ptrdiff_t>(first) + 1, args.positional.end());
  rest.named = args.named;
  if (!has_test(test.str())) fail("test '" + test.str() + "' is not supported");
  return apply_test(test.str(), v, rest);
}

// ---- filters -----------------------------------------------------------------------------------

Value to_int(const Value& v, const Value& fallback, int base) {
  if (v.is_int() || v.is_bool()) return Value(v.as_int());
  if (v.is_float()) return Value(static_cast<int64_t>(std::trunc(v.as_float())));
  if (v.is_string()) {
    std::string s = strip(v.str(), Value(), true, true);
    std::string t;
    for (char c : s)
      if (c != '_') t += c;
    if (!t.empty()) {
      char* end = nullptr;
      long long i = std::strtoll(t.c_str(), &end, base);
      if (*end == '\0') return Value(static_cast<int64_t>(i));
      double f = std::strtod(t.c_str(), &end);
      if (*end == '\0' && std::isfinite(f)) return Value(static_cast<int64_t>(std::trunc(f)));
    }
  }
  return fallback;
}

Value to_float(const Value& v, const Value& fallback) {
  if (v.is_number()) return Value(v.as_float());
  if (v.is_string()) {
    std::string s = strip(v.str(), Value(), true, true);
    char* end = nullptr;
    double f = std::strtod(s.c_str(), &end);
    if (!s.empty() && *end == '\0') return Value(f);
  }
  return fallback;
}

Value tojson(const Value& v, const Args& a) {
  // transformers: tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
  JsonDumpOptions o;
  o.ensure_ascii = arg(a, 0, "ensure_ascii").truthy();
  Value indent = arg(a, 1, "indent");
  if (indent.is_int()) o.indent = std::string(static_cast<size_t>(std::max<int64_t>(0, indent.as_int())), ' ');
  else if (indent.is_string()) o.indent = indent.str();
  else if (!indent.is_undefined() && !indent.is_none()) fail("tojson: indent must be an integer or a string");
  if (o.indent) o.item_separator = ",";
  Value separators = arg(a, 2, "separators");
  if (separators.is_array() && separators.array().size() == 2 && separators.array()[0].is_string() &&
      separators.array()[1].is_string()) {
    o.item_separator = separators.array()[0].str();
    o.key_separator = separators.array()[1].str();
  } else if (!separators.is_undefined() && !separators.is_none()) {
    fail("tojson: separators must be a pair of strings");
  }
  o.sort_keys = arg(a, 3, "sort_keys").truthy();
  try {
    return Value(to_json(v, o));
  } catch (const std::invalid_argument& e) {
    fail(std::string("tojson: ") + e.what());
  }
}

using FilterFn = Value (*)(const Value&, const Args&);

const std::map<std::string, FilterFn>& filters() {
  static const std::map<std::string, FilterFn> table = {
      {"abs",
       [](const Value& v, const Args&) {
         if (v.is_float()) return Value(std::fabs(v.as_float()));
         if (v.is_number()) return Value(std::abs(v.as_int()));
         fail("bad operand type for abs(): '" + py_type(v) + "'");
       }},
      {"capitalize", [](const Value& v, const Args&) { return Value(str_capitalize(to_str(v))); }},
      {"default",
       [](const Value& v, const Args& a) {
         const bool boolean = arg(a, 1, "boolean").truthy();
         if (v.is_undefined() || (boolean && !v.truthy())) {
           auto d = a.get(0, "default_value");
           return d ? *d : Value("");
         }
         return v;
       }},
      {"first",
       [](const Value& v, const Args&) {
         auto items = iterate(v);
         return items.empty() ? Value::undefined("No first item, sequence was empty.") : items.front();
       }},
      {"last",
       [](const Value& v, const Args&) {
         auto items = iterate(v);
         return items.empty() ? Value::undefined("No last item, sequence was empty.") : items.back();
       }},
      {"float", [](const Value& v, const Args& a) { return to_float(v, a.get(0, "default").value_or(Value(0.0))); }},
      {"int",
       [](const Value& v, const Args& a) {
         return to_int(v, a.get(0, "default").value_or(Value(int64_t{0})), static_cast<int>(int_arg(a, 1, "base", 10)));
       }},
      {"items",
       [](const Value& v, const Args& a) {
         if (v.is_undefined()) return Value(std::vector<Value>{});
         if (!v.is_object() || v.object().is_namespace) fail("Can only get item pairs from a mapping.");
         return dict_method(v, "items", a);
       }},
      {"join",
       [](const Value& v, const Args& a) {
         const std::string sep = a.get(0, "d").has_value() ? to_str(*a.get(0, "d")) : "";
         Value attribute = arg(a, 1, "attribute");
         std::string out;
         bool first = true;
         for (const Value& item : iterate(v)) {
           if (!first) out += sep;
           first = false;
           out += to_str(attribute.is_undefined() || attribute.is_none() ? item : attribute_path(item, to_str(attribute)));
         }
         return Value(out);
       }},
      {"length", [](const Value& v, const Args&) { return Value(length(v)); }},
      {"list", [](const Value& v, const Args&) { return Value(iterate(v)); }},
      {"lower", [](const Value& v, const Args&) { return Value(str_lower(to_str(v))); }},
      {"upper", [](const Value& v, const Args&) { return Value(str_upper(to_str(v))); }},
      {"title", [](const Value& v, const Args&) { return Value(jinja_title(to_str(v))); }},
      {"map",
       [](const Value& v, const Args& a) {
         std::vector<Value> out;
         auto attribute = a.get(0xffff, "attribute");
         if (attribute) {
           auto fallback = a.get(0xffff, "default");
           for (const Value& item : iterate(v)) {
             Value x = attribute_path(item, to_str(*attribute));
             out.push_back(x.is_undefined() && fallback ? *fallback : x);
           }
           return Value(std::move(out));
         }
         if (a.positional.empty() || !a.positional[0].is_string()) fail("map: name a filter or an attribute=");
         const std::string filter = a.positional[0].str();
         if (!has_filter(filter)) fail("filter '" + filter + "' is not supported");
         Args rest;
         rest.positional.assign(a.positional.begin() + 1, a.positional.end());
         rest.named = a.named;
         for (const Value& item : iterate(v)) out.push_back(apply_filter(filter, item, rest));
         return Value(std::move(out));
       }},
      {"select",
       [](const Value& v, const Args& a) {
         std::vector<Value> out;
         for (const Value& item : iterate(v))
           if (select_test(item, a, 0)) out.push_back(item);
         return Value(std::move(out));
       }},
      {"reject",
       [](const Value& v, const Args& a) {
         std::vector<Value> out;
         for (const Value& item : iterate(v))
           if (!select_test(item, a, 0)) out.push_back(item);
         return Value(std::move(out));
       }},
      {"selectattr",
       [](const Value& v, const Args& a) {
         std::vector<Value> out;
         const std::string attribute = str_arg(a, 0, "attribute");
         for (const Value& item : iterate(v))
           if (select_test(attribute_path(item, attribute), a, 1)) out.push_back(item);
         return Value(std::move(out));
       }},
      {"rejectattr",
       [](const Value& v, const Args& a) {
         std::vector<Value> out;
         const std::string attribute = str_arg(a, 0, "attribute");
         for (const Value& item : iterate(v))
           if (!select_test(attribute_path(item, attribute), a, 1)) out.push_back(item);
         return Value(std::move(out));
       }},
      {"replace",
       [](const Value& v, const Args& a) {
         return Value(replace(to_str(v), to_str(arg(a, 0, "old")), to_str(arg(a, 1, "new")), int_arg(a, 2, "count", -1)));
       }},
      {"reverse",
       [](const Value& v, const Args&) {
         if (v.is_string()) {
           std::u32string c = decode_utf8(v.str());
           std::reverse(c.begin(), c.end());
           return Value(encode_utf8(c));
         }
         auto items = iterate(v);
         std::reverse(items.begin(), items.end());
         return Value(std::move(items));
       }},
      {"safe", [](const Value& v, const Args&) { return v; }},
      {"sort",
       [](const Value& v, const Args& a) {
         const bool reverse = arg(a, 0, "reverse").truthy();
         const bool case_sensitive = arg(a, 1, "case_sensitive").truthy();
         Value attribute = arg(a, 2, "attribute");
         auto items = iterate(v);
         auto key = [&](const Value& x) {
           return sort_key(attribute.is_undefined() || attribute.is_none() ? x : attribute_path(x, to_str(attribute)),
                           case_sensitive);
         };
         std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
           return reverse ? less(key(y), key(x)) : less(key(x), key(y));
         });
         return Value(std::move(items));
       }},
      {"string", [](const Value& v, const Args&) { return Value(to_str(v)); }},
      {"sum",
       [](const Value& v, const Args& a) {
         Value attribute = arg(a, 0, "attribute");
         Value total = a.get(1, "start").value_or(Value(int64_t{0}));
         for (const Value& item : iterate(v)) {
           Value x = attribute.is_undefined() || attribute.is_none() ? item : attribute_path(item, to_str(attribute));
           if (!x.is_number() || !total.is_number()) fail("sum: unsupported operand types");
           total = (x.is_float() || total.is_float()) ? Value(total.as_float() + x.as_float())
                                                      : Value(total.as_int() + x.as_int());
         }
         return total;
       }},
      {"tojson", tojson},
      {"trim",
       [](const Value& v, const Args& a) { return Value(strip(to_str(v), arg(a, 0, "chars"), true, true)); }},
      {"unique",
       [](const Value& v, const Args& a) {
         const bool case_sensitive = arg(a, 0, "case_sensitive").truthy();
         Value attribute = arg(a, 1, "attribute");
         std::vector<Value> out, seen;
         for (const Value& item : iterate(v)) {
           Value k = sort_key(attribute.is_undefined() || attribute.is_none() ? item : attribute_path(item, to_str(attribute)),
                              case_sensitive);
           if (std::find(seen.begin(), seen.end(), k) != seen.end()) continue;
           seen.push_back(k);
           out.push_back(item);
         }
         return Value(std::move(out));
       }},
  };
  return table;
}

const std::map<std::string, std::string>& filter_aliases() {
  static const std::map<std::string, std::string> aliases = {{"d", "default"}, {"count", "length"}};
  return aliases;
}

const std::string& canonical_filter(const std::string& name) {
  auto it = filter_aliases().find(name);
  return it == filter_aliases().end() ? name : it->second;
}

// ---- tests -------------------------------------------------------------------------------------

bool compare_test(const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return a == b;
  if (op == "!=") return a != b;
  if (op == "<") return less(a, b);
  if (op == ">") return less(b, a);
  if (op == "<=") return !less(b, a);
  return !less(a, b);  // >=
}

const std::map<std::string, std::string>& compare_tests() {
  static const std::map<std::string, std::string> table = {
      {"eq", "=="}, {"equalto", "=="}, {"==", "=="}, {"ne", "!="}, {"!=", "!="}, {"lt", "<"}, {"lessthan", "<"},
      {"<", "<"},   {"le", "<="},      {"<=", "<="}, {"gt", ">"},  {"greaterthan", ">"}, {">", ">"}, {"ge", ">="},
      {">=", ">="}};
  return table;
}

const std::set<std::string> kTests = {"defined", "undefined", "none",    "boolean",  "true",     "false",
                                      "integer", "float",     "number",  "string",   "mapping",  "sequence",
                                      "iterable", "callable", "sameas",  "lower",    "upper",    "odd",
                                      "even",    "divisibleby", "in",    "escaped"};

}  // namespace

// ---- public ------------------------------------------------------------------------------------

void undefined_error(const Value& v) { fail(v.str().empty() ? "a value is undefined" : v.str()); }

bool has_filter(const std::string& name) { return filters().count(canonical_filter(name)) > 0; }
bool has_test(const std::string& name) { return kTests.count(name) || compare_tests().count(name); }
bool is_unsupported_method(const std::string& name) { return kUnsupportedMethods.count(name) > 0; }

Value apply_filter(const std::string& name, const Value& value, const Args& args) {
  auto it = filters().find(canonical_filter(name));
  if (it == filters().end()) fail("filter '" + name + "' is not supported");
  const std::string& n = it->first;
  // jinja2's filters read an Undefined as "" (str filters), an empty sequence (length, list, join,
  // items, ...), or return it (default); the ones that need a real value fail on it.
  if (value.is_undefined() && (n == "abs" || n == "tojson" || n == "sort" || n == "sum")) undefined_error(value);
  return it->second(value, args);
}

bool apply_test(const std::string& name, const Value& v, const Args& a) {
  auto cmp = compare_tests().find(name);
  if (cmp != compare_tests().end()) return compare_test(cmp->second, v, arg(a, 0, "other"));
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "boolean") return v.is_bool();
  if (name == "true") return v.is_bool() && v.as_bool();
  if (name == "false") return v.is_bool() && !v.as_bool();
  if (name == "integer") return v.is_int();
  if (name == "float") return v.is_float();
  if (name == "number") return v.is_number();
  if (name == "string") return v.is_string();
  if (name == "mapping") return v.is_object() && !v.object().is_namespace;
  if (name == "sequence") return v.is_string() || v.is_array() || (v.is_object() && !v.object().is_namespace);
  if (name == "iterable")
    return v.is_undefined() || v.is_string() || v.is_array() || (v.is_object() && !v.object().is_namespace);
  if (name == "callable") return v.is_function();
  if (name == "sameas") {
    Value other = arg(a, 0, "other");
    if (v.kind() != other.kind()) return false;
    if (v.is_none() || v.is_bool()) return v == other;
    if (v.is_array() || v.is_object()) return &v.array() == &other.array();
    return false;  // other objects: identity is not observable here
  }
  if (name == "lower") return v.is_string() && str_lower(v.str()) == v.str();
  if (name == "upper") return v.is_string() && str_upper(v.str()) == v.str();
  if (name == "odd" || name == "even" || name == "divisibleby") {
    if (!v.is_int() && !v.is_bool()) fail("test '" + name + "' needs an integer");
    if (name == "odd") return ((v.as_int() % 2) + 2) % 2 == 1;
    if (name == "even") return v.as_int() % 2 == 0;
    int64_t n = int_arg(a, 0, "num", 0);
    if (n == 0) fail("integer division or modulo by zero");
    return v.as_int() % n == 0;
  }
  if (name == "in") return contains(arg(a, 0, "seq"), v);
  if (name == "escaped") return false;
  fail("test '" + name + "' is not supported");
}

Value get_attr(const Value& obj, const std::string& name) {
  switch (obj.kind()) {
    case Value::Kind::Undefined: undefined_error(obj);
    case Value::Kind::Object: {
      const Object& o = obj.object();
      if (!o.is_namespace && kDictMethods.count(name))
        return Value::function("dict." + name, [obj, name](const Args& a) { return dict_method(obj, name, a); });
      if (!o.is_namespace && kUnsupportedDictMethods.count(name)) fail("'dict." + name + "' is not supported");
      if (const Value* v = o.find(name)) return *v;
      return Value::undefined("'" + std::string(o.is_namespace ? "Namespace" : "dict object") +
                              "' has no attribute '" + name + "'");
    }
    case Value::Kind::String:
      if (kStrMethods.count(name)) {
        std::string s = obj.str();
        return Value::function("str." + name, [s, name](const Args& a) { return str_method(s, name, a); });
      }
      if (kUnsupportedMethods.count(name)) fail("'str." + name + "' is not supported");
      return Value::undefined("'str object' has no attribute '" + name + "'");
    case Value::Kind::Array:
      if (kUnsupportedMethods.count(name)) fail("'list." + name + "' is not supported");
      return Value::undefined("'list object' has no attribute '" + name + "'");
    default: return Value::undefined("'" + obj.type_name() + " object' has no attribute '" + name + "'");
  }
}

Value get_item(const Value& obj, const Value& key) {
  switch (obj.kind()) {
    case Value::Kind::Undefined: undefined_error(obj);
    case Value::Kind::Object:
      if (key.is_string()) {
        if (const Value* v = obj.object().find(key.str())) return *v;
        return get_attr(obj, key.str());
      }
      return Value::undefined("'dict object' has no attribute '" + to_str(key) + "'");
    case Value::Kind::Array:
    case Value::Kind::String: {
      if (key.is_string()) return get_attr(obj, key.str());
      if (!key.is_int() && !key.is_bool()) return Value::undefined("'" + obj.type_name() + " object' has no element " + to_repr(key));
      int64_t i = key.as_int();
      if (obj.is_array()) {
        const int64_t n = static_cast<int64_t>(obj.array().size());
        if (i < 0) i += n;
        if (i < 0 || i >= n) return Value::undefined("list object has no element " + std::to_string(key.as_int()));
        return obj.array()[static_cast<size_t>(i)];
      }
      std::u32string c = decode_utf8(obj.str());
      const int64_t n = static_cast<int64_t>(c.size());
      if (i < 0) i += n;
      if (i < 0 || i >= n) return Value::undefined("str object has no element " + std::to_string(key.as_int()));
      return Value(encode_utf8(std::u32string_view(&c[static_cast<size_t>(i)], 1)));
    }
    default:
      if (key.is_string()) return get_attr(obj, key.str());
      return Value::undefined("'" + obj.type_name() + " object' has no element " + to_repr(key));
  }
}

Value get_slice(const Value& obj, const Value& start, const Value& stop, const Value& step) {
  if (obj.is_undefined()) undefined_error(obj);
  if (!obj.is_array() && !obj.is_string()) fail("'" + obj.type_name() + "' object is not subscriptable");
  auto bound = [](const Value& v) -> std::optional<int64_t> {
    if (v.is_undefined() || v.is_none()) return std::nullopt;
    if (!v.is_int() && !v.is_bool()) fail("slice indices must be integers or None");
    return v.as_int();
  };
  const std::u32string chars = obj.is_string() ? decode_utf8(obj.str()) : std::u32string();
  const int64_t n = obj.is_string() ? static_cast<int64_t>(chars.size()) : static_cast<int64_t>(obj.array().size());
  const int64_t st = bound(step).value_or(1);
  if (st == 0) fail("slice step cannot be zero");
  // Python's PySlice_AdjustIndices
  auto adjust = [&](std::optional<int64_t> v, int64_t fallback) {
    if (!v) return fallback;
    int64_t x = *v;
    if (x < 0) {
      x += n;
      if (x < 0) x = st < 0 ? -1 : 0;
    } else if (x >= n) {
      x = st < 0 ? n - 1 : n;
    }
    return x;
  };
  const int64_t b = adjust(bound(start), st < 0 ? n - 1 : 0);
  const int64_t e = adjust(bound(stop), st < 0 ? -1 : n);
  std::vector<size_t> idx;
  for (int64_t i = b; st > 0 ? i < e : i > e; i += st) idx.push_back(static_cast<size_t>(i));
  if (obj.is_string()) {
    std::u32string out;
    for (size_t i : idx) out.push_back(chars[i]);
    return Value(encode_utf8(out));
  }
  std::vector<Value> out;
  for (size_t i : idx) out.push_back(obj.array()[i]);
  return Value(std::move(out));
}

std::vector<Value> iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return {};
    case Value::Kind::Array: return v.array();
    case Value::Kind::Object: {
      if (v.object().is_namespace) fail("'Namespace' object is not iterable");
      std::vector<Value> keys;
      for (const auto& kv : v.object().items) keys.emplace_back(kv.first);
      return keys;
    }
    case Value::Kind::String: {
      std::vector<Value> out;
      for (char32_t c : decode_utf8(v.str())) out.emplace_back(encode_utf8(std::u32string_view(&c, 1)));
      return out;
    }
    default: fail("'" + v.type_name() + "' object is not iterable");
  }
}

bool contains(const Value& haystack, const Value& needle) {
  switch (haystack.kind()) {
    case Value::Kind::Undefined: return false;
    case Value::Kind::String:
      if (needle.is_undefined()) undefined_error(needle);
      if (!needle.is_string()) fail("'in <string>' requires string as left operand, not " + py_type(needle));
      return haystack.str().find(needle.str()) != std::string::npos;
    case Value::Kind::Array:
      return std::find(haystack.array().begin(), haystack.array().end(), needle) != haystack.array().end();
    case Value::Kind::Object:
      if (haystack.object().is_namespace) fail("argument of type 'Namespace' is not iterable");
      return needle.is_string() && haystack.object().find(needle.str()) != nullptr;
    default: fail("argument of type '" + haystack.type_name() + "' is not iterable");
  }
}

int64_t length(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return 0;
    case Value::Kind::String: return static_cast<int64_t>(decode_utf8(v.str()).size());
    case Value::Kind::Array: return static_cast<int64_t>(v.array().size());
    case Value::Kind::Object:
      if (v.object().is_namespace) fail("object of type 'Namespace' has no len()");
      return static_cast<int64_t>(v.object().items.size());
    default: fail("object of type '" + v.type_name() + "' has no len()");
  }
}

}  // namespace ferry::tokenizers::jinja
