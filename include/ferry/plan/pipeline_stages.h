#pragma once
/// \file
/// Pipeline stages: a model's decoder layers split into consecutive runs, one per rank, in
/// proportion to each rank's share (its memory budget). Plain arithmetic, so that `ferry plan
/// --nproc N` shows the stages without LibTorch; models/pipeline.h runs them.
///
///     split_stages(32, 4);                                // layers [0,8) [8,16) [16,24) [24,32)
///     split_stages(6, std::vector<double>{8e9, 16e9});    // [0,2) [2,6): a third and two thirds
///     split_stages(16, std::vector<double>{1, 1}, 2.6);   // [0,9) [9,16): 9 layers vs 7 and the head
///     // a prefill of 1,024 positions: the head runs one of them, so 8 layers each
///     split_stages(16, {1, 1}, head_work_for_run(2.6, {1, 1024, 0, 1}, kCpuWeightReadPositions));
///     // two ranks on a host with 2 GPUs and 64 GiB free: local rank 1 gets cuda:1 and 32 GiB of RAM
///     MaxMemory mine = local_rank_budget(get_max_memory(), /*local_rank=*/1, /*local_world_size=*/2);

#include "ferry/plan/max_memory.h"

#include <cstdint>
#include <vector>

namespace ferry {

/// The decoder layers [first_layer, end_layer) of one rank.
struct PipelineStage {
  int rank = 0;
  int world_size = 1;
  int64_t first_layer = 0;
  int64_t end_layer = 0;
  bool is_first() const { return rank == 0; }
  bool is_last() const { return rank == world_size - 1; }
};

/// Consecutive stages of `layers` decoder layers, one per share, in proportion to the shares (a
/// rank's memory budget, say; equal shares split evenly, earlier stages taking the remainder).
/// `head_layers`: the work of the last stage's head (final norm and lm_head) in decoder layers'
/// worth; the last stage takes that much less of the layers, so that the stages take equally long
/// (a 32,000 x 1024 head is 2.6 layers of a 1024-wide Llama). Every stage gets at least one layer.
/// Throws ferry::Error for more ranks than layers, a share that is not positive or a negative head.
std::vector<PipelineStage> split_stages(int64_t layers, const std::vector<double>& shares, double head_layers = 0);
/// Equal shares for `world_size` ranks.
std::vector<PipelineStage> split_stages(int64_t layers, int world_size);

/// What one generation asks of the model: `rows` prompts of `prompt` positions, run `prefill_chunk`
/// positions per forward (0: the whole prompt at once), then `new_tokens` tokens each;
/// `prompt_logits` when the head also runs every prompt position (logits wanted for all of them).
struct RunShape {
  int64_t rows = 1;
  int64_t prompt = 1;
  int64_t prefill_chunk = 0;
  int64_t new_tokens = 1;
  bool prompt_logits = false;
};

/// Positions whose compute costs as much as reading a module's weights once: a forward of n
/// positions costs a module (weight_read_positions + n) units. About 32 on a CPU in float32 (here, a
/// 1024-wide Llama layer: 9.4 ms to read, 0.33 ms per position) and about 200 on a GPU (an H200's
/// bfloat16 rate over its memory bandwidth).
constexpr double kCpuWeightReadPositions = 32;
constexpr double kGpuWeightReadPositions = 200;

/// The head's work in decoder layers' worth over a run of shape `run`, for split_stages: the head
/// costs `head_layers` layers in a decoding step, but it runs one position per prompt per forward
/// while the layers run every position, so a long prefill makes it nearly free (a prompt of 1,024
/// positions, one new token, on a CPU: 0.08 of 2.6). Decoding-heavy runs keep about `head_layers`.
double head_work_for_run(double head_layers, const RunShape& run, double weight_read_positions);

/// One rank's part of what its host has (`host`, as get_max_memory() measures it), for
/// `local_world_size` ranks on the host (LOCAL_WORLD_SIZE), this one being `local_rank`: the GPUs
/// dealt out in turn (GPU g to local rank g % local_world_size; with fewer GPUs than ranks, rank l
/// shares GPU l % GPUs with the other ranks on it, each an equal part of its memory), the host's
/// RAM in equal parts, disk as it is. Without it every rank of a host would plan over all of the
/// host's memory, and the stages would put themselves on the same GPU and overcommit it.
MaxMemory local_rank_budget(const MaxMemory& host, int local_rank, int local_world_size);

}  // namespace ferry
