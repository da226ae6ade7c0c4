#include "ferry/models/load_model.h"

#include "ferry/core/error.h"
#include "ferry/core/log.h"
#include "ferry/dispatch/load_checkpoint_and_dispatch.h"
#include "ferry/io/checkpoint.h"
#include "ferry/io/weights_map.h"
#include "ferry/models/pretrained.h"
#include "ferry/nn/module_tensors.h"

#include "ferry/plan/infer_device_map.h"
#include "ferry/plan/max_memory.h"

#include <ATen/ATen.h>

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

namespace ferry::models {
LoadedModel load_model(const std::string& dir, const LoadModelOptions& o) {
  auto model = create_empty_model(dir, o.dtype);
  const io::Checkpoint checkpoint = check_checkpoint_matches(*model, open_model_checkpoint(dir));
  return load_model(std::move(model), checkpoint, o);
}

LoadedModel load_model(std::shared_ptr<CausalLM> empty_model, const io::Checkpoint& checkpoint,
                       const LoadModelOptions& o) {
  auto start = std::chrono::steady_clock::now();
  LoadedModel out;
  out.model = std::move(empty_model);
  FERRY_ASSERT(out.model != nullptr, "load_model needs a model built with create_empty_model");
  CausalLM& model = *out.model;
  LoadAndDispatchOptions options;
  options.plan.no_split.classes = model.no_split_module_classes();
  options.plan.plan_by_expert = o.plan_by_expert;
  options.plan.experts_per_token = model.config().num_experts_per_tok;
  options.dispatch.skip_keys = {"past_key_values"};
  if (!o.offload_folder.empty()) {
    // Given a folder, disk-placed weights are written there as Accelerate does (an option is used
    // or refused, never accepted and ignored); checked before anything is loaded.
    namespace fs = std::filesystem;
    std::error_code ec;
    FERRY_CHECK(!fs::exists(o.offload_folder, ec) || fs::is_directory(o.offload_folder, ec), "offload_folder '",
                o.offload_folder, "' exists and is not a folder");
    fs::create_directories(o.offload_folder, ec);
    FERRY_CHECK(!ec, "offload_folder '", o.offload_folder, "' cannot be created: ", ec.message());
    FERRY_CHECK(::access(o.offload_folder.c_str(), W_OK) == 0, "offload_folder '", o.offload_folder,
                "' is not writable: ", std::strerror(errno));
    options.offload_folder = o.offload_folder;
    options.load.disk_in_place = false;
  }
  options.plan.verbose = o.explain;
  if (o.prefetch_bytes) options.dispatch.streamer.prefetch_bytes = *o.prefetch_bytes;
  options.dispatch.streamer.pin_cpu_weights = o.pin_cpu_weights;
  options.dispatch.streamer.disk_read = o.disk_read;
  options.dispatch.streamer.direct_read_budget_bytes = o.direct_read_budget_bytes;
  options.dispatch.streamer.expert_cache_bytes = o.expert_cache_bytes;
  options.dispatch.streamer.expert_cache_policy = o.expert_cache_policy;
  if (!o.max_memory.empty()) options.plan.max_memory = parse_max_memory(o.max_memory);
  if (o.device_map_entries) {
    options.device_map = *o.device_map_entries;
  } else if (o.device_map.empty()) {
    options.device_map = DeviceMap{{"", Placement::cpu()}};
  } else if (find_strategy(o.device_map)) {
    options.strategy = o.device_map;
  } else {
    try {
      options.device_map = DeviceMap::read_json_file(o.device_map);
    } catch (const Error& e) {
      throw e.in("load_model", "device_map '" + o.device_map +
                                   "' is not a strategy (auto, balanced, balanced_low_0, sequential), so it must be a "
                                   "device-map JSON file: ");
    }
  }

  options.load.on_progress = o.on_progress;
  DispatchResult r = load_checkpoint_and_dispatch(model, checkpoint, options);
  out.device_map = r.device_map;
  out.dispatch = r.state;
  if (!o.offload_folder.empty() && r.load.disk_keys.empty())
    log_warning("offload_folder '" + o.offload_folder + "' was not needed: nothing was placed on disk");
  if (out.dispatch) out.offloaded_bytes_per_forward = out.dispatch->offloaded_bytes_per_forward;
  // A single-device map moves the model without hooks; the non-persistent buffers go along.
  std::vector<Placement> placements = out.device_map.placements();
  if (placements.size() == 1 && placements.front().is_device()) {
    c10::Device device = placements.front().device();
    for (auto& [name, t] : model.named_buffers())
      if (t.device() != device) set_module_tensor_to_device(model, name, device);
  }

  // Stored bytes per placement (what the summary shows); a tied tensor counts once.
  std::map<std::string, uint64_t> bytes;
  for (const auto& [name, t] : model.named_parameters()) {
    auto p = out.device_map.placement_of(name);
    if (p && checkpoint.contains(name)) bytes[p->str()] += checkpoint.at(name).nbytes;
  }
  for (const Placement& p : placements) out.bytes_per_placement.emplace_back(p, bytes[p.str()]);
  out.load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

}  // namespace ferry::models
