#pragma once
/// \file
/// A device map: which module (or tensor) lives where, in the order the entries were decided.
/// It is Accelerate's `hf_device_map`; its JSON form is the same:
///
///     DeviceMap map = DeviceMap::from_json(R"({"model.layers.0": 0, "lm_head": "cpu", "x": "disk"})");
///     map.placement_of("model.layers.0.mlp.up_proj.weight");   // cuda:0 (longest dotted prefix)
///     map.placement_of("model.norm.weight");                   // std::nullopt: no entry covers it
///     map.set("model.norm", Placement::cpu());                 // appended (or replaced in place)
///     map.to_json();   // {"model.layers.0":0,"lm_head":"cpu","x":"disk","model.norm":"cpu"}
///
/// A key "" covers every name. Keys are dotted module (or tensor) names; lookups follow dotted
/// components, so "model.layers.1" never covers "model.layers.10.weight".

#include "ferry/core/placement.h"

#include <cstddef>
#include <initializer_list>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ferry {

/// Ordered map from module name to Placement, with Python-dict semantics: assigning an existing
/// key keeps its position, a new key goes to the end.
class DeviceMap {
 public:
  using Entry = std::pair<std::string, Placement>;
  using const_iterator = std::vector<Entry>::const_iterator;

  DeviceMap() = default;
  /// `DeviceMap{{"linear1", Placement::cuda(0)}, {"linear2", Placement::cpu()}}`. A repeated key
  /// keeps its first position and its last value.
  DeviceMap(std::initializer_list<Entry> entries);

  /// Sets `name` to `placement`: replaces in place if present, appends otherwise.
  void set(const std::string& name, const Placement& placement);
  /// Removes `name`; returns whether it was there. Later entries keep their order.
  bool erase(const std::string& name);
  /// True if `name` is a key (exact match, no prefix lookup).
  bool contains(const std::string& name) const;
  /// The placement stored under exactly `name`; throws ferry::Error naming the key if absent.
  const Placement& at(const std::string& name) const;

  /// The key that decides where `name` lives: `name` itself, else its longest dotted prefix
  /// that is a key, else "" if that is a key. std::nullopt when nothing covers `name`.
  std::optional<std::string> owner_of(const std::string& name) const;
  /// The placement of a tensor or module `name` through owner_of(); std::nullopt if uncovered.
  std::optional<Placement> placement_of(const std::string& name) const;

  /// The distinct placements used, in Placement order (accelerators by ordinal, mps, cpu, disk).
  std::vector<Placement> placements() const;

  size_t size() const { return entries_.size(); }
  bool empty() const { return entries_.empty(); }
  const_iterator begin() const { return entries_.begin(); }
  const_iterator end() const { return entries_.end(); }
  const std::vector<Entry>& entries() const { return entries_; }

  /// hf_device_map JSON: accelerator ordinals as integers, others as strings ("cpu", "disk",
  /// "mps", "meta"). `indent` < 0 writes one line, otherwise pretty-prints with that indent.
  std::string to_json(int indent = -1) const;
  /// Parses hf_device_map JSON: an object whose values are integers (accelerator ordinals) or
  /// device strings ("cpu", "cuda:1", "disk", "0"). Throws ferry::Error saying which key is bad.
  static DeviceMap from_json(const std::string& text);
  /// Reads hf_device_map JSON from a file; errors name the file.
  static DeviceMap read_json_file(const std::string& path);
  /// Writes hf_device_map JSON to a file (pretty-printed), atomically (temporary file + rename).
  void write_json_file(const std::string& path) const;

  /// Same keys in the same order with the same placements.
  bool operator==(const DeviceMap& other) const { return entries_ == other.entries_; }
  bool operator!=(const DeviceMap& other) const { return !(*this == other); }
  /// Same keys and placements, in any order.
  bool same_entries(const DeviceMap& other) const;

 private:
  std::vector<Entry> entries_;
  std::unordered_map<std::string, size_t> index_;
};

}  // namespace ferry
