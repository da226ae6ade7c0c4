#pragma once
/// \file
/// The arguments of a module call: positional and keyword `c10::IValue`s, as in Python's
/// `module(*args, **kwargs)`. Tensors nested in tuples, lists and dicts can be moved between
/// devices generically (see hooks/send_to_device.h), and `skip_keys` works on keyword names.
///
///     Args args{hidden_states};
///     args.set("attention_mask", mask);
///     at::Tensor x = args.tensor(0);
///     if (const c10::IValue* m = args.find("attention_mask")) { ... }

#include <ATen/core/ivalue.h>

#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

namespace ferry {

/// Positional and keyword arguments of a module call.
class Args {
 public:
  Args() = default;
  Args(std::initializer_list<c10::IValue> positional) : positional(positional) {}
  explicit Args(std::vector<c10::IValue> positional) : positional(std::move(positional)) {}

  std::vector<c10::IValue> positional;
  /// Keyword arguments in the order they were given.
  std::vector<std::pair<std::string, c10::IValue>> keyword;

  /// Sets (or replaces) a keyword argument; returns *this for chaining.
  Args& set(const std::string& name, c10::IValue value);
  /// The keyword argument `name`, or nullptr.
  const c10::IValue* find(const std::string& name) const;
  c10::IValue* find(const std::string& name);
  /// Positional argument `i` as a tensor; throws ferry::Error if absent or not a tensor.
  at::Tensor tensor(size_t i) const;
  /// Keyword `name` as a tensor if present and a tensor, else an undefined tensor.
  at::Tensor optional_tensor(const std::string& name) const;
};

}  // namespace ferry
