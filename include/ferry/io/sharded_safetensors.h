#pragma once
/// \file
/// A checkpoint cut into safetensors shards the way transformers' save_pretrained cuts it: tensors
/// in order, a new shard when the next one would pass the limit (a larger tensor gets a shard of its
/// own), files `model.safetensors` or `model-00001-of-0000N.safetensors` with
/// `model.safetensors.index.json`. save_pretrained and `ferry convert` both write through it.
///
///     ferry::io::ShardPlan plan = ferry::io::plan_shards(bytes_of_each_tensor, 5ull << 30);
///     ferry::io::save_sharded_safetensors(folder, plan, [&](size_t i) { return tensors[i]; });

#include "ferry/io/safetensors.h"

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace ferry::io {

/// Which tensors (by index) go in which shard, and the file names.
struct ShardPlan {
  std::vector<std::vector<size_t>> shards;
  std::vector<std::string> files;
  uint64_t total_bytes = 0;
};

/// Cuts tensors of `tensor_bytes` bytes, in order, into shards of at most `max_shard_bytes`.
ShardPlan plan_shards(const std::vector<uint64_t>& tensor_bytes, uint64_t max_shard_bytes);

/// Writes `plan`'s shard files into `folder`, and the index when there are several. `tensor(i)` gives
/// tensor i (name and value); it is called shard by shard, so one shard is in memory at a time.
void save_sharded_safetensors(const std::string& folder, const ShardPlan& plan,
                              const std::function<std::pair<std::string, at::Tensor>(size_t index)>& tensor);

}  // namespace ferry::io
