#pragma once
/// \file
/// One call from a checkpoint folder to a model ready to generate, resident or placed over
/// GPUs, CPU RAM and disk: what `ferry run` and `ferry demo` do.
///
///     LoadModelOptions o;
///     o.device_map = "auto";                 // or balanced, balanced_low_0, sequential, a .json map
///     o.max_memory = "0=4GiB,cpu=8GiB";      // budgets for the planner
///     LoadedModel m = load_model("/models/llama", o);
///     generate(*m.model, ids, g);            // offloaded layers stream in as they run
///     m.device_map.to_json();                // where everything went
///
/// Steps, each checked before the next: config.json -> the model on the meta device -> the
/// checkpoint's names and shapes against the model -> a given device map checked against the
/// model's module names -> load_checkpoint_and_dispatch (plans a strategy with the
/// model's no-split classes, loads each weight to its placement, leaves disk-placed ones in the
/// checkpoint to be read in place, attaches the hooks).
/// A bad folder, config, checkpoint or map fails before any weight is read or any file written.

#include "ferry/dispatch/big_modeling.h"
#include "ferry/dispatch/load_checkpoint.h"
#include "ferry/io/checkpoint.h"
#include "ferry/models/causal_lm.h"
#include "ferry/plan/device_map.h"
#include "ferry/plan/expert_cost_model.h"

#include <c10/core/ScalarType.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace ferry::models {

/// How to load and place a model.
struct LoadModelOptions {
  /// Empty: resident on the CPU (no hooks). Otherwise "auto", "balanced", "balanced_low_0",
  /// "sequential" (planned with max_memory), or the path of an hf_device_map JSON file.
  std::string device_map;
  /// A device map given as entries (a pipeline stage's, say); wins over `device_map`.
  std::optional<DeviceMap> device_map_entries;
  /// Budgets for the planner, "0=4GiB,cpu=8GiB" (empty: what the machine has free).
  std::string max_memory;
  /// A mixture of experts is planned by the expert (dense parts first, then each routed expert
  /// where room remains; ferry/plan/expert_plan.h); false keeps Accelerate's whole layers.
  bool plan_by_expert = true;
  /// Empty: disk-placed weights are read in place from the checkpoint. A folder: they are written
  /// there first, as Accelerate's offload_folder (created; must be a writable folder).
  std::string offload_folder;
  /// dtype of the floating-point weights (default: the config's).
  c10::optional<c10::ScalarType> dtype;
  /// Prefetch budget of the weight streamer (bytes; 0 loads on demand).
  c10::optional<int64_t> prefetch_bytes;
  /// How weights stored in files are read (the streamer's StreamerOptions::disk_read), and the
  /// memory direct reads may take (0: derived from what is available).
  DiskRead disk_read = DiskRead::automatic;
  int64_t direct_read_budget_bytes = 0;
  /// Bytes of experts the streamer keeps loaded after they ran (StreamerOptions::expert_cache_bytes;
  /// 0: none).
  int64_t expert_cache_bytes = 0;
  StreamerOptions::ExpertCachePolicy expert_cache_policy = StreamerOptions::ExpertCachePolicy::frequency;
  /// Mixtures of experts: experts held in CPU RAM while the model executes on a GPU run on the CPU
  /// beside their weights, are copied over, or (automatic) either, per call, by the cost model
  /// (ferry/plan/expert_cost_model.h), measured at load unless given here.
  CpuExperts cpu_experts = CpuExperts::automatic;
  std::optional<ExpertCostModel> expert_cost_model;
  /// Page-lock CPU-offloaded weights when the model executes on an accelerator (default true;
  /// false gives Accelerate's pageable copies, for comparison).
  bool pin_cpu_weights = true;
  /// Called before the first weight and after each one loads (bytes, tensors, shard: LoadProgress);
  /// throwing from it stops the load.
  std::function<void(const LoadProgress&)> on_progress;
  /// Called with each planner decision when planning.
  std::function<void(const std::string&)> explain;
};

/// Where the experts held in CPU RAM run (LoadModelOptions::cpu_experts), for reports.
struct CpuExpertsPlan {
  CpuExperts mode = CpuExperts::automatic;
  /// Experts whose weights are in CPU RAM while the model executes on `device` (0: no choice to make).
  int64_t experts = 0;
  std::optional<c10::Device> device;
  /// Bytes of one of them, the cost model used and, by it, the most tokens a call runs on the CPU.
  int64_t expert_bytes = 0;
  ExpertCostModel cost_model;
  int64_t max_tokens_on_cpu = 0;
  /// One line: the choice and its figures (empty when there is none to make).
  std::string explanation;
};

/// A loaded model and where it lives.
struct LoadedModel {
  std::shared_ptr<CausalLM> model;
  /// The placement of every module ({"": cpu} for a resident model).
  DeviceMap device_map;
  /// The dispatch state (null for a resident model).
  std::shared_ptr<DispatchState> dispatch;
  /// Wall time of the whole load, in seconds.
  double load_seconds = 0;
  /// Stored bytes of the weights per placement, in the order of device_map.placements().
  std::vector<std::pair<Placement, uint64_t>> bytes_per_placement;
  /// Bytes of offloaded weights brought in per forward (0 when nothing is offloaded).
  int64_t offloaded_bytes_per_forward = 0;
  /// Mixtures of experts: where the experts held in CPU RAM run.
  CpuExpertsPlan cpu_experts;
};

/// Loads `dir` as described in the file comment. Throws ferry::Error for a folder without
/// config.json or weights, an unsupported config, a checkpoint that disagrees with the config,
/// a device map naming modules the model does not have (or leaving tensors without a placement),
/// an unknown strategy, or a bad max_memory.
LoadedModel load_model(const std::string& dir, const LoadModelOptions& options = {});

/// The same for a model already built on the meta device (create_empty_model) and its checkpoint
/// already opened and matched to it (check_checkpoint_matches): what `ferry run` does, so that
/// config.json is read once, the meta model built once and each shard opened and parsed once.
LoadedModel load_model(std::shared_ptr<CausalLM> empty_model, const io::Checkpoint& checkpoint,
                       const LoadModelOptions& options = {});


}  // namespace ferry::models
