#include "ferry/models/llama.h"

#include "attention.h"
#include "ferry/core/error.h"
#include "ferry/models/moe.h"
#include "ferry/nn/init_on_device.h"

#include <ATen/ATen.h>

#include <cmath>

namespace ferry::models {
namespace {

// transformers' rotate_half: (x1, x2) -> (-x2, x1) over the two halves of the last dimension.
at::Tensor rotate_half(const at::Tensor& x) {
  int64_t half = x.size(-1) / 2;
  return at::cat({x.narrow(-1, half, half).neg(), x.narrow(-1, 0, half)}, -1);
}

}  // namespace

std::string llama_family_prefix(const ModelConfig& config) {
  if (config.model_type == "llama") return "Llama";
  if (config.model_type == "mistral") return "Mistral";
  if (config.model_type == "qwen2") return "Qwen2";
  if (config.model_type == "mixtral") return "Mixtral";
  if (config.model_type == "qwen2_moe") return "Qwen2Moe";
  if (config.model_type == "qwen3_moe") return "Qwen3Moe";
  FERRY_FAIL("model_type '", config.model_type,
             "' is not in the Llama family (llama, mistral, qwen2, mixtral, qwen2_moe, qwen3_moe)");
}

at::Tensor rope_inverse_frequencies(const RopeConfig& rope, int64_t head_dim) {
  // Note: Python's `scalar / tensor` is `tensor.reciprocal() * scalar`; spelled the same way here so
  // the float32 results agree bit for bit with transformers' _compute_default_rope_parameters and
  // _compute_llama3_parameters.
  at::Tensor exponents = at::arange(0, head_dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(head_dim);
  at::Tensor inv_freq = at::reciprocal(at::pow(rope.theta, exponents));
  if (rope.type == "default") return inv_freq;
  FERRY_CHECK(rope.type == "llama3", "rope type '", rope.type, "' is not supported (default, llama3)");
  double old_context_len = static_cast<double>(rope.original_max_position_embeddings);
  double low_freq_wavelen = old_context_len / rope.low_freq_factor;
  double high_freq_wavelen = old_context_len / rope.high_freq_factor;
  at::Tensor wavelen = at::reciprocal(inv_freq) * (2 * M_PI);
  at::Tensor inv_freq_llama = at::where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq);
  at::Tensor smooth_factor =
      (at::reciprocal(wavelen) * old_context_len - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor);
  at::Tensor smoothed = (1 - smooth_factor) * inv_freq_llama / rope.factor + smooth_factor * inv_freq_llama;
  at::Tensor is_medium = (wavelen < high_freq_wavelen).logical_not().logical_and((wavelen > low_freq_wavelen).logical_not());
  return at::where(is_medium, smoothed, inv_freq_llama);
}

LlamaRotaryEmbedding::LlamaRotaryEmbedding(const std::string& prefix, const ModelConfig& config)
    : Module(prefix + "RotaryEmbedding") {
  inv_freq = register_buffer("inv_freq", rope_inverse_frequencies(config.rope, config.head_dim), /*persistent=*/false);
}

c10::IValue LlamaRotaryEmbedding::forward(Args& args) {
  at::Tensor x = args.tensor(0);
  at::Tensor position_ids = args.positional.size() > 1 ? args.tensor(1) : args.optional_tensor("position_ids");
  FERRY_CHECK(position_ids.defined(), class_name(), " needs position_ids");
  FERRY_CHECK(!inv_freq->is_meta(), class_name(),
              ".inv_freq is on the meta device; build the model with init_empty_weights(include_buffers=false)");
  at::Tensor inv = inv_freq->to(at::kFloat).unsqueeze(0).unsqueeze(2).expand({position_ids.size(0), -1, 1});
  at::Tensor pos = position_ids.unsqueeze(1).to(at::kFloat);
  at::Tensor freqs = at::matmul(inv, pos).transpose(1, 2);  // [batch, seq, head_dim / 2], float32
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  return c10::ivalue::Tuple::create({emb.cos().to(x.scalar_type()), emb.sin().to(x.scalar_type())});
}

LlamaAttention::LlamaAttention(const std::string& prefix, const ModelConfig& c, int64_t layer_idx)
    : Module(prefix + "Attention"),
      layer_idx(layer_idx),
      num_heads(c.num_attention_heads),
      num_kv_heads(c.num_key_value_heads),
      head_dim(c.head_dim),
      sdpa(c.attn_implementation == "sdpa") {
  auto dtype = c.dtype;
  bool qkv_bias = c.attention_bias || c.qkv_bias;
  q_proj = register_module("q_proj", std::make_shared<Linear>(c.hidden_size, num_heads * head_dim, qkv_bias, dtype));
  k_proj = register_module("k_proj", std::make_shared<Linear>(c.hidden_size, num_kv_heads * head_dim, qkv_bias, dtype));
  v_proj = register_module("v_proj", std::make_shared<Linear>(c.hidden_size, num_kv_heads * head_dim, qkv_bias, dtype));
  o_proj = register_module("o_proj", std::make_shared<Linear>(num_heads * head_dim, c.hidden_size, c.attention_bias, dtype));
  if (c.sliding_window && c.sliding_layers.at(static_cast<size_t>(layer_idx))) sliding_window = *c.sliding_window;
  if (c.qk_norm) {
    q_norm = register_module("q_norm", std::make_shared<RMSNorm>(head_dim, c.norm_eps, dtype));
    k_norm = register_module("k_norm", std::make_shared<RMSNorm>(head_dim, c.norm_eps, dtype));
    q_norm->set_class_name(prefix + "RMSNorm");
    k_norm->set_class_name(prefix + "RMSNorm");
  }
}

c10::IValue LlamaAttention::forward(Args& args) {
  at::Tensor x = args.tensor(0);
  int64_t b = x.size(0), s = x.size(1);
  at::Tensor q = (*q_proj)(x).view({b, s, -1, head_dim});
  at::Tensor k = (*k_proj)(x).view({b, s, -1, head_dim});
  if (q_norm) {  // Qwen3: per head, before the rotary embedding
    q = (*q_norm)(q);
    k = (*k_norm)(k);
  }
  q = q.transpose(1, 2);
  k = k.transpose(1, 2);
  at::Tensor v = (*v_proj)(x).view({b, s, -1, head_dim}).transpose(1, 2);

  const c10::IValue& pe = detail::keyword_or_none(args, "position_embeddings");
  FERRY_CHECK(pe.isTuple() && pe.toTupleRef().elements().size() == 2, class_name(), " (layer ", layer_idx,
              ") needs position_embeddings = (cos, sin)");
  at::Tensor cos = pe.toTupleRef().elements()[0].toTensor().unsqueeze(1);
  at::Tensor sin = pe.toTupleRef().elements()[1].toTensor().unsqueeze(1);
  q = q * cos + rotate_half(q) * sin;
  k = k * cos + rotate_half(k) * sin;

  if (KVCache* cache = KVCache::from_ivalue(detail::keyword_or_none(args, "past_key_values"))) {
    std::tie(k, v) = cache->update(layer_idx, k, v);
  }
  at::Tensor mask = detail::causal_mask(s, k.size(2), sliding_window, q.scalar_type(), q.device(),
                                        detail::padding_mask_keyword(args, b, k.size(2)));
  at::Tensor out = detail::attention(q, k, v, 1.0 / std::sqrt(static_cast<double>(head_dim)), mask, sdpa);
  out = out.transpose(1, 2).contiguous().reshape({b, s, -1});
  return (*o_proj)(out);
}

LlamaMLP::LlamaMLP(const std::string& prefix, const ModelConfig& c) : LlamaMLP(prefix, c, c.intermediate_size) {}

LlamaMLP::LlamaMLP(const std::string& prefix, const ModelConfig& c, int64_t size) : Module(prefix + "MLP") {
  gate_proj = register_module("gate_proj", std::make_shared<Linear>(c.hidden_size, size, c.mlp_bias, c.dtype));
  up_proj = register_module("up_proj", std::make_shared<Linear>(c.hidden_size, size, c.mlp_bias, c.dtype));
  down_proj = register_module("down_proj", std::make_shared<Linear>(size, c.hidden_size, c.mlp_bias, c.dtype));
}

c10::IValue LlamaMLP::forward(Args& args) {
  at::Tensor x = args.tensor(0);
  return (*down_proj)(at::silu((*gate_proj)(x)) * (*up_proj)(x));
}

LlamaDecoderLayer::LlamaDecoderLayer(const std::string& prefix, const ModelConfig& c, int64_t layer_idx)
    : Module(prefix + "DecoderLayer") {
  self_attn = register_module("self_attn", std::make_shared<LlamaAttention>(prefix, c, layer_idx));
  if (c.num_experts > 0 && c.sparse_layers.at(static_cast<size_t>(layer_idx)))
    mlp = register_module(prefix == "Mixtral" ? "block_sparse_moe" : "mlp", std::make_shared<SparseMoeBlock>(prefix, c));
  else
    mlp = register_module("mlp", std::make_shared<LlamaMLP>(prefix, c));
  input_layernorm = register_module("input_layernorm", std::make_shared<RMSNorm>(c.hidden_size, c.norm_eps, c.dtype));
  post_attention_layernorm =
      register_module("post_attention_layernorm", std::make_shared<RMSNorm>(c.hidden_size, c.norm_eps, c.dtype));
  input_layernorm->set_class_name(prefix + "RMSNorm");
  post_attention_layernorm->set_class_name(prefix + "RMSNorm");
}

c10::IValue LlamaDecoderLayer::forward(Args& args) {
  at::Tensor residual = args.tensor(0);
  Args attn_args{(*input_layernorm)(residual)};
  attn_args.keyword = args.keyword;
  at::Tensor h = residual + (*self_attn)(std::move(attn_args)).toTensor();
  return h + (*mlp)((*post_attention_layernorm)(h));
}

LlamaModel::LlamaModel(const std::string& prefix, const ModelConfig& c, c10::ScalarType dtype) : Module(prefix + "Model") {
  embed_tokens = register_module("embed_tokens", std::make_shared<Embedding>(c.vocab_size, c.hidden_size, dtype));
  layers = register_module("layers", std::make_shared<ModuleList>());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) layers->push_back(std::make_shared<LlamaDecoderLayer>(prefix, c, i));
  norm = register_module("norm", std::make_shared<RMSNorm>(c.hidden_size, c.norm_eps, dtype));
  norm->set_class_name(prefix + "RMSNorm");
  rotary_emb = register_module("rotary_emb", std::make_shared<LlamaRotaryEmbedding>(prefix, c));
}

c10::IValue LlamaModel::forward(Args& args) {
  at::Tensor ids = args.tensor(0);
  FERRY_CHECK(ids.dim() == 2, "input_ids must be [batch, seq], got ", ids.dim(), " dimensions");
  const c10::IValue& cache_value = detail::keyword_or_none(args, "past_key_values");
  at::Tensor position_ids = args.optional_tensor("position_ids");
  if (!position_ids.defined()) position_ids = detail::positions_after_cache(ids, detail::cached_length(args));
  // A pipeline stage (models/pipeline.h) starts from the previous stage's hidden states and runs
  // only its layers, [first_layer, end_layer).
  at::Tensor h = args.optional_tensor("hidden_states");
  if (!h.defined()) h = (*embed_tokens)(ids);
  c10::IValue position_embeddings = (*rotary_emb)(Args{h, position_ids});
  const auto& all_layers = layers->children();
  const int64_t count = static_cast<int64_t>(all_layers.size());
  const auto [first, end] = detail::layers_to_run(args, count);
  for (int64_t i = first; i < end; ++i) {
    const std::shared_ptr<Module>& layer = all_layers[static_cast<size_t>(i)].second;
    Args layer_args{h};
    layer_args.set("position_embeddings", position_embeddings);
    layer_args.set("position_ids", position_ids);
    layer_args.set("past_key_values", cache_value);
    if (const c10::IValue* mask = args.find("attention_mask")) layer_args.set("attention_mask", *mask);
    h = (*layer)(std::move(layer_args)).toTensor();
  }
  if (detail::returns_hidden_states(args)) return h;
  return (*norm)(h);
}

LlamaForCausalLM::LlamaForCausalLM(const ModelConfig& config, c10::ScalarType dtype)
    : CausalLM(config.architecture, [&] {
        ModelConfig c = config;
        c.dtype = dtype;
        return c;
      }()),
      prefix_(llama_family_prefix(config)) {
  const ModelConfig& c = this->config();
  model = register_module("model", std::make_shared<LlamaModel>(prefix_, c, dtype));
  lm_head = register_module("lm_head", std::make_shared<Linear>(c.hidden_size, c.vocab_size, false, dtype));
  if (c.tie_word_embeddings) lm_head->set_parameter("weight", model->embed_tokens->weight.get());
}

c10::IValue LlamaForCausalLM::forward(Args& args) {
  at::Tensor h = (*model)(args).toTensor();
  if (detail::returns_hidden_states(args)) return h;  // a pipeline stage before the last
  return (*lm_head)(keep_last_positions(h, args));
}

std::vector<std::string> LlamaForCausalLM::no_split_module_classes() const { return {prefix_ + "DecoderLayer"}; }

std::vector<std::string> LlamaForCausalLM::decoder_layer_names() const {
  std::vector<std::string> names;
  for (int64_t i = 0; i < config().num_hidden_layers; ++i) names.push_back("model.layers." + std::to_string(i));
  return names;
}

}  // namespace ferry::models
