#include "ferry/models/load_model.h"

#include "ferry/core/error.h"
#include "ferry/core/log.h"
#include "ferry/io/checkpoint.h"
#include "ferry/io/weights_map.h"
#include "ferry/models/pretrained.h"
#include "ferry/nn/module_tensors.h"

#if __has_include("ferry/plan/infer_device_map.h")
#include "ferry/plan/infer_device_map.h"
#include "ferry/plan/max_memory.h"
#include "ferry/plan/module_tree.h"
#define FERRY_MODELS_HAVE_PLANNER 1
#endif

#include <ATen/ATen.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <set>

namespace ferry::models {
namespace {

bool is_strategy(const std::string& s) {
  return s == "auto" || s == "balanced" || s == "balanced_low_0" || s == "sequential";
}

DeviceMap plan(CausalLM& model, const LoadModelOptions& o) {
#ifdef FERRY_MODELS_HAVE_PLANNER
  PlanOptions options;
  if (!o.max_memory.empty()) options.max_memory = parse_max_memory(o.max_memory);
  options.no_split.classes = model.no_split_module_classes();
  if (o.explain) options.verbose = o.explain;
  ModelTree tree = model_tree_from_module(model);
  return plan_device_map(tree, parse_strategy(o.device_map), options);
#else
  FERRY_FAIL("device map strategy '", o.device_map,
             "' needs ferry's planner (infer_auto_device_map), which this build does not include; "
             "pass a device map JSON file instead");
#endif
}

}  // namespace

bool planner_available() {
#ifdef FERRY_MODELS_HAVE_PLANNER
  return true;
#else
  return false;
#endif
}

void check_device_map_names(CausalLM& model, const DeviceMap& map) {
  std::set<std::string> modules;
  for (const auto& [name, m] : model.named_modules()) modules.insert(name);
  std::set<std::string> tensors;
  for (const auto& [name, t] : model.state_dict()) tensors.insert(name);
  for (const auto& [name, t] : model.named_buffers()) tensors.insert(name);
  for (const auto& [key, placement] : map) {
    if (key.empty() || modules.count(key) || tensors.count(key)) continue;
    std::string top;
    for (const auto& [name, child] : model.children()) top += (top.empty() ? "" : ", ") + name;
    std::string layers;
    auto names = model.decoder_layer_names();
    if (!names.empty()) layers = "; its layers are " + names.front() + " .. " + names.back();
    FERRY_FAIL("the device map names '", key, "', which is not a module or tensor of this ",
               model.config().architecture, " (top-level modules: ", top, layers, ")");
  }
  for (const auto& [name, t] : model.state_dict())
    FERRY_CHECK(map.placement_of(name).has_value(), "the device map gives no placement for '", name,
                "'; add an entry for its module (or \"\" for everything)");
}

LoadedModel load_model(const std::string& dir, const LoadModelOptions& o) {
  auto start = std::chrono::steady_clock::now();
  LoadedModel out;
  out.model = create_empty_model(dir, o.dtype);
  CausalLM& model = *out.model;
  check_checkpoint_matches(model, dir);

  if (o.device_map.empty()) {
    out.device_map.set("", Placement::cpu());
  } else if (is_strategy(o.device_map)) {
    out.device_map = plan(model, o);
  } else {
    FERRY_CHECK(std::filesystem::is_regular_file(o.device_map), "--device-map '", o.device_map,
                "' is neither a strategy (auto, balanced, balanced_low_0, sequential) nor an existing JSON file");
    out.device_map = DeviceMap::read_json_file(o.device_map);
  }
  check_device_map_names(model, out.device_map);

  // Stored bytes per placement (what the summary shows).
  std::map<std::string, uint64_t> bytes;
  {
    io::Checkpoint ckpt = io::Checkpoint::open(dir);
    for (const auto& [name, t] : model.named_parameters()) {
      auto p = out.device_map.placement_of(name);
      const io::CheckpointTensor* ct = ckpt.find(name);
      if (!p || !ct) continue;
      bytes[p->str()] += static_cast<uint64_t>(t.numel()) * t.element_size();
    }
  }
  for (const Placement& p : out.device_map.placements()) out.bytes_per_placement.emplace_back(p, bytes[p.str()]);

  // Weights: to their device, or left on meta for disk (read in place from the checkpoint).
  const DeviceMap& map = out.device_map;
  load_checkpoint_weights(
      model, dir,
      [&](const std::string& name) -> c10::optional<c10::Device> {
        auto p = map.placement_of(name);
        if (!p || p->is_disk()) return c10::nullopt;
        return p->device();
      },
      o.on_progress);

  std::vector<Placement> placements = map.placements();
  bool resident = placements.size() == 1 && !placements.front().is_disk();
  if (resident) {
    c10::Device device = placements.front().device();
    for (auto& [name, t] : model.named_buffers())
      if (t.device() != device) set_module_tensor_to_device(model, name, device);
  } else {
    DispatchOptions d;
    d.skip_keys = {"past_key_values"};
    d.offload_dir = o.offload_folder;
    if (o.prefetch_bytes) d.streamer.prefetch_bytes = *o.prefetch_bytes;
    bool any_disk = false;
    for (const auto& p : placements) any_disk = any_disk || p.is_disk();
    if (any_disk) {
      io::Checkpoint ckpt = io::Checkpoint::open(dir);
      std::vector<std::string> disk_names;  // tied copies absent from the files come through their tie
      std::set<std::string> on_disk;
      for (const auto& [name, t] : model.state_dict()) {
        auto p = map.placement_of(name);
        if (p && p->is_disk()) on_disk.insert(name);
      }
      // A disk-placed tied copy that the files omit (Qwen2's lm_head.weight) is served from the
      // stored member of its group, so that member must be visible too.
      for (const auto& group : find_tied_parameters(model))
        for (const auto& name : group)
          if (on_disk.count(name))
            for (const auto& other : group) on_disk.insert(other);
      for (const auto& name : on_disk)
        if (ckpt.contains(name)) disk_names.push_back(name);
      d.disk_weights = io::make_checkpoint_weights_map(std::move(ckpt), disk_names);
    }
    out.dispatch = dispatch_model(model, map, d);
    out.offloaded_bytes_per_forward = out.dispatch->offloaded_bytes_per_forward;
  }
  out.load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

}  // namespace ferry::models
