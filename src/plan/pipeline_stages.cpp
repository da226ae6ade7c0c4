#include "ferry/plan/pipeline_stages.h"

#include "ferry/core/error.h"

#include <algorithm>
#include <cmath>

namespace ferry {

std::vector<PipelineStage> split_stages(int64_t layers, const std::vector<double>& shares, double head_layers) {
  const int world = static_cast<int>(shares.size());
  FERRY_CHECK(world >= 1, "a pipeline needs at least one rank");
  FERRY_CHECK(layers >= world, "a pipeline of ", world, " ranks needs at least ", world, " decoder layers; this model has ",
              layers, ". Use at most ", layers, " ranks");
  double total = 0;
  for (size_t r = 0; r < shares.size(); ++r) {
    FERRY_CHECK(shares[r] > 0 && std::isfinite(shares[r]), "rank ", r, "'s share of the layers must be positive, got ",
                shares[r]);
    total += shares[r];
  }
  FERRY_CHECK(head_layers >= 0 && std::isfinite(head_layers), "the head's work must be 0 or more layers, got ", head_layers);
  const double work = static_cast<double>(layers) + head_layers;  // the head comes after the last layer
  std::vector<PipelineStage> stages(static_cast<size_t>(world));
  double cumulative = 0;
  int64_t begin = 0;
  for (int r = 0; r < world; ++r) {
    cumulative += shares[static_cast<size_t>(r)];
    // Round the cumulative boundary (halves up), keeping one layer for each later rank and at least one here.
    int64_t end = r == world - 1 ? layers : static_cast<int64_t>(std::floor(cumulative / total * work + 0.5 + 1e-9));
    end = std::max(end, begin + 1);
    end = std::min(end, layers - (world - 1 - r));
    stages[static_cast<size_t>(r)] = {r, world, begin, end};
    begin = end;
  }
  return stages;
}

double head_work_for_run(double head_layers, const RunShape& run, double weight_read_positions) {
  FERRY_CHECK(run.rows >= 1 && run.prompt >= 1 && run.prefill_chunk >= 0 && run.new_tokens >= 0 &&
                  weight_read_positions >= 0,
              "a run of ", run.rows, " prompt(s) of ", run.prompt, " position(s), chunks of ", run.prefill_chunk, ", ",
              run.new_tokens, " new token(s) and ", weight_read_positions, " positions per weight read does not make sense");
  const int64_t chunk = run.prefill_chunk > 0 ? std::min(run.prefill_chunk, run.prompt) : run.prompt;
  const int64_t chunks = (run.prompt + chunk - 1) / chunk;
  const double decode_steps = static_cast<double>(std::max<int64_t>(run.new_tokens - 1, 0));
  const double step = weight_read_positions + static_cast<double>(run.rows);  // one position per prompt
  // The layers run every prompt position (in its chunks), then one per prompt and step; the head
  // one position per prompt in each forward (or, with the prompt's logits, every one as the layers).
  const double prefill = static_cast<double>(chunks) * weight_read_positions + static_cast<double>(run.rows * run.prompt);
  const double prefill_head = run.prompt_logits ? prefill : static_cast<double>(chunks) * step;
  return head_layers * (prefill_head + decode_steps * step) / (prefill + decode_steps * step);
}

std::vector<PipelineStage> split_stages(int64_t layers, int world_size) {
  return split_stages(layers, std::vector<double>(static_cast<size_t>(std::max(world_size, 0)), 1.0));
}

MaxMemory local_rank_budget(const MaxMemory& host, int local_rank, int local_world_size) {
  FERRY_CHECK(local_world_size >= 1 && local_rank >= 0 && local_rank < local_world_size, "local rank ", local_rank,
              " of ", local_world_size, " ranks on this host: LOCAL_RANK must be in [0, LOCAL_WORLD_SIZE)");
  const auto ranks = static_cast<int64_t>(local_world_size), rank = static_cast<int64_t>(local_rank);
  const auto gpus = static_cast<int64_t>(
      std::count_if(host.begin(), host.end(), [](const DeviceBudget& b) { return b.device.is_accelerator(); }));
  MaxMemory mine;
  int64_t gpu = 0;  // the index of the next GPU among the host's GPUs
  for (const DeviceBudget& b : host) {
    if (b.device.is_disk()) {
      mine.push_back(b);
    } else if (!b.device.is_accelerator()) {  // host RAM
      mine.push_back({b.device, b.bytes / ranks});
    } else if (const int64_t g = gpu++; gpus >= ranks) {
      if (g % ranks == rank) mine.push_back(b);
    } else if (g == rank % gpus) {
      const int64_t sharing = (ranks - g + gpus - 1) / gpus;  // the ranks r with r % gpus == g
      mine.push_back({b.device, b.bytes / sharing});
    }
  }
  return mine;
}

}  // namespace ferry
