#pragma once
/// \file
/// A Hugging Face `config.json`, parsed into the facts ferry's models need.
///
///     ferry::models::ModelConfig c = ferry::models::load_config("/models/llama");   // reads config.json
///     c.architecture       // "LlamaForCausalLM"
///     c.num_key_value_heads, c.head_dim, c.rope.type, c.rope.theta ...
///
/// Both spellings transformers has used are read: transformers 5's `rope_parameters`
/// (`{"rope_theta": ..., "rope_type": ...}`) and the legacy top-level `rope_theta` with an optional
/// `rope_scaling` object. GPT-2's names (`n_embd`, `n_layer`, `n_head`, `n_inner`, `n_positions`,
/// `layer_norm_epsilon`) are mapped onto the common fields. Anything ferry cannot run faithfully
/// (an unknown architecture, activation or rope type, partial rotary embeddings, ...) is refused
/// here, with a message naming the option, rather than producing wrong numbers later.

#include <c10/core/ScalarType.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <string>
#include <vector>

namespace ferry::models {

/// Rotary position embedding parameters (Llama family).
struct RopeConfig {
  /// "default" or "llama3".
  std::string type = "default";
  double theta = 10000.0;
  /// llama3 only.
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

/// "sdpa" where LibTorch has at::scaled_dot_product_attention, else "eager".
std::string default_attn_implementation();

/// The parsed configuration. Fields not used by an architecture keep their defaults.
struct ModelConfig {
  /// `architectures[0]`: "LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM", "MixtralForCausalLM",
  /// "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM" or "GPT2LMHeadModel".
  std::string architecture;
  /// `model_type`: "llama", "qwen2", "mistral", "gpt2".
  std::string model_type;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  /// Per-head size; hidden_size / num_attention_heads unless the config says otherwise.
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  /// RMSNorm epsilon (Llama family) or LayerNorm epsilon (GPT-2).
  double norm_eps = 1e-6;
  /// "silu" (Llama family) or "gelu_new" (GPT-2).
  std::string hidden_act = "silu";
  RopeConfig rope;
  bool tie_word_embeddings = false;
  /// Bias on q/k/v/o projections (Llama `attention_bias`).
  bool attention_bias = false;
  /// Bias on q/k/v only (Qwen2 always has it).
  bool qkv_bias = false;
  bool mlp_bias = false;
  /// Sliding-window attention width, when some layers use it.
  c10::optional<int64_t> sliding_window;
  /// Per layer: true when that layer attends within sliding_window only.
  std::vector<bool> sliding_layers;
  /// Qwen3: RMSNorm over each head of q and k (`q_norm`, `k_norm`) before the rotary embedding.
  bool qk_norm = false;
  /// Mixtures of experts (Mixtral, Qwen2-MoE, Qwen3-MoE): experts per sparse layer (0: a dense
  /// model), how many each token is routed to, and each expert's hidden size.
  int64_t num_experts = 0;
  int64_t num_experts_per_tok = 0;
  int64_t moe_intermediate_size = 0;
  /// Renormalise the top-k routing weights to sum to 1 (Mixtral always; Qwen: `norm_topk_prob`).
  bool norm_topk_prob = true;
  /// Qwen2-MoE: a shared expert of this size (0: none) beside the routed ones, gated by a sigmoid.
  int64_t shared_expert_intermediate_size = 0;
  /// Per layer: true when its MLP is a sparse MoE block (Qwen: `decoder_sparse_step`, `mlp_only_layers`).
  std::vector<bool> sparse_layers;
  /// GPT-2: divide attention scores by sqrt(head_dim), and additionally by (layer index + 1).
  bool scale_attn_weights = true;
  bool scale_attn_by_inverse_layer_idx = false;
  /// End-of-sequence ids (config.json, overridden by generation_config.json when present).
  std::vector<int64_t> eos_token_ids;
  c10::optional<int64_t> bos_token_id;
  c10::optional<int64_t> pad_token_id;
  /// The storage dtype the config declares (`dtype` or `torch_dtype`), float32 when absent.
  c10::ScalarType dtype = c10::kFloat;
  /// Attention kernel, transformers' `attn_implementation`: "sdpa" (at::scaled_dot_product_attention,
  /// the default where LibTorch has it, 2.1 on) or "eager" (softmax(q k^T) v spelled out; 1.13's only one).
  std::string attn_implementation = default_attn_implementation();
};

/// Parses config.json text. `source` names it in messages. Throws ferry::Error for malformed JSON, a
/// missing required field, or an unsupported architecture or option (the message names it).
ModelConfig parse_config(const std::string& json_text, const std::string& source = "config.json");

/// Reads `dir/config.json` (and `dir/generation_config.json` for EOS/BOS/pad ids when present).
/// Throws ferry::Error when the folder or config.json is missing.
ModelConfig load_config(const std::string& dir);

/// The architectures create_model accepts.
const std::vector<std::string>& supported_architectures();

/// The config as config.json text (enough for parse_config to read it back): used by the demo
/// and the big-checkpoint generator to write checkpoints.
std::string config_to_json(const ModelConfig& config);

}  // namespace ferry::models
