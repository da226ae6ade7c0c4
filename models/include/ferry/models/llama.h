#pragma once
/// \file
/// The Llama family as transformers defines it (modeling_llama.py, modeling_qwen2.py,
/// modeling_mistral.py): Llama 2/3, Mistral and Qwen2 share one layout and differ in biases, rope
/// parameters and sliding-window attention. The classes take a name prefix ("Llama", "Qwen2",
/// "Mistral") so that class names match transformers' (`LlamaDecoderLayer`, `Qwen2RMSNorm`, ...).
///
///     auto model = std::make_shared<LlamaForCausalLM>(config);    // create_model does this
///     model->model->layers->at(3);                                // "model.layers.3"
///
/// Numerics follow transformers' eager path: rotary frequencies and cos/sin in float32, RMSNorm in
/// float32, attention scores in the model dtype with an additive causal mask of the dtype's lowest
/// value, softmax in float32, then cast back.

#include "ferry/models/causal_lm.h"
#include "ferry/nn/layers.h"

#include <memory>
#include <string>

namespace ferry::models {

/// The rotary embedding's inverse frequencies, as transformers computes them for rope type
/// "default" (1 / theta^(2i/dim), float32) or "llama3" (with its wavelength-dependent scaling).
at::Tensor rope_inverse_frequencies(const RopeConfig& rope, int64_t head_dim);

/// `model.rotary_emb`: holds the non-persistent buffer "inv_freq"; called with (hidden_states,
/// position_ids) returns the tuple (cos, sin), each [batch, seq, head_dim], in hidden_states' dtype.
class LlamaRotaryEmbedding : public Module {
 public:
  LlamaRotaryEmbedding(const std::string& prefix, const ModelConfig& config);
  c10::IValue forward(Args& args) override;
  TensorRef inv_freq;
};

/// `self_attn`: q/k/v/o projections, grouped-query attention with rotary embeddings.
class LlamaAttention : public Module {
 public:
  LlamaAttention(const std::string& prefix, const ModelConfig& config, int64_t layer_idx);
  /// hidden_states [batch, seq, hidden]; keywords position_embeddings (cos, sin), past_key_values.
  c10::IValue forward(Args& args) override;
  int64_t layer_idx, num_heads, num_kv_heads, head_dim;
  /// Attend only to the last `sliding_window` positions (0: everything before).
  int64_t sliding_window = 0;
  /// at::scaled_dot_product_attention rather than the explicit math (config.attn_implementation).
  bool sdpa = false;
  std::shared_ptr<Linear> q_proj, k_proj, v_proj, o_proj;
  /// Qwen3: RMSNorm over each head of q and k (null otherwise).
  std::shared_ptr<RMSNorm> q_norm, k_norm;
};

/// `mlp`: down_proj(silu(gate_proj(x)) * up_proj(x)). Also a Qwen MoE expert and shared expert,
/// with their own intermediate size.
class LlamaMLP : public Module {
 public:
  LlamaMLP(const std::string& prefix, const ModelConfig& config);
  LlamaMLP(const std::string& prefix, const ModelConfig& config, int64_t intermediate_size);
  c10::IValue forward(Args& args) override;
  std::shared_ptr<Linear> gate_proj, up_proj, down_proj;
};

/// `model.layers.<i>`: pre-norm attention and MLP blocks with residual connections. The MLP is a
/// LlamaMLP, or in a mixture of experts' sparse layers a SparseMoeBlock (models/moe.h), registered
/// as `mlp` or, for Mixtral, `block_sparse_moe`.
class LlamaDecoderLayer : public Module {
 public:
  LlamaDecoderLayer(const std::string& prefix, const ModelConfig& config, int64_t layer_idx);
  /// hidden_states; keywords position_embeddings, past_key_values. Returns the new hidden states.
  c10::IValue forward(Args& args) override;
  std::shared_ptr<LlamaAttention> self_attn;
  std::shared_ptr<Module> mlp;
  std::shared_ptr<RMSNorm> input_layernorm, post_attention_layernorm;
};

/// `model`: embed_tokens, layers, norm, rotary_emb. Called with input_ids (and the CausalLM
/// keywords), returns the final hidden states.
class LlamaModel : public Module {
 public:
  LlamaModel(const std::string& prefix, const ModelConfig& config, c10::ScalarType dtype);
  c10::IValue forward(Args& args) override;
  std::shared_ptr<Embedding> embed_tokens;
  std::shared_ptr<ModuleList> layers;
  std::shared_ptr<RMSNorm> norm;
  std::shared_ptr<LlamaRotaryEmbedding> rotary_emb;
};

/// LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM, and the mixtures of experts
/// MixtralForCausalLM / Qwen2MoeForCausalLM / Qwen3MoeForCausalLM: `model` and `lm_head` (tied to
/// model.embed_tokens.weight, the same tensor object, when tie_word_embeddings).
class LlamaForCausalLM : public CausalLM {
 public:
  explicit LlamaForCausalLM(const ModelConfig& config, c10::ScalarType dtype = c10::kFloat);
  c10::IValue forward(Args& args) override;
  std::vector<std::string> no_split_module_classes() const override;
  std::string input_embeddings_name() const override { return "model.embed_tokens"; }
  std::vector<std::string> decoder_layer_names() const override;
  std::shared_ptr<LlamaModel> model;
  std::shared_ptr<Linear> lm_head;

 private:
  std::string prefix_;
};

/// "Llama", "Mistral", "Qwen2", "Mixtral", "Qwen2Moe" or "Qwen3Moe" for a config's model_type.
std::string llama_family_prefix(const ModelConfig& config);

}  // namespace ferry::models
