// What templates call by name: jinja2's filters (`x | trim`) and tests (`x is defined`), Python's
// methods on str and dict (`s.startswith('<')`, `d.items()`), and attribute and item lookup as
// jinja2's sandbox does them. Errors are TemplateError with line 0 (the caller knows the line).
// Internal to ferry_tokenizers.
#pragma once

#include <string>

#include "jinja.h"

namespace ferry::tokenizers::jinja {

/// Whether the engine has the filter / test; the parser refuses the others by name.
bool has_filter(const std::string& name);
bool has_test(const std::string& name);
/// A Python method a template might call that the engine refuses (`str.format`, `list.append`, ...).
bool is_unsupported_method(const std::string& name);

Value apply_filter(const std::string& name, const Value& value, const Args& args);
bool apply_test(const std::string& name, const Value& value, const Args& args);

/// `obj.name`: jinja2's getattr (a Python attribute, such as a bound method, else the item).
Value get_attr(const Value& obj, const std::string& name);
/// `obj[key]`: jinja2's getitem (the item, else an attribute when the key is a string).
Value get_item(const Value& obj, const Value& key);
/// `obj[start:stop:step]`, Python's slice of a list or str.
Value get_slice(const Value& obj, const Value& start, const Value& stop, const Value& step);

/// The elements a `for` loop visits: a list's items, a dict's keys, a str's characters; none for
/// Undefined. Throws for values that are not iterable.
std::vector<Value> iterate(const Value& v);
/// Python's `needle in haystack`.
bool contains(const Value& haystack, const Value& needle);
/// Python's len().
int64_t length(const Value& v);

/// Throws the error jinja2 raises when an Undefined is used where a value is needed.
[[noreturn]] void undefined_error(const Value& v);

}  // namespace ferry::tokenizers::jinja
