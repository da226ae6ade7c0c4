#include "ferry/plan/device_map.h"

#include "ferry/core/error.h"
#include "ferry/io/atomic_file.h"
#include "ferry/io/json.h"


#include <algorithm>
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>

namespace ferry {

DeviceMap::DeviceMap(std::initializer_list<Entry> entries) {
  for (const auto& e : entries) set(e.first, e.second);
}

void DeviceMap::set(const std::string& name, const Placement& placement) {
  auto it = index_.find(name);
  if (it != index_.end()) {
    entries_[it->second].second = placement;
    return;
  }
  index_.emplace(name, entries_.size());
  entries_.emplace_back(name, placement);
}

bool DeviceMap::erase(const std::string& name) {
  auto it = index_.find(name);
  if (it == index_.end()) return false;
  size_t position = it->second;
  entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(position));
  index_.erase(it);
  for (size_t i = position; i < entries_.size(); ++i) index_[entries_[i].first] = i;
  return true;
}

bool DeviceMap::contains(const std::string& name) const { return index_.count(name) != 0; }

const Placement& DeviceMap::at(const std::string& name) const {
  auto it = index_.find(name);
  FERRY_CHECK(it != index_.end(), "the device map has no entry '", name, "'");
  return entries_[it->second].second;
}

std::optional<std::string> DeviceMap::owner_of(const std::string& name) const {
  std::string prefix = name;
  while (true) {
    if (index_.count(prefix)) return prefix;
    if (prefix.empty()) return std::nullopt;
    size_t dot = prefix.rfind('.');
    prefix = dot == std::string::npos ? std::string() : prefix.substr(0, dot);
  }
}

std::optional<Placement> DeviceMap::placement_of(const std::string& name) const {
  auto owner = owner_of(name);
  if (!owner) return std::nullopt;
  return entries_[index_.at(*owner)].second;
}

std::vector<Placement> DeviceMap::placements() const {
  std::vector<Placement> out;
  for (const auto& e : entries_)
    if (std::find(out.begin(), out.end(), e.second) == out.end()) out.push_back(e.second);
  std::sort(out.begin(), out.end());
  return out;
}

bool DeviceMap::same_entries(const DeviceMap& other) const {
  if (size() != other.size()) return false;
  for (const auto& e : entries_) {
    auto it = other.index_.find(e.first);
    if (it == other.index_.end() || other.entries_[it->second].second != e.second) return false;
  }
  return true;
}

std::string DeviceMap::to_json(int indent) const {
  // Written by hand to keep the decision order (nlohmann's object type sorts keys).
  std::string out;
  const bool pretty = indent >= 0;
  const std::string pad(pretty ? static_cast<size_t>(indent) : 0, ' ');
  out += '{';
  bool first = true;
  for (const auto& [name, placement] : entries_) {
    if (!first) out += ',';
    if (pretty) (out += '\n') += pad;
    first = false;
    io::append_json_string(out, name);
    out += pretty ? ": " : ":";
    if (placement.is_device() && placement.device().is_cuda() && placement.device().has_index())
      out += std::to_string(static_cast<int>(placement.device().index()));
    else
      io::append_json_string(out, placement.str());
  }
  if (pretty && !entries_.empty()) out += '\n';
  out += '}';
  return out;
}

namespace {

DeviceMap device_map_from_parsed(const io::JsonValue& doc, const std::string& where) {
  FERRY_CHECK(doc.is_object(), where, "a device map must be a JSON object such as {\"model.layers.0\": 0, "
              "\"lm_head\": \"cpu\"}, got ", doc.type_name());
  DeviceMap map;
  for (auto [k, value] : doc.items()) {
    const std::string key(k);
    if (value.is_integer()) {
      const auto ordinal = value.as_int64();
      FERRY_CHECK(ordinal && *ordinal >= 0 && *ordinal < 10000, where, "device map entry '", key,
                  "': accelerator index ", value.dump(), " is out of range");
      map.set(key, Placement::cuda(static_cast<int>(*ordinal)));
    } else if (auto text = value.as_string()) {
      try {
        map.set(key, Placement::parse(std::string(*text)));
      } catch (const Error& e) {
        FERRY_FAIL(where, "device map entry '", key, "': ", e.message());
      }
    } else {
      FERRY_FAIL(where, "device map entry '", key, "' must be an accelerator index or a device string, got ",
                 value.dump());
    }
  }
  return map;
}

}  // namespace

DeviceMap DeviceMap::from_json(const std::string& text) {
  io::JsonDocument doc;
  try {
    doc = io::parse_json(text, "the device map");
  } catch (const Error& e) {
    throw e.in("DeviceMap::from_json", "invalid device map JSON: ");
  }
  return device_map_from_parsed(doc.root(), "");
}

DeviceMap DeviceMap::read_json_file(const std::string& path) {
  io::JsonDocument doc;
  try {
    doc = io::read_json_file(path);
  } catch (const Error& e) {
    throw e.in("DeviceMap::read_json_file", "device map file: ");
  }
  return device_map_from_parsed(doc.root(), "'" + path + "': ");
}

void DeviceMap::write_json_file(const std::string& path) const {
  try {
    io::write_file_atomically(path, to_json(2) + "\n");
  } catch (const Error& e) {
    throw e.in("DeviceMap::write_json_file");
  }
}

}  // namespace ferry
