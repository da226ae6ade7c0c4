#include "ferry/io/sharded_safetensors.h"

#include "ferry/io/atomic_file.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>

namespace ferry::io {

ShardPlan plan_shards(const std::vector<uint64_t>& tensor_bytes, uint64_t max_shard_bytes) {
  ShardPlan plan;
  plan.shards.emplace_back();
  uint64_t shard_bytes = 0;
  for (size_t i = 0; i < tensor_bytes.size(); ++i) {
    if (!plan.shards.back().empty() && shard_bytes + tensor_bytes[i] > max_shard_bytes) {
      plan.shards.emplace_back();
      shard_bytes = 0;
    }
    plan.shards.back().push_back(i);
    shard_bytes += tensor_bytes[i];
    plan.total_bytes += tensor_bytes[i];
  }
  const size_t n = plan.shards.size();
  for (size_t s = 0; s < n; ++s) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", s + 1, n);
    plan.files.push_back(n == 1 ? "model.safetensors" : name);
  }
  return plan;
}

void save_sharded_safetensors(const std::string& folder, const ShardPlan& plan,
                              const std::function<std::pair<std::string, at::Tensor>(size_t index)>& tensor) {
  namespace fs = std::filesystem;
  nlohmann::json weight_map = nlohmann::json::object();
  for (size_t s = 0; s < plan.shards.size(); ++s) {
    NamedTensors tensors;
    for (size_t i : plan.shards[s]) {
      tensors.push_back(tensor(i));
      weight_map[tensors.back().first] = plan.files[s];
    }
    save_safetensors((fs::path(folder) / plan.files[s]).string(), tensors, {{"format", "pt"}});
  }
  if (plan.shards.size() > 1) {
    const nlohmann::json index = {{"metadata", {{"total_size", plan.total_bytes}}}, {"weight_map", weight_map}};
    write_file_atomically((fs::path(folder) / "model.safetensors.index.json").string(), index.dump(2) + "\n");
  }
}

}  // namespace ferry::io
