#pragma once
/// \file
/// Pipeline stages: a model's decoder layers split into consecutive runs, one per rank, in
/// proportion to each rank's share (its memory budget). Plain arithmetic, so that `ferry plan
/// --nproc N` shows the stages without LibTorch; models/pipeline.h runs them.
///
///     split_stages(32, 4);                                // layers [0,8) [8,16) [16,24) [24,32)
///     split_stages(6, std::vector<double>{8e9, 16e9});    // [0,2) [2,6): a third and two thirds

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
/// Every stage gets at least one layer. Throws ferry::Error for more ranks than layers or a share
/// that is not positive.
std::vector<PipelineStage> split_stages(int64_t layers, const std::vector<double>& shares);
/// Equal shares for `world_size` ranks.
std::vector<PipelineStage> split_stages(int64_t layers, int world_size);

}  // namespace ferry
