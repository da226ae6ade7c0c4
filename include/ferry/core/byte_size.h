#pragma once
/// \file
/// Byte sizes as people write them, with Accelerate's semantics (convert_file_size_to_int):
///
///     parse_byte_size("10GiB")   // 10 * 2^30
///     parse_byte_size("1.5GB")   // 1'500'000'000
///     parse_byte_size("100Mb")   // 12'500'000 (lower-case b: bits)
///     parse_byte_size("500")     // 500
///     format_bytes(1536)         // "1.50 KiB"

#include <cstdint>
#include <string>

namespace ferry {

/// Parses "10GiB", "10GB", "500MB", "512KiB", "100kb" (bits) or a plain integer. Throws
/// ferry::Error for anything else and for negative sizes.
int64_t parse_byte_size(const std::string& text);

/// Human form with binary units: "512 B", "1.50 KiB", "12.3 GiB".
std::string format_bytes(double bytes);

}  // namespace ferry
