#pragma once
/// \file
/// Loading a Hugging Face checkpoint folder (config.json + safetensors, single file or sharded) into
/// a resident model in one call.
///
///     auto model = ferry::models::load_pretrained("/models/tiny_llama", {at::kFloat});
///     at::Tensor logits = model->logits(ids);
///
/// The model is built under init_empty_weights (no memory, no initialisation); the checkpoint is
/// checked against it (names, shapes) and then streamed in by load_checkpoint_in_model, every
/// weight straight to its device and dtype. For models larger than memory
/// use ferry::load_checkpoint_and_dispatch with create_model instead (see ferry run).

#include "ferry/dispatch/load_checkpoint.h"
#include "ferry/io/checkpoint.h"
#include "ferry/models/causal_lm.h"

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace ferry::models {

/// How load_pretrained places the weights.
struct PretrainedOptions {
  /// The dtype of the model's floating-point weights (default: the config's `dtype`).
  c10::optional<c10::ScalarType> dtype;
  /// "sdpa" or "eager" (default: ModelConfig's, sdpa where LibTorch has it).
  std::string attn_implementation;
  /// Where every weight goes.
  c10::Device device = c10::Device(c10::kCPU);
  /// Called before the first weight and after each one loads (bytes, tensors, shard: LoadProgress);
  /// throwing from it stops the load.
  std::function<void(const LoadProgress&)> on_progress;
};

/// Builds the model `dir/config.json` describes and loads `dir`'s checkpoint into it. Throws
/// ferry::Error when the folder lacks config.json or weights, when a weight the model needs is
/// missing from the checkpoint, or when a checkpoint tensor's shape disagrees with the config
/// (the message names the tensor and both shapes). Tied weights absent from the files (lm_head
/// under tie_word_embeddings) are re-tied to the embeddings.
std::shared_ptr<CausalLM> load_pretrained(const std::string& dir, const PretrainedOptions& options = {});

/// Writes `model` as a Hugging Face checkpoint folder: config.json, and its weights as safetensors
/// shards of at most `max_shard_bytes` each (one tensor per shard at least) named like transformers'
/// `model-00001-of-00003.safetensors`, with `model.safetensors.index.json` when there is more than
/// one shard. Tied copies (lm_head.weight under tie_word_embeddings) are left out, as transformers
/// does. `storage_dtype` casts floating-point weights on the way out. The folder is replaced all or
/// nothing (io/atomic_folder.h): other files in it (a tokenizer) are kept, old weight files are not.
void save_pretrained(CausalLM& model, const std::string& dir, uint64_t max_shard_bytes = 2ull << 30,
                     c10::optional<c10::ScalarType> storage_dtype = c10::nullopt);

/// Builds the model described by `dir/config.json` on the meta device (no memory), with `dtype`.
std::shared_ptr<CausalLM> create_empty_model(const std::string& dir, c10::optional<c10::ScalarType> dtype = c10::nullopt);
/// Builds the model `config` describes on the meta device (no memory), with `dtype`.
std::shared_ptr<CausalLM> create_empty_model(const ModelConfig& config, c10::optional<c10::ScalarType> dtype = c10::nullopt);

/// Opens the weights of the model folder `dir` once (io::Checkpoint::open: shards mapped, headers
/// parsed; a PyTorch `.bin`/`.pt`/`.pth` checkpoint listed from its pickles). Throws ferry::Error for a folder holding no weights, naming what was expected.
io::Checkpoint open_model_checkpoint(const std::string& dir);

/// Checks that `checkpoint` matches `model` (names, shapes) before anything is loaded: every model
/// tensor is present (tied copies excepted) with the shape the config implies. Returns the checkpoint
/// under the model's names: itself, or, for a checkpoint saved from the base model as the Hub's
/// `gpt2` ("wte.weight" for "transformer.wte.weight"), the checkpoint with that prefix
/// (io::Checkpoint::matched_to). Throws ferry::Error naming the first mismatch and their count.
io::Checkpoint check_checkpoint_matches(CausalLM& model, const io::Checkpoint& checkpoint);
/// The same for the checkpoint of the folder `dir`; returns the name prefix ("" or "transformer.").
std::string check_checkpoint_matches(CausalLM& model, const std::string& dir);

}  // namespace ferry::models
