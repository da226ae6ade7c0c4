#include "ferry/io/checkpoint.h"

#include "ferry/core/error.h"
#include "io/json_util.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

namespace ferry::io {
namespace fs = std::filesystem;
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string bin_refusal(const std::string& path) {
  return ::ferry::detail::concat(
      path,
      " is a PyTorch pickle checkpoint (.bin). ferry reads safetensors only: LibTorch cannot load Python "
      "pickles of state dicts reliably. Convert it once, e.g.\n  python -c \"import torch; from safetensors.torch "
      "import save_file; sd = torch.load('",
      path,
      "', map_location='cpu'); save_file({k: v.contiguous() for k, v in sd.items()}, 'model.safetensors', "
      "metadata={'format': 'pt'})\"\nor, for a transformers model folder, "
      "model.save_pretrained(folder, safe_serialization=True).");
}

}  // namespace

int64_t CheckpointTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

ResolvedCheckpoint resolve_checkpoint_files(const std::string& path) {
  std::error_code ec;
  const fs::path p(path);
  FERRY_CHECK(fs::exists(p, ec), "checkpoint ", path, " does not exist");
  ResolvedCheckpoint out;
  std::string index;
  if (fs::is_directory(p, ec)) {
    if (fs::is_regular_file(p / "model.safetensors", ec)) {
      out.files.push_back((p / "model.safetensors").string());
      return out;
    }
    FERRY_CHECK(!fs::is_regular_file(p / "pytorch_model.bin", ec), bin_refusal((p / "pytorch_model.bin").string()));
    std::vector<std::string> indexes;
    for (const auto& entry : fs::directory_iterator(p, ec))
      if (entry.is_regular_file() && ends_with(entry.path().filename().string(), ".index.json"))
        indexes.push_back(entry.path().string());
    std::sort(indexes.begin(), indexes.end());
    if (indexes.empty())
      FERRY_FAIL(path, " is a folder without model.safetensors and without a *.index.json file; pass the "
                       "checkpoint file itself, or a folder holding exactly one index");
    if (indexes.size() > 1) {
      std::string names;
      for (const auto& i : indexes) names += "\n  " + i;
      FERRY_FAIL(path, " holds ", indexes.size(), " index files; pass the one to use:", names);
    }
    index = indexes.front();
  } else if (ends_with(path, ".json")) {
    index = path;
  } else {
    FERRY_CHECK(!ends_with(path, ".bin") && !ends_with(path, ".pt") && !ends_with(path, ".pth"), bin_refusal(path));
    out.files.push_back(path);
    return out;
  }

  out.index_file = index;
  nlohmann::ordered_json root = detail::read_json_file(index, "resolve_checkpoint_files");
  FERRY_CHECK(root.is_object(), index, ": an index must be a JSON object");
  const nlohmann::ordered_json* map = &root;
  if (root.contains("weight_map")) map = &root["weight_map"];
  FERRY_CHECK(map->is_object(), index, ": \"weight_map\" must map tensor names to shard files");
  const fs::path folder = fs::path(index).parent_path();
  std::set<std::string> files;
  for (auto it = map->begin(); it != map->end(); ++it) {
    FERRY_CHECK(it.value().is_string(), index, ": tensor '", it.key(), "' must map to a shard file name, got ",
                it.value().dump());
    const std::string shard = it.value().get<std::string>();
    FERRY_CHECK(!ends_with(shard, ".bin"), bin_refusal((folder / shard).string()));
    const std::string full = (folder / shard).string();
    FERRY_CHECK(fs::is_regular_file(full, ec), index, " names shard '", shard, "' for tensor '", it.key(),
                "', but ", full, " does not exist. Perhaps an incomplete download?");
    files.insert(full);
  }
  out.files.assign(files.begin(), files.end());
  return out;
}

Checkpoint Checkpoint::with_name_prefix(const std::string& prefix) const {
  Checkpoint out = *this;
  if (prefix.empty()) return out;
  out.by_name_.clear();
  for (size_t i = 0; i < out.tensors_.size(); ++i) {
    out.tensors_[i].name = prefix + out.tensors_[i].name;
    out.by_name_.emplace(out.tensors_[i].name, i);
  }
  return out;
}

Checkpoint Checkpoint::open(const std::string& path) {
  Checkpoint ckpt;
  ResolvedCheckpoint resolved = resolve_checkpoint_files(path);
  ckpt.index_file_ = resolved.index_file;
  ckpt.source_ = resolved.index_file.empty() ? resolved.files.front() : resolved.index_file;
  ckpt.files_ = resolved.files;

  // The index's claims, checked against the shards' headers below.
  std::map<std::string, std::string> claimed;  // tensor -> full shard path
  if (!resolved.index_file.empty()) {
    nlohmann::ordered_json root = detail::read_json_file(resolved.index_file, "Checkpoint::open");
    if (root.contains("metadata")) ckpt.index_metadata_ = root["metadata"].dump();
    const nlohmann::ordered_json& map = root.contains("weight_map") ? root["weight_map"] : root;
    const fs::path folder = fs::path(resolved.index_file).parent_path();
    for (auto it = map.begin(); it != map.end(); ++it)
      claimed[it.key()] = (folder / it.value().get<std::string>()).string();
  }

  for (const std::string& file : ckpt.files_) {
    SafetensorsHeader header = read_safetensors_header(file);
    for (const TensorEntry& e : header.tensors) {
      auto found = ckpt.by_name_.find(e.name);
      FERRY_CHECK(found == ckpt.by_name_.end(), ckpt.source_, ": tensor '", e.name, "' is stored twice, in ",
                  ckpt.tensors_[found->second].file, " and in ", file);
      CheckpointTensor t;
      t.name = e.name;
      t.stored_name = e.name;
      t.file = file;
      t.dtype = e.dtype;
      t.shape = e.shape;
      t.offset = header.data_offset + e.begin;
      t.nbytes = e.nbytes();
      ckpt.by_name_.emplace(t.name, ckpt.tensors_.size());
      ckpt.tensors_.push_back(std::move(t));
    }
  }
  for (const auto& [name, file] : claimed) {
    const CheckpointTensor* t = ckpt.find(name);
    FERRY_CHECK(t != nullptr, resolved.index_file, " names tensor '", name, "' in ", file,
                ", but that shard holds no such tensor. Perhaps the index and shards come from different saves?");
    FERRY_CHECK(t->file == file, resolved.index_file, " names tensor '", name, "' in ", file, ", but it is stored in ",
                t->file);
  }
  return ckpt;
}

const CheckpointTensor* Checkpoint::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

const CheckpointTensor& Checkpoint::at(const std::string& name) const {
  const CheckpointTensor* t = find(name);
  FERRY_CHECK(t != nullptr, source_, ": no tensor named '", name, "' in the checkpoint (", tensors_.size(),
              " tensors)");
  return *t;
}

std::vector<std::string> Checkpoint::tensors_in(const std::string& file) const {
  std::vector<std::string> names;
  for (const auto& t : tensors_)
    if (t.file == file) names.push_back(t.name);
  return names;
}

uint64_t Checkpoint::total_bytes() const {
  uint64_t total = 0;
  for (const auto& t : tensors_) total += t.nbytes;
  return total;
}

SafetensorsFile Checkpoint::open_file(const std::string& file) const { return SafetensorsFile::open(file); }

}  // namespace ferry::io
