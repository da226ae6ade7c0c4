#include "ferry/models/pretrained.h"

#include "ferry/core/dtype.h"
#include "ferry/core/error.h"
#include "ferry/dispatch/load_checkpoint.h"
#include "ferry/io/safetensors.h"
#include "ferry/io/sharded_safetensors.h"
#include "ferry/io/atomic_file.h"
#include "ferry/io/atomic_folder.h"
#include "ferry/io/checkpoint.h"
#include "ferry/nn/init_on_device.h"
#include "ferry/nn/module_tensors.h"
#include "ferry/plan/tied_parameters.h"

#include <ATen/ATen.h>


#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <fstream>
#include <map>
#include <set>

namespace ferry::models {
namespace {

// The tied copies a checkpoint may omit: in each tie group, every name but the one met first in
// state_dict order (the embeddings, before lm_head), as transformers saves them.
std::set<std::string> tied_names(CausalLM& model) {
  std::set<std::string> names;
  auto sd = model.state_dict();
  for (const auto& group : find_tied_parameters(model)) {
    std::string first;
    for (const auto& [name, t] : sd)
      if (std::find(group.begin(), group.end(), name) != group.end()) {
        first = name;
        break;
      }
    for (const auto& name : group)
      if (name != first) names.insert(name);
  }
  return names;
}

}  // namespace

io::Checkpoint open_model_checkpoint(const std::string& dir) {
  namespace fs = std::filesystem;
  bool any = false;
  if (fs::is_directory(dir))
    for (const auto& e : fs::directory_iterator(dir)) {
      auto ext = e.path().extension().string();
      if (ext == ".safetensors" || ext == ".bin" || ext == ".pt" || ext == ".pth" || (ext == ".json" && e.path().filename().string().find(".index.json") != std::string::npos))
        if (e.path().filename() != "reference.safetensors") any = true;
    }
  FERRY_CHECK(any, "model folder '", dir,
              "' holds no weights: expected model.safetensors or model.safetensors.index.json with its shards (or PyTorch's "
              "pytorch_model.bin, pytorch_model.bin.index.json, a .pt or .pth file)");
  return io::Checkpoint::open(dir);
}

namespace {

void write_text_atomically(const std::filesystem::path& path, const std::string& text) {
  try {
    io::write_file_atomically(path.string(), text);
  } catch (const Error& e) {
    throw e.in("save_pretrained");
  }
}

}  // namespace

void save_pretrained(CausalLM& model, const std::string& dir, uint64_t max_shard_bytes,
                     c10::optional<c10::ScalarType> storage_dtype) {
  namespace fs = std::filesystem;
  std::set<std::string> tied = tied_names(model);
  io::NamedTensors tensors;
  std::vector<uint64_t> bytes;
  for (auto& [name, tensor] : model.state_dict()) {
    if (tied.count(name)) continue;
    FERRY_CHECK(!tensor.is_meta(), "'", name, "' is on the meta device: there is nothing to save");
    at::Tensor t = storage_dtype && is_floating_dtype(tensor.scalar_type()) ? tensor.to(*storage_dtype) : tensor;
    bytes.push_back(static_cast<uint64_t>(t.numel()) * t.element_size());
    tensors.emplace_back(name, t);
  }
  const io::ShardPlan plan = io::plan_shards(bytes, max_shard_bytes);
  ModelConfig config = model.config();
  if (storage_dtype) config.dtype = *storage_dtype;
  // All or nothing (io/atomic_folder.h): a full disk part-way leaves the old checkpoint whole. Files
  // that are not weights or config (a tokenizer, a README) are kept; old weight files are not, as
  // transformers removes the shards a new save does not write.
  auto is_checkpoint_file = [](const std::string& name) {
    return name == "config.json" || name == "model.safetensors.index.json" ||
           (name.rfind("model", 0) == 0 && fs::path(name).extension() == ".safetensors");
  };
  io::replace_folder(
      dir,
      [&](const std::string& staging) {
        io::save_sharded_safetensors(staging, plan, [&](size_t i) { return tensors[i]; });
        write_text_atomically(fs::path(staging) / "config.json", config_to_json(config));
      },
      [&](const std::string& name) { return !is_checkpoint_file(name); });
}

std::shared_ptr<CausalLM> create_empty_model(const std::string& dir, c10::optional<c10::ScalarType> dtype) {
  return create_empty_model(load_config(dir), dtype);
}

std::shared_ptr<CausalLM> create_empty_model(const ModelConfig& config, c10::optional<c10::ScalarType> dtype) {
  auto guard = init_empty_weights();
  return create_model(config, dtype);
}

std::string check_checkpoint_matches(CausalLM& model, const std::string& dir) {
  return check_checkpoint_matches(model, open_model_checkpoint(dir)).name_prefix();
}

io::Checkpoint check_checkpoint_matches(CausalLM& model, const io::Checkpoint& checkpoint) {
  // transformers' base_model_prefix: a checkpoint saved from the base model (GPT2Model, LlamaModel)
  // names its tensors without the LM's first component ("wte.weight" for "transformer.wte.weight").
  io::Checkpoint ckpt = checkpoint.matched_to(model.input_embeddings_name() + ".weight");
  const std::string dir = checkpoint.source();
  std::set<std::string> tied = tied_names(model);
  std::vector<std::string> problems;
  for (const auto& [name, tensor] : model.state_dict()) {
    const io::CheckpointTensor* t = ckpt.find(name);
    if (!t) {
      if (!tied.count(name)) problems.push_back("'" + name + "' is missing from the checkpoint");
      continue;
    }
    if (t->shape != tensor.sizes().vec())
      problems.push_back("'" + name + "' has shape " + shape_str(t->shape) + " in the checkpoint but " +
                         shape_str(tensor.sizes()) + " in the model built from config.json");
  }
  if (!problems.empty())
    FERRY_FAIL("checkpoint '", dir, "' does not match its config.json (", model.config().architecture, "): ",
               problems.front(), problems.size() > 1 ? " (and " + std::to_string(problems.size() - 1) + " more)" : "",
               "; check that config.json belongs to these weights");
  return ckpt;
}

std::shared_ptr<CausalLM> load_pretrained(const std::string& dir, const PretrainedOptions& options) {
  ModelConfig config = load_config(dir);
  if (!options.attn_implementation.empty()) config.attn_implementation = options.attn_implementation;
  std::shared_ptr<CausalLM> model = create_empty_model(config, options.dtype);
  const io::Checkpoint checkpoint = check_checkpoint_matches(*model, open_model_checkpoint(dir));
  LoadCheckpointOptions load;
  load.device_map = DeviceMap{{"", Placement(options.device)}};
  load.on_progress = options.on_progress;
  load_checkpoint_in_model(*model, checkpoint, load);
  // Non-persistent buffers (rotary inv_freq) were built on the CPU; bring them along.
  for (auto& [name, t] : model->named_buffers())
    if (t.device() != options.device) set_module_tensor_to_device(*model, name, options.device);
  for (auto& [name, t] : model->named_parameters())
    FERRY_CHECK(!t.is_meta(), "'", name, "' was not loaded from '", dir, "'");
  return model;
}

}  // namespace ferry::models
