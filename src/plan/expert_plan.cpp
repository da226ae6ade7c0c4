#include "ferry/plan/expert_plan.h"

#include "ferry/core/byte_size.h"
#include "ferry/core/error.h"
#include "ferry/plan/check_device_map.h"
#include "ferry/plan/max_memory.h"
#include "ferry/plan/module_sizes.h"

#include <algorithm>
#include <cstdint>
#include <optional>
#include <unordered_set>
#include <utility>

namespace ferry {
namespace {

std::string join(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "." + name;
}

// Every module path of `tree` in execution (depth-first, registration) order, each module once.
template <class Visit>  // bool visit(ModuleId, const std::string& path): false = do not descend
void walk_modules(const ModelTree& tree, Visit&& visit) {
  std::vector<uint8_t> seen(tree.module_count(), 0);
  std::vector<std::pair<ModuleId, std::string>> stack{{tree.root(), ""}};
  seen[static_cast<size_t>(tree.root())] = 1;
  while (!stack.empty()) {
    auto [id, path] = std::move(stack.back());
    stack.pop_back();
    if (!visit(id, path)) continue;
    const auto& children = tree.module(id).children;
    for (auto c = children.rbegin(); c != children.rend(); ++c) {
      if (seen[static_cast<size_t>(c->module)]) continue;
      seen[static_cast<size_t>(c->module)] = 1;
      stack.emplace_back(c->module, join(path, c->name));
    }
  }
}

// The dense parts of `tree`: the same modules, slots and names, without the routed experts.
ModelTree dense_tree(const ModelTree& tree) {
  ModelTree dense(tree.module(tree.root()).class_name);
  std::vector<ModuleId> module_of(tree.module_count(), -1);
  std::vector<TensorId> tensor_of(tree.tensor_count(), kNoTensor);
  auto copy_tensor = [&](TensorId t) {
    if (t == kNoTensor) return kNoTensor;
    TensorId& copy = tensor_of[static_cast<size_t>(t)];
    if (copy == kNoTensor) copy = dense.add_tensor(tree.tensor(t));
    return copy;
  };
  module_of[static_cast<size_t>(tree.root())] = dense.root();
  std::vector<std::pair<ModuleId, std::string>> stack{{tree.root(), ""}};
  while (!stack.empty()) {
    auto [id, path] = std::move(stack.back());
    stack.pop_back();
    const TreeModule& m = tree.module(id);
    const ModuleId copy = module_of[static_cast<size_t>(id)];
    for (const auto& p : m.params) dense.add_param_slot(copy, p.name, copy_tensor(p.tensor));
    for (const auto& b : m.buffers) dense.add_buffer_slot(copy, b.name, copy_tensor(b.tensor), b.persistent);
    for (const auto& c : m.children) {
      std::string child_path = join(path, c.name);
      if (is_routed_expert(child_path)) continue;
      ModuleId& child = module_of[static_cast<size_t>(c.module)];
      if (child >= 0) {
        dense.add_child(copy, c.name, child);  // registered twice: the same module again
        continue;
      }
      child = dense.add_submodule(copy, c.name, tree.module(c.module).class_name);
      stack.emplace_back(c.module, std::move(child_path));
    }
  }
  return dense;
}

struct Expert {
  std::string path;
  int64_t bits = 0;
  size_t device = 0;  // index into the device list
};

bool is_number(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// "model.layers.0.mlp.experts.3" -> "model.layers.0.mlp.experts"
std::string container_of(const std::string& expert) { return expert.substr(0, expert.rfind('.')); }

}  // namespace

bool is_routed_expert(std::string_view name) {
  const size_t last = name.rfind('.');
  if (last == std::string_view::npos || !is_number(name.substr(last + 1))) return false;
  std::string_view parent = name.substr(0, last);
  const size_t before = parent.rfind('.');
  return parent.substr(before == std::string_view::npos ? 0 : before + 1) == "experts";
}

bool has_routed_experts(const ModelTree& tree) {
  // On local names, without building paths: every plan of every model asks this.
  for (size_t id = 0; id < tree.module_count(); ++id)
    for (const auto& child : tree.module(static_cast<ModuleId>(id)).children)
      if (child.name == "experts")
        for (const auto& expert : tree.module(child.module).children)
          if (is_number(expert.name)) return true;
  return false;
}

DeviceMap plan_by_expert(const ModelTree& tree, const PlanOptions& options) {
  // 1. The dense parts, by Accelerate's algorithm (budgets, reservation, no-split rules).
  const ModelTree dense = dense_tree(tree);
  PlanOptions dense_options = options;
  dense_options.plan_by_expert = false;
  dense_options.clean_result = false;
  const DeviceMap dense_map = infer_auto_device_map(dense, dense_options);

  // 2. The devices, their budgets, and what the dense parts left of them.
  std::vector<Placement> devices;
  std::vector<int64_t> room;
  for (const auto& b : get_max_memory(options.max_memory)) {
    if (b.device.is_disk()) continue;
    devices.push_back(b.device);
    room.push_back(b.bytes * 8);
  }
  devices.push_back(Placement::disk());
  room.push_back(INT64_MAX / 4);
  auto index_of = [&](const Placement& p) {
    return static_cast<size_t>(std::find(devices.begin(), devices.end(), p) - devices.begin());
  };

  // One walk over the model: what the dense parts take of each device, what each expert weighs
  // (each tensor counted once, where it is first met), which modules hold experts.
  std::vector<Expert> experts;
  std::unordered_set<std::string> holds_experts{""};
  {
    struct Frame {
      ModuleId id;
      std::string path;
      std::optional<Placement> placement;  // of the dense entry covering this module, if any
      int64_t expert;                      // index of the expert this module belongs to, or -1
    };
    std::vector<uint8_t> seen_module(tree.module_count(), 0), seen_tensor(tree.tensor_count(), 0);
    std::vector<Frame> stack;
    stack.push_back({tree.root(), "", dense_map.contains("") ? std::optional(dense_map.at("")) : std::nullopt, -1});
    while (!stack.empty()) {
      Frame f = std::move(stack.back());
      stack.pop_back();
      if (f.expert < 0 && is_routed_expert(f.path)) {
        f.expert = static_cast<int64_t>(experts.size());
        experts.push_back({f.path, 0, 0});
        for (size_t dot = f.path.rfind('.'); dot != std::string::npos && dot > 0; dot = f.path.rfind('.', dot - 1))
          if (!holds_experts.insert(f.path.substr(0, dot)).second) break;
      }
      const TreeModule& m = tree.module(f.id);
      for (const auto* slots : {&m.params, &m.buffers})
        for (const auto& slot : *slots) {
          if (slot.tensor == kNoTensor || seen_tensor[static_cast<size_t>(slot.tensor)]) continue;
          seen_tensor[static_cast<size_t>(slot.tensor)] = 1;
          const std::string name = join(f.path, slot.name);
          const int64_t bits = tensor_size_bits(tree.tensor(slot.tensor), name, options.sizes);
          if (f.expert >= 0) {
            experts[static_cast<size_t>(f.expert)].bits += bits;
            continue;
          }
          const std::optional<Placement> p = dense_map.contains(name) ? std::optional(dense_map.at(name)) : f.placement;
          const size_t d = p ? index_of(*p) : devices.size();
          if (d < devices.size() && !p->is_disk()) room[d] -= bits;
        }
      for (auto c = m.children.rbegin(); c != m.children.rend(); ++c) {
        if (seen_module[static_cast<size_t>(c->module)]) continue;
        seen_module[static_cast<size_t>(c->module)] = 1;
        std::string path = join(f.path, c->name);
        std::optional<Placement> placement =
            f.expert < 0 && dense_map.contains(path) ? std::optional(dense_map.at(path)) : f.placement;
        stack.push_back({c->module, std::move(path), std::move(placement), f.expert});
      }
    }
  }

  // The room kept on the main devices (the first GPU and the CPU) for what executes there
  // without living there: the largest dense layer, or one token's experts streamed in.
  int64_t largest_expert = 0;
  for (const auto& e : experts) largest_expert = std::max(largest_expert, e.bits);
  const int64_t per_token = options.experts_per_token > 0 ? options.experts_per_token : 2;
  const int64_t reserve =
      std::max(get_max_layer_size(dense, options.no_split, options.sizes).bits, per_token * largest_expert);
  bool first_gpu = true;
  for (size_t d = 0; d < devices.size(); ++d) {
    const bool main = devices[d].is_cpu() || (devices[d].is_accelerator() && std::exchange(first_gpu, false));
    if (main) room[d] -= reserve;
  }

  // 3. Each expert on the first device with room: its layer's GPU, the other GPUs, the CPU, disk.
  std::vector<size_t> order;
  for (auto& e : experts) {
    const std::optional<Placement> layer = dense_map.placement_of(container_of(e.path));
    order.clear();
    if (layer && layer->is_accelerator()) order.push_back(index_of(*layer));
    for (size_t d = 0; d < devices.size(); ++d)
      if (devices[d].is_accelerator() && (order.empty() || order.front() != d)) order.push_back(d);
    for (size_t d = 0; d < devices.size(); ++d)
      if (!devices[d].is_accelerator()) order.push_back(d);  // the CPU, then disk (last in the list)
    for (size_t d : order) {
      if (d < devices.size() && e.bits <= room[d]) {
        e.device = d;
        room[d] -= devices[d].is_disk() ? 0 : e.bits;
        break;
      }
    }
  }
  if (options.verbose) {
    for (size_t i = 0; i < experts.size();) {
      const std::string container = container_of(experts[i].path);
      std::vector<size_t> count(devices.size(), 0);
      size_t j = i;
      for (; j < experts.size() && container_of(experts[j].path) == container; ++j) ++count[experts[j].device];
      std::string line = container + ": " + std::to_string(j - i) + " routed experts (" +
                         format_bytes(static_cast<double>(experts[i].bits) / 8.0) + " each) ->";
      for (size_t d = 0; d < devices.size(); ++d)
        if (count[d]) line += " " + std::to_string(count[d]) + " on " + devices[d].hf_str();
      options.verbose(line);
      i = j;
    }
  }

  // 4. One map: dense entries, split wherever a module holds experts, and one entry per expert.
  DeviceMap map;
  size_t next_expert = 0;
  walk_modules(tree, [&](ModuleId id, const std::string& path) {
    if (next_expert < experts.size() && experts[next_expert].path == path) {
      map.set(path, devices[experts[next_expert++].device]);
      return false;
    }
    if (!holds_experts.count(path)) {
      if (std::optional<std::string> owner = dense_map.owner_of(path)) {
        map.set(path, dense_map.at(*owner));
        return false;
      }
    }
    const TreeModule& m = tree.module(id);  // split: its own tensors, then its children
    for (const auto* slots : {&m.params, &m.buffers})
      for (const auto& slot : *slots) {
        const std::string name = join(path, slot.name);
        if (std::optional<Placement> p = dense_map.placement_of(name)) map.set(name, *p);
      }
    return true;
  });
  FERRY_CHECK(next_expert == experts.size(), "plan_by_expert: ", experts.size() - next_expert,
              " routed experts were not reached by the walk");
  return options.clean_result ? clean_device_map(map) : map;
}

}  // namespace ferry
