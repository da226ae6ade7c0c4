#include "ferry/plan/module_sizes.h"

#include "plan_tree.h"

namespace ferry {

void ModuleSizes::add(const std::string& name, int64_t bits) {
  auto it = index_.find(name);
  if (it == index_.end()) {
    index_.emplace(name, entries_.size());
    entries_.emplace_back(name, bits);
  } else {
    entries_[it->second].second += bits;
  }
}

int64_t ModuleSizes::bits(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? 0 : entries_[it->second].second;
}

ModuleSizes compute_module_sizes(const ModelTree& tree, const SizeOptions& options, bool buffers_only) {
  using plan_detail::NodeKind;
  plan_detail::PlanTree plan = plan_detail::build_plan_tree(tree, options, {});
  ModuleSizes sizes;
  std::vector<int32_t> chain;
  for (NodeKind kind : {NodeKind::Param, NodeKind::Buffer}) {
    if (buffers_only && kind == NodeKind::Param) continue;
    for (int32_t i = 0; i < plan.size(); ++i) {
      if (!plan.is_module(i) || !plan.walked[static_cast<size_t>(i)]) continue;
      plan.for_each_piece(i, [&](int32_t j) {
        auto uj = static_cast<size_t>(j);
        if (plan.kind[uj] != kind || !plan.canonical[uj]) return;
        chain.clear();
        for (int32_t a = j; a >= 0; a = plan.parent[static_cast<size_t>(a)]) chain.push_back(a);
        const int64_t bits = plan.bits[uj];
        for (auto it = chain.rbegin(); it != chain.rend(); ++it) sizes.add(plan.name[static_cast<size_t>(*it)], bits);
      });
    }
  }
  return sizes;
}

double compute_module_total_buffer_size(const ModelTree& tree, const SizeOptions& options) {
  return compute_module_sizes(tree, options, /*buffers_only=*/true).bytes("");
}

MaxLayer get_max_layer_size(const ModelTree& tree, const NoSplitRules& no_split, const SizeOptions& options) {
  plan_detail::PlanTree plan = plan_detail::build_plan_tree(tree, options, no_split);
  MaxLayer best;
  auto consider = [&](int32_t i) {
    int64_t b = plan.bits[static_cast<size_t>(i)];
    if (b > best.bits || best.names.empty()) {
      best.bits = b;
      best.names = {plan.name[static_cast<size_t>(i)]};
    } else if (b == best.bits) {
      best.names.push_back(plan.name[static_cast<size_t>(i)]);
    }
  };
  // Pre-order == Accelerate's depth-first order; the root's direct tensors are its first pieces
  // (params) and last pieces (buffers), matching its todo list.
  for (int32_t i = 1; i < plan.size(); ++i) {
    bool root_tensor = plan.parent[static_cast<size_t>(i)] == 0 && !plan.is_module(i);
    if (root_tensor || plan.is_layer[static_cast<size_t>(i)]) consider(i);
  }
  return best;
}

}  // namespace ferry
