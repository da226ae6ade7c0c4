#pragma once
// Helpers shared by the tokenizer tests (tokenizer.json and tokenizer.model references).
#include "ferry/io/json.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace ferry_test {

/// The <name> of every <name>.reference.json in `dir`, sorted.
inline std::vector<std::string> reference_names(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string file = entry.path().filename().string(), suffix = ".reference.json";
    if (file.size() > suffix.size() && file.compare(file.size() - suffix.size(), suffix.size(), suffix) == 0)
      names.push_back(file.substr(0, file.size() - suffix.size()));
  }
  std::sort(names.begin(), names.end());
  return names;
}

/// A file's bytes.
inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

/// A JSON list of ids.
inline std::vector<int64_t> ids_of(const ferry::io::JsonValue& v) {
  std::vector<int64_t> ids;
  for (ferry::io::JsonValue e : v.elements()) ids.push_back(*e.as_int64());
  return ids;
}

/// "[1 2 3]", for failure messages.
inline std::string show(const std::vector<int64_t>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? " " : "") + std::to_string(ids[i]);
  return s + "]";
}

}  // namespace ferry_test
