#include "ferry/plan/balanced_memory.h"

#include "plan_tree.h"

#include <algorithm>
#include <optional>

namespace ferry {

namespace plan_detail {

MaxMemory balanced_memory(const ModelTree& tree, const std::function<const PlanTree&()>& planning_tree,
                          const MaxMemory& max_memory, const NoSplitRules& no_split, bool low_zero) {
  const bool user_gave = !max_memory.empty();
  MaxMemory budget = get_max_memory(max_memory);
  auto is_gpu = [](const DeviceBudget& b) {
    return b.device.is_device() && b.device.device().type() == c10::kCUDA && b.device.device().has_index();
  };
  std::vector<size_t> ids;  // accelerators with a positive budget, by ordinal (budget is sorted)
  for (size_t i = 0; i < budget.size(); ++i)
    if (is_gpu(budget[i]) && budget[i].bytes > 0) ids.push_back(i);
  const size_t n = ids.size();
  if (n == 0) return budget;
  if (n == 1) {
    low_zero = false;
    if (!user_gave) {
      for (auto& b : budget)
        if (is_gpu(b)) {
          b.bytes = static_cast<int64_t>(static_cast<double>(b.bytes) * 0.9);
          break;
        }
    }
  }

  const PlanTree& plan = planning_tree();
  const int64_t total_bits = plan.bits[0];
  const int64_t per_gpu_bytes = total_bits / (8 * static_cast<int64_t>(low_zero ? n - 1 : n));

  // Accelerate's sizes dict in insertion order: every canonical tensor's ancestors, top-down.
  std::vector<uint8_t> touched(static_cast<size_t>(plan.size()), 0);
  std::vector<int32_t> order, chain;
  for (NodeKind kind : {NodeKind::Param, NodeKind::Buffer})
    for (int32_t i = 0; i < plan.size(); ++i) {
      if (!plan.is_module(i) || !plan.walked[static_cast<size_t>(i)]) continue;
      plan.for_each_piece(i, [&](int32_t j) {
        if (plan.kind[static_cast<size_t>(j)] != kind || !plan.canonical[static_cast<size_t>(j)]) return;
        chain.clear();
        for (int32_t a = j; a >= 0 && !touched[static_cast<size_t>(a)]; a = plan.parent[static_cast<size_t>(a)]) {
          touched[static_cast<size_t>(a)] = 1;
          chain.push_back(a);
        }
        order.insert(order.end(), chain.rbegin(), chain.rend());
      });
    }

  // The first size of each no-split rule, in that order.
  int64_t buffer_bits = 0;
  if (!no_split.empty()) {
    const size_t rules = no_split.classes.size() + no_split.patterns.size();
    std::vector<uint8_t> seen(rules, 0);
    size_t seen_count = 0;
    for (int32_t i : order) {
      if (i == 0 || !plan.is_module(i)) continue;
      const auto& name = plan.name[static_cast<size_t>(i)];
      const auto& cls = tree.module(plan.ref[static_cast<size_t>(i)]).class_name;
      for (size_t r = 0; r < rules; ++r) {
        bool match = r < no_split.classes.size()
                         ? (!cls.empty() && cls == no_split.classes[r])
                         : module_name_matches(no_split.patterns[r - no_split.classes.size()], name);
        if (match && !seen[r]) {
          seen[r] = 1;
          ++seen_count;
          buffer_bits = std::max(buffer_bits, plan.bits[static_cast<size_t>(i)]);
        }
      }
      if (seen_count == rules) break;
    }
  }

  // Mean size of the lowest modules that hold tensors (get_module_leaves applied twice).
  std::vector<uint8_t> has_touched_child(static_cast<size_t>(plan.size()), 0);
  for (int32_t i : order)
    if (i != 0) has_touched_child[static_cast<size_t>(plan.parent[static_cast<size_t>(i)])] = 1;
  std::vector<uint8_t> has_module_child(static_cast<size_t>(plan.size()), 0);
  for (int32_t i : order)
    if (i != 0 && has_touched_child[static_cast<size_t>(i)])  // i is in sizes minus leaves
      has_module_child[static_cast<size_t>(plan.parent[static_cast<size_t>(i)])] = 1;
  int64_t leaf_bits = 0, leaf_count = 0;
  for (int32_t i : order)
    if (i != 0 && has_touched_child[static_cast<size_t>(i)] && !has_module_child[static_cast<size_t>(i)]) {
      leaf_bits += plan.bits[static_cast<size_t>(i)];
      ++leaf_count;
    }
  const int64_t mean_bytes = leaf_bits / (8 * std::max<int64_t>(leaf_count, 1));
  const int64_t extra = 5 * std::max(buffer_bits, mean_bytes * 8) / 32;  // int(1.25 * max(buffer, mean)) bytes
  const int64_t per_gpu = per_gpu_bytes + extra;

  for (size_t k = 0; k + 1 < ids.size(); ++k) {
    auto& b = budget[ids[k]];
    const bool keep = low_zero && k == 0;
    b.bytes = std::min(keep ? b.bytes : per_gpu, b.bytes);
  }
  if (low_zero) {
    // Accelerate sums ordinals 1..n-1 and sets ordinal 0; ferry uses the real ordinals.
    int64_t others = 0;
    for (size_t k = 1; k < ids.size(); ++k) others += budget[ids[k]].bytes;
    const int64_t total_bytes = (total_bits + 7) / 8;
    auto& zero = budget[ids[0]];
    zero.bytes = std::min(std::max<int64_t>(0, total_bytes - others), zero.bytes);
  }
  return budget;
}

}  // namespace plan_detail

MaxMemory get_balanced_memory(const ModelTree& tree, const MaxMemory& max_memory, const NoSplitRules& no_split,
                              const SizeOptions& sizes, bool low_zero) {
  std::optional<plan_detail::PlanTree> plan;
  return plan_detail::balanced_memory(
      tree, [&]() -> const plan_detail::PlanTree& { return plan ? *plan : plan.emplace(plan_detail::build_plan_tree(tree, sizes, no_split)); },
      max_memory, no_split, low_zero);
}

}  // namespace ferry
