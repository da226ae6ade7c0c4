#pragma once
/// \file
/// Errors. ferry throws `ferry::Error` for anything a user can get wrong (a bad device string, a
/// corrupt file, a device map that misses a tensor) and `ferry::InternalError` for broken
/// invariants. Messages start with `[function]`, name the file, tensor or module, give the
/// numbers and say what to do:
///
///     FERRY_CHECK(n >= 0, "size must be non-negative, got ", n, " for '", name, "'");
///     // -> ferry::Error("[parse_size] size must be non-negative, got -1 for 'cpu'")

#include <sstream>
#include <stdexcept>
#include <string>

namespace ferry {

/// A user-facing error: bad input, a damaged file, an impossible request. It keeps the function
/// (the bracket) and the message apart, so a caller can add context or name the public API the user
/// called without cutting strings: `throw e.in("load_checkpoint_in_model", "shard 3: ")`.
class Error : public std::runtime_error {
 public:
  /// what() is "[function] message".
  Error(std::string function, std::string message);
  /// A whole message; a leading "[function] " is recognised as the function.
  explicit Error(const std::string& what);

  /// The function in the bracket ("" when none).
  const std::string& function() const { return function_; }
  /// The message without the bracket.
  const std::string& message() const { return message_; }
  /// The same error reported by `function`, with `context` put before the message.
  Error in(const std::string& function, const std::string& context = "") const;

 private:
  std::string function_;
  std::string message_;
};

/// A broken invariant inside ferry: a bug, never the user's fault.
class InternalError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

namespace detail {
/// Concatenates anything streamable into one string.
template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}
}  // namespace detail

}  // namespace ferry

/// Throws ferry::Error("[<function>] " + message parts) unless `cond` holds.
#define FERRY_CHECK(cond, ...)                                                          \
  do {                                                                                  \
    if (!(cond)) throw ::ferry::Error(__func__, ::ferry::detail::concat(__VA_ARGS__)); \
  } while (false)

/// Throws ferry::Error("[<function>] " + message parts).
#define FERRY_FAIL(...) throw ::ferry::Error(__func__, ::ferry::detail::concat(__VA_ARGS__))

/// Throws ferry::InternalError unless `cond` holds: an invariant (a bug in ferry or a caller's broken
/// precondition), not a user error. The message carries file:line.
#define FERRY_ASSERT(cond, ...)                                                                          \
  do {                                                                                                   \
    if (!(cond))                                                                                         \
      throw ::ferry::InternalError(::ferry::detail::concat(                                              \
          "[", __func__, "] internal error at ", __FILE__, ":", __LINE__, " (please report a bug): ", #cond, \
          ". ", ##__VA_ARGS__));                                                                         \
  } while (false)
