#pragma once
// Internal: the planner's flattened view of a ModelTree, built once in O(tensors + modules).
//
// Note [Planning tree]
// Accelerate walks Python objects: named_children() (a child object once per parent), its
// entries' direct parameters and buffers, and a sizes dict keyed by name. The planning tree holds
// exactly the names such a walk can produce, as nodes in pre-order: a module node's direct
// pieces are its direct parameters (de-duplicated within the module), its children
// (de-duplicated within the parent), then its direct buffers. The subtree of node i is the index
// range [i, end[i]), so "name starts with entry + '.'" is an integer comparison.
// bits[i] is sizes[name] of Accelerate: tensors count once, under their first name in the
// de-duplicated module walk (named_modules()); other names of a tensor count 0.

#include "ferry/plan/model_tree.h"
#include "ferry/plan/max_memory.h"
#include "ferry/plan/module_sizes.h"

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace ferry::plan_detail {

enum class NodeKind : uint8_t { Module, Param, Buffer };

struct PlanTree {
  const ModelTree* tree = nullptr;
  std::vector<std::string> name;    // full dotted path ("" for the root)
  std::vector<NodeKind> kind;
  std::vector<int32_t> ref;         // ModuleId or TensorId
  std::vector<int32_t> parent;      // -1 for the root
  std::vector<int32_t> end;         // subtree = [i, end[i])
  std::vector<int64_t> bits;        // Accelerate's sizes[name] (0 if absent)
  std::vector<uint8_t> walked;      // module node visited by the de-duplicated named_modules()
  std::vector<uint8_t> canonical;   // tensor node: first name of its tensor (counted in sizes)
  std::vector<uint8_t> has_children;// module node: named_children() non-empty
  std::vector<uint8_t> no_split;    // module node matched by NoSplitRules
  std::vector<uint8_t> is_layer;    // module node that get_max_layer_size counts (see planner)
  std::vector<int64_t> tensor_bits; // per TensorId: its size with the SizeOptions

  int32_t size() const { return static_cast<int32_t>(name.size()); }
  bool inside(int32_t node, int32_t entry) const { return node >= entry && node < end[static_cast<size_t>(entry)]; }
  bool is_module(int32_t i) const { return kind[static_cast<size_t>(i)] == NodeKind::Module; }
  // Direct pieces of node i, in order: params, children, buffers.
  template <class F>
  void for_each_piece(int32_t i, F&& f) const {
    for (int32_t j = i + 1; j < end[static_cast<size_t>(i)]; j = end[static_cast<size_t>(j)]) f(j);
  }
};

// Builds the planning tree. `no_split` marks modules; is_layer marks modules that are leaves
// (no children) or no-split, below no no-split ancestor other than the root.
PlanTree build_plan_tree(const ModelTree& tree, const SizeOptions& sizes, const NoSplitRules& no_split);

// True if the module node `i` (not the root) matches a rule.
bool matches_no_split(const ModelTree& tree, const NoSplitRules& rules, ModuleId module, const std::string& name);

// One occurrence of a parameter in named_parameters(remove_duplicate=False).
struct TiedMember {
  std::string name;
  int32_t location;  // the node itself if it is in the planning tree, else its deepest planning ancestor
  bool in_tree;      // the name is a node of the planning tree
};

// A group of names of one parameter object, sorted by name (Accelerate's find_tied_parameters).
struct TiedGroup {
  TensorId tensor;
  std::vector<TiedMember> members;
};

// Tied parameter groups in order of first appearance. With `buffers_too`, groups cover every
// tensor object reachable under several names, buffers included (the planner keeps those
// together too; Accelerate's find_tied_parameters lists parameters only).
std::vector<TiedGroup> find_tied_groups(const PlanTree& plan, bool buffers_too = false);

// get_balanced_memory over a planning tree that `planning_tree` builds on first use (it is not
// needed without accelerators), so plan_device_map builds one tree for balancing and planning.
MaxMemory balanced_memory(const ModelTree& tree, const std::function<const PlanTree&()>& planning_tree,
                          const MaxMemory& max_memory, const NoSplitRules& no_split, bool low_zero);

}  // namespace ferry::plan_detail
