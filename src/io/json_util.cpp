#include "io/json_util.h"

#include "ferry/core/error.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <vector>

namespace ferry::io::detail {

nlohmann::ordered_json parse_json_strict(const std::string& text, const std::string& source, const char* function) {
  using json = nlohmann::ordered_json;
  auto fail = [&](const std::string& what) -> void {
    throw Error(::ferry::detail::concat("[", function, "] ", source, ": ", what));
  };
  std::vector<std::set<std::string>> objects;
  try {
    return json::parse(
        text,
        [&](int depth, json::parse_event_t event, json& parsed) {
          if (depth > 64) fail("the JSON nests deeper than 64 levels");
          if (event == json::parse_event_t::object_start) objects.emplace_back();
          else if (event == json::parse_event_t::object_end && !objects.empty()) objects.pop_back();
          else if (event == json::parse_event_t::key && !objects.empty() &&
                   !objects.back().insert(parsed.get_ref<const std::string&>()).second)
            fail("'" + parsed.get<std::string>() + "' is named twice in the same JSON object");
          return true;
        },
        /*allow_exceptions=*/true);
  } catch (const json::exception& e) {
    fail(std::string("not valid JSON (") + e.what() + ")");
  }
  return {};  // unreachable
}

nlohmann::ordered_json read_json_file(const std::string& path, const char* function) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(::ferry::detail::concat("[", function, "] ", path, ": cannot open: ", std::strerror(errno)));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return parse_json_strict(buffer.str(), path, function);
}

}  // namespace ferry::io::detail
