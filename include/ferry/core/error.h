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

/// A user-facing error: bad input, a damaged file, an impossible request.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
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
#define FERRY_CHECK(cond, ...)                                                        \
  do {                                                                                \
    if (!(cond)) throw ::ferry::Error(::ferry::detail::concat("[", __func__, "] ", __VA_ARGS__)); \
  } while (false)

/// Throws ferry::Error("[<function>] " + message parts).
#define FERRY_FAIL(...) throw ::ferry::Error(::ferry::detail::concat("[", __func__, "] ", __VA_ARGS__))

/// Throws ferry::InternalError unless `cond` holds: an invariant, not a user error.
#define FERRY_ASSERT(cond, ...)                                                              \
  do {                                                                                       \
    if (!(cond))                                                                             \
      throw ::ferry::InternalError(::ferry::detail::concat(                                  \
          "[", __func__, "] internal error (please report a bug): ", #cond, ". ", ##__VA_ARGS__)); \
  } while (false)
