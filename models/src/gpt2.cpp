#include "ferry/models/gpt2.h"

#include "attention.h"
#include "ferry/core/error.h"

#include <ATen/ATen.h>

#include <cmath>

namespace ferry::models {
at::Tensor gelu_new(const at::Tensor& x) {
  return 0.5 * x * (1.0 + at::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * at::pow(x, 3.0))));
}

GPT2Attention::GPT2Attention(const ModelConfig& c, int64_t layer_idx, c10::ScalarType dtype)
    : Module("GPT2Attention"),
      layer_idx(layer_idx),
      num_heads(c.num_attention_heads),
      head_dim(c.head_dim),
      scale_attn_weights(c.scale_attn_weights),
      scale_attn_by_inverse_layer_idx(c.scale_attn_by_inverse_layer_idx),
      sdpa(c.attn_implementation == "sdpa") {
  c_attn = register_module("c_attn", std::make_shared<Conv1D>(3 * c.hidden_size, c.hidden_size, dtype));
  c_proj = register_module("c_proj", std::make_shared<Conv1D>(c.hidden_size, c.hidden_size, dtype));
}

c10::IValue GPT2Attention::forward(Args& args) {
  at::Tensor x = args.tensor(0);
  int64_t b = x.size(0), s = x.size(1), embed = num_heads * head_dim;
  auto qkv = (*c_attn)(x).split(embed, 2);
  at::Tensor q = qkv[0].view({b, s, -1, head_dim}).transpose(1, 2);
  at::Tensor k = qkv[1].view({b, s, -1, head_dim}).transpose(1, 2);
  at::Tensor v = qkv[2].view({b, s, -1, head_dim}).transpose(1, 2);
  if (KVCache* cache = KVCache::from_ivalue(detail::keyword_or_none(args, "past_key_values"))) {
    std::tie(k, v) = cache->update(layer_idx, k, v);
  }
  at::Tensor mask = detail::causal_mask(s, k.size(2), 0, q.scalar_type(), q.device(),
                                        detail::padding_mask_keyword(args, b, k.size(2)));
  at::Tensor out;
  if (sdpa) {
    double scale = (scale_attn_weights ? 1.0 / std::sqrt(static_cast<double>(head_dim)) : 1.0) /
                   (scale_attn_by_inverse_layer_idx ? static_cast<double>(layer_idx + 1) : 1.0);
    out = detail::attention(q, k, v, scale, mask, /*sdpa=*/true);
  } else {  // transformers' GPT-2 order of operations: divide the scores, not scale q
    at::Tensor scores = at::matmul(q, k.transpose(-1, -2));
    if (scale_attn_weights) scores = scores / std::sqrt(static_cast<double>(head_dim));
    if (scale_attn_by_inverse_layer_idx) scores = scores / static_cast<double>(layer_idx + 1);
    out = detail::attend(scores, v, mask, v.scalar_type());
  }
  out = out.transpose(1, 2).reshape({b, s, -1}).contiguous();
  return (*c_proj)(out);
}

GPT2MLP::GPT2MLP(const ModelConfig& c, c10::ScalarType dtype) : Module("GPT2MLP") {
  c_fc = register_module("c_fc", std::make_shared<Conv1D>(c.intermediate_size, c.hidden_size, dtype));
  c_proj = register_module("c_proj", std::make_shared<Conv1D>(c.hidden_size, c.intermediate_size, dtype));
}

c10::IValue GPT2MLP::forward(Args& args) { return (*c_proj)(gelu_new((*c_fc)(args.tensor(0)))); }

GPT2Block::GPT2Block(const ModelConfig& c, int64_t layer_idx, c10::ScalarType dtype) : Module("GPT2Block") {
  ln_1 = register_module("ln_1", std::make_shared<LayerNorm>(c.hidden_size, c.norm_eps, true, true, dtype));
  attn = register_module("attn", std::make_shared<GPT2Attention>(c, layer_idx, dtype));
  ln_2 = register_module("ln_2", std::make_shared<LayerNorm>(c.hidden_size, c.norm_eps, true, true, dtype));
  mlp = register_module("mlp", std::make_shared<GPT2MLP>(c, dtype));
}

c10::IValue GPT2Block::forward(Args& args) {
  at::Tensor residual = args.tensor(0);
  Args attn_args{(*ln_1)(residual)};
  attn_args.keyword = args.keyword;
  at::Tensor h = (*attn)(std::move(attn_args)).toTensor() + residual;
  return h + (*mlp)((*ln_2)(h));
}

GPT2Model::GPT2Model(const ModelConfig& c, c10::ScalarType dtype) : Module("GPT2Model") {
  wte = register_module("wte", std::make_shared<Embedding>(c.vocab_size, c.hidden_size, dtype));
  wpe = register_module("wpe", std::make_shared<Embedding>(c.max_position_embeddings, c.hidden_size, dtype));
  h = register_module("h", std::make_shared<ModuleList>());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) h->push_back(std::make_shared<GPT2Block>(c, i, dtype));
  ln_f = register_module("ln_f", std::make_shared<LayerNorm>(c.hidden_size, c.norm_eps, true, true, dtype));
}

c10::IValue GPT2Model::forward(Args& args) {
  at::Tensor ids = args.tensor(0);
  FERRY_CHECK(ids.dim() == 2, "input_ids must be [batch, seq], got ", ids.dim(), " dimensions");
  const c10::IValue& cache_value = detail::keyword_or_none(args, "past_key_values");
  at::Tensor position_ids = args.optional_tensor("position_ids");
  if (!position_ids.defined()) {
    int64_t past = detail::cached_length(args);
    FERRY_CHECK(past + ids.size(1) <= wpe->num_embeddings, "GPT-2 has learned positions for ", wpe->num_embeddings,
                " tokens (n_positions); the sequence would reach ", past + ids.size(1));
    position_ids = detail::positions_after_cache(ids, past);
  }
  // A pipeline stage (models/pipeline.h) starts from the previous stage's hidden states and runs
  // only its blocks, [first_layer, end_layer).
  at::Tensor x = args.optional_tensor("hidden_states");
  if (!x.defined()) {
    x = (*wte)(ids);
    x = x + (*wpe)(position_ids).to(x.device());
  }
  const auto& blocks = h->children();
  const int64_t count = static_cast<int64_t>(blocks.size());
  const auto [first, end] = detail::layers_to_run(args, count);
  for (int64_t i = first; i < end; ++i) {
    Args block_args{x};
    block_args.set("past_key_values", cache_value);
    if (const c10::IValue* mask = args.find("attention_mask")) block_args.set("attention_mask", *mask);
    x = (*blocks[static_cast<size_t>(i)].second)(std::move(block_args)).toTensor();
  }
  if (detail::returns_hidden_states(args)) return x;
  return (*ln_f)(x);
}

GPT2LMHeadModel::GPT2LMHeadModel(const ModelConfig& config, c10::ScalarType dtype)
    : CausalLM("GPT2LMHeadModel", [&] {
        ModelConfig c = config;
        c.dtype = dtype;
        return c;
      }()) {
  const ModelConfig& c = this->config();
  transformer = register_module("transformer", std::make_shared<GPT2Model>(c, dtype));
  lm_head = register_module("lm_head", std::make_shared<Linear>(c.hidden_size, c.vocab_size, false, dtype));
  if (c.tie_word_embeddings) lm_head->set_parameter("weight", transformer->wte->weight.get());
}

c10::IValue GPT2LMHeadModel::forward(Args& args) {
  at::Tensor h = (*transformer)(args).toTensor();
  if (detail::returns_hidden_states(args)) return h;  // a pipeline stage before the last
  return (*lm_head)(keep_last_positions(h, args));
}

std::vector<std::string> GPT2LMHeadModel::decoder_layer_names() const {
  std::vector<std::string> names;
  for (int64_t i = 0; i < config().num_hidden_layers; ++i) names.push_back("transformer.h." + std::to_string(i));
  return names;
}

}  // namespace ferry::models
