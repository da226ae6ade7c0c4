#pragma once
// Shared helpers of the planner tests: an independent validity check of a device map (written
// from the invariants, not from the planner's code) and small model builders.

#include "ferry/plan/device_map.h"
#include "ferry/plan/max_memory.h"
#include "ferry/plan/model_tree.h"
#include "ferry/plan/module_sizes.h"

#include <map>
#include <set>
#include <string>
#include <vector>

namespace ferry::plan_test {

// Every name of every tensor slot (every registration path), with its tensor id.
inline void all_tensor_names(const ModelTree& tree, ModuleId module, const std::string& path,
                             std::vector<std::pair<std::string, TensorId>>& out, int depth = 0) {
  if (depth > 64) return;
  const TreeModule& m = tree.module(module);
  auto join = [&](const std::string& n) { return path.empty() ? n : path + "." + n; };
  for (const auto& p : m.params)
    if (p.tensor != kNoTensor) out.emplace_back(join(p.name), p.tensor);
  for (const auto& b : m.buffers)
    if (b.tensor != kNoTensor) out.emplace_back(join(b.name), b.tensor);
  for (const auto& c : m.children) all_tensor_names(tree, c.module, join(c.name), out, depth + 1);
}

// Returns "" if `map` is valid for `tree` and `budget`: every tensor name covered, all names of a
// tensor on one device, each device's tensors (counted once) within its budget, only budgeted
// devices (and disk) used. Otherwise a description of the first problem.
inline std::string validate_map(const ModelTree& tree, const DeviceMap& map, const MaxMemory& budget,
                                const SizeOptions& sizes = {}) {
  std::vector<std::pair<std::string, TensorId>> names;
  all_tensor_names(tree, tree.root(), "", names);
  std::map<TensorId, Placement> where;
  std::map<TensorId, std::string> first_name;
  for (const auto& [name, t] : names) {
    auto p = map.placement_of(name);
    if (!p) return "tensor '" + name + "' has no device";
    auto it = where.find(t);
    if (it == where.end()) {
      where.emplace(t, *p);
      first_name.emplace(t, name);
    } else if (it->second != *p) {
      return "tensor '" + name + "' is on " + p->str() + " but '" + first_name[t] + "' (the same tensor) on " +
             it->second.str();
    }
  }
  std::map<Placement, int64_t> used;
  for (const auto& [t, p] : where) used[p] += tensor_size_bits(tree.tensor(t), first_name[t], sizes);
  for (const auto& [p, bits] : used) {
    if (p.is_disk()) continue;
    int64_t b = budget_of(budget, p);
    if (b < 0) return "device " + p.str() + " is used but has no budget";
    if (bits > b * 8) return "device " + p.str() + " holds " + std::to_string(bits / 8.0) + " bytes, budget " + std::to_string(b);
  }
  for (const auto& e : map)
    if (!e.second.is_disk() && budget_of(budget, e.second) < 0) return "entry '" + e.first + "' uses " + e.second.str();
  return "";
}

// Accelerate's ModelForTest: linear1 Linear(3,4), batchnorm BatchNorm1d(4), linear2 Linear(4,5).
inline ModuleId add_model_for_test(ModelTree& tree, ModuleId parent, const std::string& name) {
  ModuleId m = name.empty() ? parent : tree.add_submodule(parent, name, "ModelForTest");
  ModuleId l1 = tree.add_submodule(m, "linear1", "Linear");
  tree.add_param(l1, "weight", {4, 3}, c10::ScalarType::Float);
  tree.add_param(l1, "bias", {4}, c10::ScalarType::Float);
  ModuleId bn = tree.add_submodule(m, "batchnorm", "BatchNorm1d");
  tree.add_param(bn, "weight", {4}, c10::ScalarType::Float);
  tree.add_param(bn, "bias", {4}, c10::ScalarType::Float);
  tree.add_buffer(bn, "running_mean", {4}, c10::ScalarType::Float);
  tree.add_buffer(bn, "running_var", {4}, c10::ScalarType::Float);
  tree.add_buffer(bn, "num_batches_tracked", {}, c10::ScalarType::Long);
  ModuleId l2 = tree.add_submodule(m, "linear2", "Linear");
  tree.add_param(l2, "weight", {5, 4}, c10::ScalarType::Float);
  tree.add_param(l2, "bias", {5}, c10::ScalarType::Float);
  return m;
}

inline ModelTree model_for_test() {
  ModelTree tree("ModelForTest");
  add_model_for_test(tree, tree.root(), "");
  return tree;
}

}  // namespace ferry::plan_test
