#include "plan_tree.h"

#include "ferry/core/dtype.h"
#include "ferry/core/error.h"
#include "ferry/plan/tied_parameters.h"

#include <algorithm>
#include <unordered_map>
#include <unordered_set>

namespace ferry {

bool module_name_matches(const std::string& pattern, const std::string& name) {
  // Iterative glob with backtracking on the last '*'; '*' never crosses a '.'.
  size_t p = 0, n = 0, star_p = std::string::npos, star_n = 0;
  while (n < name.size()) {
    if (p < pattern.size() && (pattern[p] == '?' ? name[n] != '.' : pattern[p] == name[n]) && pattern[p] != '*') {
      ++p;
      ++n;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star_p = p++;
      star_n = n;
    } else if (star_p != std::string::npos && name[star_n] != '.') {
      p = star_p + 1;
      n = ++star_n;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

int64_t tensor_size_bits(const TreeTensor& tensor, const std::string& full_name, const SizeOptions& options) {
  const int64_t numel = tensor.numel();
  if (!options.special_dtypes.empty()) {
    auto it = options.special_dtypes.find(full_name);
    if (it != options.special_dtypes.end()) return numel * dtype_bits(it->second);
  }
  const int64_t own = dtype_bits(tensor.dtype);
  if (!options.dtype) return numel * own;
  // Accelerate: integer, unsigned and bool tensors are never converted.
  if (c10::isIntegralType(tensor.dtype, /*includeBool=*/true)) return numel * own;
  return numel * std::min(own, dtype_bits(*options.dtype));
}

namespace plan_detail {

bool matches_no_split(const ModelTree& tree, const NoSplitRules& rules, ModuleId module, const std::string& name) {
  const std::string& cls = tree.module(module).class_name;
  if (!cls.empty())
    for (const auto& c : rules.classes)
      if (c == cls) return true;
  for (const auto& p : rules.patterns)
    if (module_name_matches(p, name)) return true;
  return false;
}

namespace {

struct Builder {
  const ModelTree& tree;
  PlanTree& plan;
  std::vector<int32_t> param_stamp, buffer_stamp, child_stamp;

  int32_t add(NodeKind kind, int32_t ref, std::string name, int32_t parent) {
    int32_t id = plan.size();
    plan.name.push_back(std::move(name));
    plan.kind.push_back(kind);
    plan.ref.push_back(ref);
    plan.parent.push_back(parent);
    plan.end.push_back(id + 1);
    return id;
  }

  static std::string join(const std::string& prefix, const std::string& name) {
    if (prefix.empty()) return name;
    std::string out;
    out.reserve(prefix.size() + 1 + name.size());
    out += prefix;
    out += '.';
    out += name;
    return out;
  }

  void build(ModuleId module, std::string name, int32_t parent) {
    int32_t i = add(NodeKind::Module, module, std::move(name), parent);
    const TreeModule& node = tree.module(module);
    for (const auto& slot : node.params) {
      if (slot.tensor == kNoTensor || param_stamp[static_cast<size_t>(slot.tensor)] == i) continue;
      param_stamp[static_cast<size_t>(slot.tensor)] = i;
      add(NodeKind::Param, slot.tensor, join(plan.name[static_cast<size_t>(i)], slot.name), i);
    }
    // Children: de-duplicated within this parent. Collect first: stamps of nested calls differ.
    std::vector<const TreeChild*> kids;
    for (const auto& child : node.children) {
      if (child_stamp[static_cast<size_t>(child.module)] == i) continue;
      child_stamp[static_cast<size_t>(child.module)] = i;
      kids.push_back(&child);
    }
    for (const TreeChild* child : kids) build(child->module, join(plan.name[static_cast<size_t>(i)], child->name), i);
    for (const auto& slot : node.buffers) {
      if (slot.tensor == kNoTensor || buffer_stamp[static_cast<size_t>(slot.tensor)] == i) continue;
      buffer_stamp[static_cast<size_t>(slot.tensor)] = i;
      add(NodeKind::Buffer, slot.tensor, join(plan.name[static_cast<size_t>(i)], slot.name), i);
    }
    plan.has_children.resize(plan.name.size(), 0);
    plan.has_children[static_cast<size_t>(i)] = kids.empty() ? 0 : 1;
    plan.end[static_cast<size_t>(i)] = plan.size();
  }
};

}  // namespace

PlanTree build_plan_tree(const ModelTree& tree, const SizeOptions& sizes, const NoSplitRules& no_split) {
  PlanTree plan;
  plan.tree = &tree;
  const size_t hint = tree.module_count() + tree.tensor_count();
  plan.name.reserve(hint);
  plan.kind.reserve(hint);
  plan.ref.reserve(hint);
  plan.parent.reserve(hint);
  plan.end.reserve(hint);
  Builder builder{tree, plan, std::vector<int32_t>(tree.tensor_count(), -1),
                  std::vector<int32_t>(tree.tensor_count(), -1), std::vector<int32_t>(tree.module_count(), -1)};
  builder.build(tree.root(), "", -1);
  const size_t n = plan.name.size();
  plan.has_children.resize(n, 0);

  // named_modules() de-duplication: a module node is walked if its parent is and its module
  // object was not met before (pre-order == node order).
  plan.walked.assign(n, 0);
  std::vector<uint8_t> module_seen(tree.module_count(), 0);
  for (size_t i = 0; i < n; ++i) {
    if (plan.kind[i] != NodeKind::Module) continue;
    bool parent_walked = plan.parent[i] < 0 || plan.walked[static_cast<size_t>(plan.parent[i])];
    auto m = static_cast<size_t>(plan.ref[i]);
    if (parent_walked && !module_seen[m]) {
      module_seen[m] = 1;
      plan.walked[i] = 1;
    }
  }

  // First names: parameters of walked modules in module pre-order, then buffers likewise.
  plan.canonical.assign(n, 0);
  plan.tensor_bits.assign(tree.tensor_count(), 0);
  plan.bits.assign(n, 0);
  for (NodeKind kind : {NodeKind::Param, NodeKind::Buffer}) {
    std::vector<uint8_t> seen(tree.tensor_count(), 0);
    for (size_t i = 0; i < n; ++i) {
      if (plan.kind[i] != NodeKind::Module || !plan.walked[i]) continue;
      plan.for_each_piece(static_cast<int32_t>(i), [&](int32_t j) {
        auto uj = static_cast<size_t>(j);
        if (plan.kind[uj] != kind) return;
        auto t = static_cast<size_t>(plan.ref[uj]);
        if (seen[t]) return;
        seen[t] = 1;
        plan.canonical[uj] = 1;
        int64_t b = tensor_size_bits(tree.tensor(plan.ref[uj]), plan.name[uj], sizes);
        plan.tensor_bits[t] = b;
        plan.bits[uj] = b;
      });
    }
  }
  for (size_t i = n; i-- > 1;) plan.bits[static_cast<size_t>(plan.parent[i])] += plan.bits[i];

  // No-split marks and layers.
  plan.no_split.assign(n, 0);
  plan.is_layer.assign(n, 0);
  std::vector<uint8_t> blocked(n, 0);  // below a no-split module other than the root
  for (size_t i = 1; i < n; ++i) {
    auto p = static_cast<size_t>(plan.parent[i]);
    blocked[i] = blocked[p] || (p != 0 && plan.no_split[p]);
    if (plan.kind[i] != NodeKind::Module) continue;
    if (!no_split.empty()) plan.no_split[i] = matches_no_split(tree, no_split, plan.ref[i], plan.name[i]) ? 1 : 0;
    if (!blocked[i] && (!plan.has_children[i] || plan.no_split[i])) plan.is_layer[i] = 1;
  }
  return plan;
}

namespace {

// Walks named_parameters(remove_duplicate=False) / named_buffers likewise: every registration of
// every module, every slot. Calls f(tensor, is_buffer, node_or_-1, location, module_path, slot).
//
// Note [Names of shared modules]: a module registered under k parents, each of them under k more,
// has k^depth names (24 levels of two registrations: 16 million), and Python's walk lists them
// all. No real model is shaped so; the walk stops with an error past a budget far above any real
// model's name count instead of running for minutes.
struct FullWalker {
  const PlanTree& plan;
  const ModelTree& tree;
  std::vector<int64_t> stamp_param, stamp_buffer, stamp_child;
  int64_t visit = 0;
  uint64_t names = 0;
  uint64_t name_budget = std::max<uint64_t>(1'000'000, 8 * (uint64_t(tree.tensor_count()) + tree.module_count()));

  template <class F>
  void walk(ModuleId module, const std::string& path, int32_t node, int32_t location, F& f) {
    const TreeModule& m = tree.module(module);
    names += 1 + m.params.size() + m.buffers.size();
    if (names > name_budget)
      throw Error("find_tied_parameters",
                  detail::concat("the model reaches its modules and tensors under more than ", name_budget,
                                 " names (", tree.module_count(), " modules, ", tree.tensor_count(),
                                 " tensors): modules registered under several parents, nested (e.g. '",
                                 path.empty() ? std::string("the root") : path,
                                 "'), multiply their names. Register each shared module once, or tie "
                                 "tensors instead of sharing whole modules"));
    const int64_t v = visit++;
    // Planning pieces of `node` in order, to line the slots up with their nodes.
    std::vector<int32_t> params, children, buffers;
    if (node >= 0) {
      plan.for_each_piece(node, [&](int32_t j) {
        switch (plan.kind[static_cast<size_t>(j)]) {
          case NodeKind::Param: params.push_back(j); break;
          case NodeKind::Module: children.push_back(j); break;
          case NodeKind::Buffer: buffers.push_back(j); break;
        }
      });
    }
    size_t pi = 0, ci = 0, bi = 0;
    for (const auto& slot : m.params) {
      if (slot.tensor == kNoTensor) continue;
      int32_t j = -1;
      if (stamp_param[static_cast<size_t>(slot.tensor)] != v) {
        stamp_param[static_cast<size_t>(slot.tensor)] = v;
        if (node >= 0) j = params[pi++];
      }
      f(slot.tensor, false, j, j >= 0 ? j : location, path, slot.name);
    }
    for (const auto& slot : m.buffers) {
      if (slot.tensor == kNoTensor) continue;
      int32_t j = -1;
      if (stamp_buffer[static_cast<size_t>(slot.tensor)] != v) {
        stamp_buffer[static_cast<size_t>(slot.tensor)] = v;
        if (node >= 0) j = buffers[bi++];
      }
      f(slot.tensor, true, j, j >= 0 ? j : location, path, slot.name);
    }
    // Decide every child's node before recursing: nested walks reuse the stamps.
    std::vector<int32_t> child_nodes(m.children.size(), -1);
    for (size_t k = 0; k < m.children.size(); ++k) {
      const auto& child = m.children[k];
      if (stamp_child[static_cast<size_t>(child.module)] == v) continue;
      stamp_child[static_cast<size_t>(child.module)] = v;
      if (node >= 0) child_nodes[k] = children[ci++];
    }
    for (size_t k = 0; k < m.children.size(); ++k) {
      const auto& child = m.children[k];
      const int32_t j = child_nodes[k];
      std::string child_path = path.empty() ? child.name : path + "." + child.name;
      walk(child.module, child_path, j, j >= 0 ? j : location, f);
    }
  }
};

template <class F>
void full_walk(const PlanTree& plan, F&& f) {
  const ModelTree& tree = *plan.tree;
  FullWalker walker{plan, tree, std::vector<int64_t>(tree.tensor_count(), -1),
                    std::vector<int64_t>(tree.tensor_count(), -1), std::vector<int64_t>(tree.module_count(), -1), 0};
  walker.walk(tree.root(), std::string(), 0, 0, f);
}

std::string join_name(const std::string& path, const std::string& slot) { return path.empty() ? slot : path + "." + slot; }

}  // namespace

std::vector<TiedGroup> find_tied_groups(const PlanTree& plan, bool buffers_too) {
  const ModelTree& tree = *plan.tree;
  // Parameters only (Accelerate), or every tensor object whatever its slots' kinds.
  std::vector<int32_t> count(tree.tensor_count(), 0);
  full_walk(plan, [&](TensorId t, bool buffer, int32_t, int32_t, const std::string&, const std::string&) {
    if (!buffer || buffers_too) ++count[static_cast<size_t>(t)];
  });
  std::vector<TiedGroup> groups;
  std::unordered_map<int64_t, size_t> group_of;
  full_walk(plan, [&](TensorId t, bool buffer, int32_t node, int32_t location, const std::string& path,
                      const std::string& slot) {
    if (buffer && !buffers_too) return;
    int64_t key = t;
    if (count[static_cast<size_t>(key)] < 2) return;
    auto it = group_of.find(key);
    if (it == group_of.end()) {
      it = group_of.emplace(key, groups.size()).first;
      groups.push_back(TiedGroup{t, {}});
    }
    auto& members = groups[it->second].members;
    std::string name = join_name(path, slot);
    // A name repeats only if one module holds the tensor twice under... the same name: impossible.
    members.push_back(TiedMember{std::move(name), location, node >= 0});
  });
  for (auto& g : groups)
    std::sort(g.members.begin(), g.members.end(),
              [](const TiedMember& a, const TiedMember& b) { return a.name < b.name; });
  return groups;
}

}  // namespace plan_detail

std::vector<std::vector<std::string>> find_tied_parameters(const ModelTree& tree) {
  plan_detail::PlanTree plan = plan_detail::build_plan_tree(tree, {}, {});
  std::vector<std::vector<std::string>> out;
  for (const auto& g : plan_detail::find_tied_groups(plan)) {
    std::vector<std::string> names;
    for (const auto& m : g.members) names.push_back(m.name);
    out.push_back(std::move(names));
  }
  return out;
}

}  // namespace ferry
