#pragma once
// Internal: reading JSON files (indexes) strictly: a key repeated in one object is an error, not
// "last one wins", because a repeated tensor name in an index means a damaged or hand-edited file.

#include <nlohmann/json.hpp>

#include <string>

namespace ferry::io::detail {

/// Parses `text` (from `source`); throws ferry::Error "[<function>] <source>: ..." for invalid JSON or
/// a key repeated within one object.
nlohmann::ordered_json parse_json_strict(const std::string& text, const std::string& source, const char* function);

/// Reads and parses a whole file with parse_json_strict.
nlohmann::ordered_json read_json_file(const std::string& path, const char* function);

}  // namespace ferry::io::detail
