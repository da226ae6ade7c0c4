#pragma once
/// \file
/// GPT-2 as transformers defines it (modeling_gpt2.py): learned position embeddings (`wpe`),
/// Conv1D projections (`c_attn`, `c_proj`, `c_fc`), pre-norm blocks (`ln_1`, `ln_2`, `ln_f`),
/// the tanh GELU ("gelu_new") and a head tied to the token embeddings.
///
///     auto model = std::make_shared<GPT2LMHeadModel>(config);
///     // "transformer.wte", "transformer.h.0.attn.c_attn", "transformer.ln_f", "lm_head"

#include "ferry/models/causal_lm.h"
#include "ferry/nn/layers.h"

#include <memory>

namespace ferry::models {

/// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): transformers' NewGELUActivation.
at::Tensor gelu_new(const at::Tensor& x);

/// `attn`: fused q/k/v projection `c_attn` [n_embd, 3 n_embd], output projection `c_proj`.
class GPT2Attention : public Module {
 public:
  GPT2Attention(const ModelConfig& config, int64_t layer_idx, c10::ScalarType dtype);
  /// hidden_states; keyword past_key_values.
  c10::IValue forward(Args& args) override;
  int64_t layer_idx, num_heads, head_dim;
  bool scale_attn_weights, scale_attn_by_inverse_layer_idx;
  /// at::scaled_dot_product_attention rather than the explicit math (config.attn_implementation).
  bool sdpa;
  std::shared_ptr<Conv1D> c_attn, c_proj;
};

/// `mlp`: c_proj(gelu_new(c_fc(x))).
class GPT2MLP : public Module {
 public:
  GPT2MLP(const ModelConfig& config, c10::ScalarType dtype);
  c10::IValue forward(Args& args) override;
  std::shared_ptr<Conv1D> c_fc, c_proj;
};

/// `transformer.h.<i>`.
class GPT2Block : public Module {
 public:
  GPT2Block(const ModelConfig& config, int64_t layer_idx, c10::ScalarType dtype);
  c10::IValue forward(Args& args) override;
  std::shared_ptr<LayerNorm> ln_1, ln_2;
  std::shared_ptr<GPT2Attention> attn;
  std::shared_ptr<GPT2MLP> mlp;
};

/// `transformer`: wte, wpe, h, ln_f. Returns the final hidden states.
class GPT2Model : public Module {
 public:
  GPT2Model(const ModelConfig& config, c10::ScalarType dtype);
  c10::IValue forward(Args& args) override;
  std::shared_ptr<Embedding> wte, wpe;
  std::shared_ptr<ModuleList> h;
  std::shared_ptr<LayerNorm> ln_f;
};

/// GPT2LMHeadModel: `transformer` and `lm_head` (tied to transformer.wte.weight when
/// tie_word_embeddings, as in every published GPT-2).
class GPT2LMHeadModel : public CausalLM {
 public:
  explicit GPT2LMHeadModel(const ModelConfig& config, c10::ScalarType dtype = c10::kFloat);
  c10::IValue forward(Args& args) override;
  std::vector<std::string> no_split_module_classes() const override { return {"GPT2Block"}; }
  std::string input_embeddings_name() const override { return "transformer.wte"; }
  std::vector<std::string> input_module_names() const override { return {"transformer.wte", "transformer.wpe"}; }
  std::vector<std::string> decoder_layer_names() const override;
  std::shared_ptr<GPT2Model> transformer;
  std::shared_ptr<Linear> lm_head;
};

}  // namespace ferry::models
