#include "ferry/core/byte_size.h"

#include "ferry/core/error.h"

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>

namespace ferry {
namespace {

bool ends_with_ci(const std::string& s, const std::string& suffix) {
  if (s.size() < suffix.size()) return false;
  for (size_t i = 0; i < suffix.size(); ++i)
    if (std::toupper(static_cast<unsigned char>(s[s.size() - suffix.size() + i])) != suffix[i]) return false;
  return true;
}

// Python's float(): the whole (trimmed) string must be a number.
bool parse_float(const std::string& text, double& out) {
  size_t b = 0, e = text.size();
  while (b < e && std::isspace(static_cast<unsigned char>(text[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(text[e - 1]))) --e;
  if (b == e) return false;
  std::string core = text.substr(b, e - b);
  char* end = nullptr;
  out = std::strtod(core.c_str(), &end);
  return end == core.c_str() + core.size() && std::isfinite(out);
}

}  // namespace

int64_t parse_byte_size(const std::string& text) {
  const char* hint = "; expected an integer number of bytes or a size such as \"10GiB\", \"500MB\" or \"512KiB\"";
  struct Unit {
    const char* suffix;
    double factor;
    bool decimal;
  };
  static const Unit units[] = {{"GIB", 1073741824.0, false}, {"MIB", 1048576.0, false}, {"KIB", 1024.0, false},
                               {"GB", 1e9, true},            {"MB", 1e6, true},         {"KB", 1e3, true}};
  double value = 0;
  if (parse_float(text, value)) {
    // A plain number: Accelerate accepts ints only; "1.5" has no unit and is refused.
    FERRY_CHECK(value == std::floor(value), "'", text, "' is not a whole number of bytes", hint);
    FERRY_CHECK(value >= 0, "size '", text, "' is negative", hint);
    FERRY_CHECK(value < 9.2e18, "size '", text, "' is too large");
    return static_cast<int64_t>(value);
  }
  for (const auto& unit : units) {
    if (!ends_with_ci(text, unit.suffix)) continue;
    std::string number = text.substr(0, text.size() - std::string(unit.suffix).size());
    FERRY_CHECK(parse_float(number, value), "'", text, "' is not a valid size: '", number, "' is not a number", hint);
    FERRY_CHECK(value >= 0, "size '", text, "' is negative", hint);
    double bytes = value * unit.factor;
    FERRY_CHECK(bytes < 9.2e18, "size '", text, "' is too large");
    int64_t result = static_cast<int64_t>(bytes);
    if (unit.decimal && text.back() == 'b') result /= 8;  // "100Mb": megabits
    return result;
  }
  FERRY_FAIL("'", text, "' is not a valid size", hint);
}

std::string format_bytes(double bytes) {
  static const char* names[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double value = bytes;
  int unit = 0;
  while (std::fabs(value) >= 1024.0 && unit < 5) {
    value /= 1024.0;
    ++unit;
  }
  char buffer[64];
  if (unit == 0) std::snprintf(buffer, sizeof buffer, "%.0f B", value);
  else std::snprintf(buffer, sizeof buffer, std::fabs(value) < 10 ? "%.2f %s" : std::fabs(value) < 100 ? "%.1f %s" : "%.0f %s", value, names[unit]);
  return buffer;
}

}  // namespace ferry
