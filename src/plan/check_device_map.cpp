#include "ferry/plan/check_device_map.h"

#include "ferry/core/error.h"
#include "ferry/core/log.h"
#include "ferry/plan/tied_parameters.h"
#include "plan_tree.h"

#include <optional>
#include <unordered_set>

namespace ferry {
namespace {

// Every registration path of every tensor slot (state_dict() walks modules without
// de-duplication). f(full_name, is_buffer, persistent).
template <class F>
void for_each_tensor_name(const ModelTree& tree, ModuleId module, const std::string& path, F& f) {
  const TreeModule& m = tree.module(module);
  auto join = [&](const std::string& name) { return path.empty() ? name : path + "." + name; };
  for (const auto& p : m.params)
    if (p.tensor != kNoTensor) f(join(p.name), false, true);
  for (const auto& b : m.buffers)
    if (b.tensor != kNoTensor) f(join(b.name), true, b.persistent);
  for (const auto& c : m.children) for_each_tensor_name(tree, c.module, join(c.name), f);
}

bool covered(const std::unordered_set<std::string>& keys, const std::string& name) {
  if (keys.count("")) return true;
  std::string prefix = name;
  while (true) {
    if (keys.count(prefix)) return true;
    size_t dot = prefix.rfind('.');
    if (dot == std::string::npos) return false;
    prefix.resize(dot);
  }
}

std::string python_list(const std::vector<std::string>& names) {
  std::string out = "[";
  for (size_t i = 0; i < names.size(); ++i) out += (i ? ", '" : "'") + names[i] + "'";
  return out + "]";
}

}  // namespace

std::vector<std::string> uncovered_tensor_names(const ModelTree& tree, const DeviceMap& device_map) {
  std::unordered_set<std::string> keys;
  for (const auto& e : device_map) keys.insert(e.first);
  std::vector<std::string> out;
  auto visit = [&](const std::string& name, bool, bool) {
    if (!covered(keys, name)) out.push_back(name);
  };
  for_each_tensor_name(tree, tree.root(), "", visit);
  return out;
}

void check_device_map(const ModelTree& tree, const DeviceMap& device_map) {
  plan_detail::PlanTree plan = plan_detail::build_plan_tree(tree, {}, {});
  std::unordered_set<std::string> modules;
  for (int32_t i = 0; i < plan.size(); ++i)
    if (plan.is_module(i) && plan.walked[static_cast<size_t>(i)]) modules.insert(plan.name[static_cast<size_t>(i)]);
  std::vector<std::string> invalid;
  std::unordered_set<std::string> keys;
  for (const auto& e : device_map) {
    keys.insert(e.first);
    if (!e.first.empty() && !modules.count(e.first)) invalid.push_back(e.first);
  }
  if (!invalid.empty())
    log_warning("The following device_map keys do not match any submodules in the model: " + python_list(invalid));
  std::string missing;
  auto visit = [&](const std::string& name, bool buffer, bool persistent) {
    if (buffer && !persistent) return;
    if (!covered(keys, name)) missing += (missing.empty() ? "" : ", ") + name;
  };
  for_each_tensor_name(tree, tree.root(), "", visit);
  FERRY_CHECK(missing.empty(), "The device_map provided does not give any device for the following parameters: ", missing);
}

// ---- clean_device_map -----------------------------------------------------------------------------

namespace {

struct Trie {
  struct Node {
    std::string name;              // full dotted name
    int64_t key = -1;              // index into the map's entries when a key ends here
    std::vector<int32_t> children; // first-appearance order
    int64_t below = 0;             // keys strictly below
    bool uniform = true;           // all keys strictly below share `value`
    Placement value;
    std::unordered_map<std::string, int32_t> index;  // component -> child
  };
  std::vector<Node> nodes{Node{}};

  int32_t insert(const std::string& key) {
    int32_t at = 0;
    if (key.empty()) return 0;
    size_t start = 0;
    while (true) {
      size_t dot = key.find('.', start);
      std::string part = key.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      auto it = nodes[static_cast<size_t>(at)].index.find(part);
      int32_t next;
      if (it == nodes[static_cast<size_t>(at)].index.end()) {
        next = static_cast<int32_t>(nodes.size());
        Node node;
        node.name = dot == std::string::npos ? key : key.substr(0, dot);
        nodes.push_back(std::move(node));
        nodes[static_cast<size_t>(at)].index.emplace(std::move(part), next);
        nodes[static_cast<size_t>(at)].children.push_back(next);
      } else {
        next = it->second;
      }
      at = next;
      if (dot == std::string::npos) return at;
      start = dot + 1;
    }
  }
};

void merge_value(Trie::Node& node, int64_t count, bool uniform, const Placement& value) {
  if (count == 0) return;
  if (node.below == 0) {
    node.uniform = uniform;
    node.value = value;
  } else {
    node.uniform = node.uniform && uniform && node.value == value;
  }
  node.below += count;
}

}  // namespace

DeviceMap clean_device_map(const DeviceMap& device_map, const std::string& module_name) {
  const auto& entries = device_map.entries();
  Trie trie;
  std::vector<int32_t> node_of(entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    node_of[i] = trie.insert(entries[i].first);
    trie.nodes[static_cast<size_t>(node_of[i])].key = static_cast<int64_t>(i);
  }
  // Bottom-up: children were created after their parents, so reverse creation order works.
  for (size_t i = trie.nodes.size(); i-- > 1;) {
    auto& node = trie.nodes[i];
    for (int32_t c : node.children) {
      auto& child = trie.nodes[static_cast<size_t>(c)];
      if (child.key >= 0) merge_value(node, 1, true, entries[static_cast<size_t>(child.key)].second);
      merge_value(node, child.below, child.uniform, child.value);
    }
  }
  auto& root = trie.nodes[0];
  for (int32_t c : root.children) {
    auto& child = trie.nodes[static_cast<size_t>(c)];
    if (child.key >= 0) merge_value(root, 1, true, entries[static_cast<size_t>(child.key)].second);
    merge_value(root, child.below, child.uniform, child.value);
  }
  if (root.key >= 0) merge_value(root, 1, true, entries[static_cast<size_t>(root.key)].second);  // "" itself

  std::vector<uint8_t> deleted(entries.size(), 0);
  std::vector<std::pair<std::string, Placement>> merged;
  // Top-down from module_name.
  int32_t start = 0;
  if (!module_name.empty()) {
    start = -1;
    for (size_t i = 0; i < trie.nodes.size(); ++i)
      if (trie.nodes[i].name == module_name && i != 0) start = static_cast<int32_t>(i);
    if (start < 0) return device_map;
  }
  std::vector<int32_t> stack{start};
  auto delete_below = [&](int32_t at, bool include_self) {
    std::vector<int32_t> todo{at};
    while (!todo.empty()) {
      int32_t x = todo.back();
      todo.pop_back();
      const auto& node = trie.nodes[static_cast<size_t>(x)];
      if (node.key >= 0 && (x != at || include_self)) deleted[static_cast<size_t>(node.key)] = 1;
      for (int32_t c : node.children) todo.push_back(c);
    }
  };
  while (!stack.empty()) {
    int32_t at = stack.back();
    stack.pop_back();
    const auto& node = trie.nodes[static_cast<size_t>(at)];
    if (node.below > 1 && node.uniform) {
      delete_below(at, /*include_self=*/at == 0);
      merged.emplace_back(node.name, node.value);
      continue;
    }
    for (auto it = node.children.rbegin(); it != node.children.rend(); ++it) stack.push_back(*it);
  }
  DeviceMap out;
  for (size_t i = 0; i < entries.size(); ++i)
    if (!deleted[i]) out.set(entries[i].first, entries[i].second);
  for (const auto& [name, value] : merged) out.set(name, value);
  return out;
}

void check_tied_parameters_on_same_device(const std::vector<std::vector<std::string>>& tied_params,
                                          const DeviceMap& device_map) {
  for (const auto& group : tied_params) {
    std::string where;
    std::optional<Placement> first;
    bool differ = false;
    for (const auto& name : group) {
      const std::optional<Placement> p = device_map.placement_of(name);
      if (!p) continue;
      if (first && *p != *first) differ = true;
      if (!first) first = p;
      where += (where.empty() ? "" : ", ") + name + ": " + p->str();
    }
    if (differ)
      log_warning("Tied parameters are on different devices (" + where +
                  "). Please modify your custom device map or set device_map='auto'.");
  }
}

}  // namespace ferry
