#include "ferry/models/load_model.h"

#include "ferry/core/byte_size.h"
#include "ferry/core/error.h"
#include "ferry/core/log.h"
#include "ferry/dispatch/expert_cost_probe.h"
#include "ferry/dispatch/load_checkpoint_and_dispatch.h"
#include "ferry/hooks/align_devices_hook.h"
#include "ferry/io/checkpoint.h"
#include "ferry/io/weights_map.h"
#include "ferry/models/moe.h"
#include "ferry/models/pretrained.h"
#include "ferry/nn/module_tensors.h"

#include "ferry/plan/infer_device_map.h"
#include "ferry/plan/max_memory.h"

#include <ATen/ATen.h>

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

namespace ferry::models {
namespace {

/// Sets where each SparseMoeBlock runs the experts it holds in CPU RAM while the model executes on
/// an accelerator, measuring the cost model (once) when the choice is automatic, and says so.
CpuExpertsPlan place_cpu_experts(CausalLM& model, const LoadModelOptions& o) {
  CpuExpertsPlan plan;
  plan.mode = o.cpu_experts;
  std::vector<SparseMoeBlock*> blocks;
  c10::ScalarType dtype = c10::ScalarType::Undefined;  // of an expert held in RAM
  for (const auto& [name, module] : model.named_modules()) {
    auto* block = dynamic_cast<SparseMoeBlock*>(module);
    if (!block) continue;
    blocks.push_back(block);
    for (size_t e = 0; e < block->experts->size(); ++e) {
      // Held in RAM: every hook of the expert offloads to RAM, and it executes elsewhere.
      const SparseMoeBlock::ExpertHooks expert = block->expert_hooks(e);
      if (!expert.all_in_memory) continue;
      const AlignDevicesHook& hook = *expert.hooks.front();
      const auto device = hook.options().execution_device;
      if (!device || device->is_cpu()) continue;
      ++plan.experts;
      plan.device = device;
      plan.expert_bytes = expert.bytes;
      dtype = hook.offloaded_tensors().front().meta.scalar_type();
    }
  }
  for (SparseMoeBlock* block : blocks) block->cpu_experts = o.cpu_experts;
  if (plan.experts == 0) return plan;

  const ModelConfig& config = model.config();
  if (o.expert_cost_model)
    plan.cost_model = *o.expert_cost_model;
  else if (o.cpu_experts == CpuExperts::automatic)
    plan.cost_model = measure_expert_cost_model(*plan.device, dtype, config.hidden_size, config.moe_intermediate_size);
  for (SparseMoeBlock* block : blocks) block->cost_model = plan.cost_model;
  const int64_t element_bytes = static_cast<int64_t>(c10::elementSize(dtype));
  plan.max_tokens_on_cpu = plan.cost_model.max_tokens_on_cpu(plan.expert_bytes, element_bytes, config.hidden_size);

  const std::string held = std::to_string(plan.experts) + " experts held in CPU RAM (" +
                           format_bytes(static_cast<double>(plan.expert_bytes)) + " each)";
  const std::string device = plan.device->str();
  switch (o.cpu_experts) {
    case CpuExperts::compute: plan.explanation = held + " run on the CPU (--cpu-experts compute)"; break;
    case CpuExperts::copy: plan.explanation = held + " are copied to " + device + " for every call (--cpu-experts copy)"; break;
    case CpuExperts::automatic: {
      char figures[200];
      std::snprintf(figures, sizeof figures, "copying one takes %.3f ms, running it on the CPU for one token %.3f ms",
                    plan.cost_model.seconds_copying(plan.expert_bytes) * 1e3,
                    plan.cost_model.seconds_on_cpu(plan.expert_bytes, element_bytes, config.hidden_size, 1) * 1e3);
      plan.explanation = held + ": " +
                         (plan.max_tokens_on_cpu > 0
                              ? "run on the CPU for calls of up to " + std::to_string(plan.max_tokens_on_cpu) +
                                    " tokens, copied to " + device + " for more"
                              : "copied to " + device + " (the CPU is slower even for one token)") +
                         "; " + figures + "; " + plan.cost_model.describe();
      break;
    }
  }
  return plan;
}

}  // namespace

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
  out.cpu_experts = place_cpu_experts(model, o);
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
