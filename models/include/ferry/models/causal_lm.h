#pragma once
/// \file
/// Causal language models from Hugging Face checkpoints: Llama 2/3, Mistral, Qwen2 and GPT-2, with
/// transformers' module, parameter and class names, so that checkpoints load by name and device
/// maps read the same as in Python.
///
/// Worked example: build a model without memory, load it, generate.
///
///     using namespace ferry::models;
///     ModelConfig config = load_config("/models/llama");             // config.json
///     std::shared_ptr<CausalLM> model;
///     {
///       auto guard = ferry::init_empty_weights();                     // every parameter on meta
///       model = create_model(config);                                 // LlamaForCausalLM, ...
///     }
///     ferry::load_checkpoint_in_model(*model, "/models/llama", {});   // or load_checkpoint_and_dispatch
///     // model->named_modules(): "model.embed_tokens", "model.layers.0.self_attn.q_proj", "lm_head", ...
///
///     at::Tensor ids = at::tensor({1, 15, 27, 99}, at::kLong).view({1, -1});
///     at::Tensor logits = model->logits(ids);                         // [1, 4, vocab]
///
///     GenerationConfig g;                                            // generate.h
///     g.max_new_tokens = 16;
///     GenerationOutput out = generate(*model, ids, g);               // greedy; out.sequences [1, 20]
///
/// Every decoder layer is a separately callable Module: `model.layers.<i>` is called with the
/// hidden states as its positional argument and keyword arguments `position_embeddings` (the
/// rotary (cos, sin) tuple; Llama family), `position_ids` and `past_key_values` (a KVCache wrapped
/// in a capsule, which device hooks pass through untouched). Dispatch hooks can therefore wrap each
/// layer, and each layer's cache entries stay on the device that layer executed on.

#include "ferry/models/config.h"
#include "ferry/nn/module.h"

#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace ferry::models {

/// Keys and values of past positions, per layer, as transformers' DynamicCache. Each layer's
/// entries stay on the device of the tensors that layer computed with (its execution device),
/// so a dispatched or offloaded model moves no cache between devices.
///
/// Entries go into place in a buffer with room to spare ([batch, kv_heads, capacity, head_dim]),
/// not into a new concatenation per step: appending a token then costs its own bytes, where a
/// concatenation copies (and allocates) the whole cache every step, which for long contexts cost
/// more than the step's weights. reserve() sizes the buffers for a whole generation; without it, or
/// past it, a layer's room doubles when full.
class KVCache : public torch::CustomClassHolder {
 public:
  /// Appends `keys`/`values` ([batch, kv_heads, new_positions, head_dim]) to layer `layer` and
  /// returns the layer's full keys and values: views of the buffer (strided between heads), valid
  /// until the next update of that layer.
  std::pair<at::Tensor, at::Tensor> update(int64_t layer, const at::Tensor& keys, const at::Tensor& values);
  /// Room for `positions` per layer from each layer's first update (generate: prompt + new tokens),
  /// so that no step copies the cache. Layers already made keep theirs until they fill.
  void reserve(int64_t positions);
  /// Positions cached for `layer` (0 before its first update).
  int64_t seq_length(int64_t layer = 0) const;
  /// Layers with entries.
  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }
  /// Layer `layer`'s cached keys / values (undefined before its first update).
  at::Tensor keys(int64_t layer) const;
  at::Tensor values(int64_t layer) const;
  /// Bytes held, over all layers (the buffers, room to spare included).
  uint64_t nbytes() const;
  /// Forgets everything.
  void clear();

  /// This cache as the `past_key_values` keyword value (a capsule: device hooks leave it alone).
  static c10::IValue to_ivalue(const c10::intrusive_ptr<KVCache>& cache);
  /// The cache inside a `past_key_values` value, or nullptr for None.
  static KVCache* from_ivalue(const c10::IValue& value);

 private:
  struct Layer {
    at::Tensor keys, values;  // [batch, kv_heads, capacity, head_dim]; positions [0, length) are filled
    int64_t length = 0;
  };
  /// Positions [0, length) of one of the layer's buffers (undefined before its first update).
  at::Tensor filled(int64_t layer, at::Tensor Layer::*buffer) const;

  std::vector<Layer> layers_;
  int64_t reserved_ = 0;
};

/// A causal language model: the common interface of every architecture ferry runs.
///
/// Its forward (call it through `(*model)(args)` or `logits()`, so that hooks run) takes `input_ids`
/// [batch, seq] (int64) as the positional argument and keywords `past_key_values` (a KVCache capsule
/// or None), `position_ids` ([batch, seq]; default: continuing the cache), `attention_mask` ([batch,
/// cached + seq]; 0 hides a padding position's key, as transformers' 2-D mask) and `logits_to_keep`
/// (int; 0 keeps every position), and returns the logits [batch, kept positions, vocab] in the model's dtype.
class CausalLM : public Module {
 public:
  CausalLM(std::string class_name, ModelConfig config) : Module(std::move(class_name)), config_(std::move(config)) {}

  /// The configuration the model was built from.
  const ModelConfig& config() const { return config_; }

  /// Calls the model (hooks included) on `input_ids`, continuing `cache` when given (its entries
  /// are extended). `logits_to_keep` > 0 computes only the last positions' logits. For a batch of
  /// left-padded prompts give `attention_mask` ([batch, cached + new]: 1 token, 0 padding) and
  /// `position_ids` ([batch, new]); generate() makes both (positions_from_mask in generate.h).
  at::Tensor logits(const at::Tensor& input_ids, const c10::intrusive_ptr<KVCache>& cache = {},
                    int64_t logits_to_keep = 0, const at::Tensor& attention_mask = {},
                    const at::Tensor& position_ids = {});

  /// transformers' `_no_split_modules`: decoder-layer classes that must stay on one device.
  virtual std::vector<std::string> no_split_module_classes() const = 0;
  /// The input-embedding module's name ("model.embed_tokens", "transformer.wte").
  virtual std::string input_embeddings_name() const = 0;
  /// The decoder layers' names, in execution order ("model.layers.0", ...).
  virtual std::vector<std::string> decoder_layer_names() const = 0;
  /// The modules that run before the first decoder layer, which a pipeline's first stage holds:
  /// the input embeddings, and GPT-2's learned positions.
  virtual std::vector<std::string> input_module_names() const { return {input_embeddings_name()}; }
  /// How generate() picks each step's tokens: `choose` picks them from the logits this process's
  /// forward returned. A pipeline picks them on its last stage only and sends them to the other
  /// ranks (models/pipeline.h); a model in one process just calls `choose`.
  virtual at::Tensor choose_next_tokens(const at::Tensor& logits,
                                        const std::function<at::Tensor(const at::Tensor&)>& choose) {
    return choose(logits);
  }
  /// The names transformers ties when tie_word_embeddings is set ({"lm_head.weight", embeddings}),
  /// empty otherwise.
  std::vector<std::string> tied_weight_names() const;

 protected:
  /// The hidden states of the last `logits_to_keep` positions (a keyword argument; 0 or absent:
  /// all), so that decoding projects only the new token onto the vocabulary.
  static at::Tensor keep_last_positions(const at::Tensor& hidden, const Args& args);

 private:
  ModelConfig config_;
};

/// Builds the model `config.architecture` names with parameters of `dtype` (default: the config's
/// `dtype`). Call it under ferry::init_empty_weights() to build without memory. Throws ferry::Error
/// naming the architecture when it is not one of supported_architectures().
std::shared_ptr<CausalLM> create_model(const ModelConfig& config,
                                       c10::optional<c10::ScalarType> dtype = c10::nullopt);

}  // namespace ferry::models
