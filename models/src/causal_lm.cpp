#include "ferry/models/causal_lm.h"

#include "ferry/core/dtype.h"
#include "ferry/core/error.h"
#include "ferry/core/torch_compat.h"
#include "ferry/models/gpt2.h"
#include "ferry/models/llama.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace ferry::models {

std::pair<at::Tensor, at::Tensor> KVCache::update(int64_t layer, const at::Tensor& keys, const at::Tensor& values) {
  FERRY_ASSERT(layer >= 0 && keys.dim() == 4 && values.dim() == 4);
  if (static_cast<size_t>(layer) >= layers_.size()) layers_.resize(layer + 1);
  Layer& l = layers_[layer];
  if (l.keys.defined()) {
    // The layer's new entries arrive on its execution device; so do the old ones (stored there).
    FERRY_ASSERT(l.keys.device() == keys.device(), "layer ", layer, " cache on ", l.keys.device(), " but new keys on ",
                 keys.device());
    FERRY_ASSERT(l.keys.size(0) == keys.size(0) && l.keys.size(1) == keys.size(1) && l.keys.size(3) == keys.size(3),
                 "layer ", layer, " caches keys of ", l.keys.sizes(), " but new keys are ", keys.sizes());
  }
  const int64_t added = keys.size(2);
  const int64_t needed = l.length + added;
  if (!l.keys.defined() || needed > l.keys.size(2)) {
    // A new buffer: the reserved room, or double the old, or what is needed, whichever is most.
    const int64_t capacity = std::max({needed, reserved_, l.keys.defined() ? 2 * l.keys.size(2) : int64_t{0}});
    auto grown = [&](const at::Tensor& old, const at::Tensor& added_entries) {
      at::Tensor buffer = at::empty({added_entries.size(0), added_entries.size(1), capacity, added_entries.size(3)},
                                    added_entries.options());
      if (l.length > 0) buffer.narrow(2, 0, l.length).copy_(old.narrow(2, 0, l.length));
      return buffer;
    };
    l.keys = grown(l.keys, keys);
    l.values = grown(l.values, values);
  }
  l.keys.narrow(2, l.length, added).copy_(keys);
  l.values.narrow(2, l.length, added).copy_(values);
  l.length = needed;
  return {this->keys(layer), this->values(layer)};
}

void KVCache::reserve(int64_t positions) { reserved_ = std::max<int64_t>(0, positions); }

int64_t KVCache::seq_length(int64_t layer) const {
  return layer >= 0 && static_cast<size_t>(layer) < layers_.size() ? layers_[layer].length : 0;
}

at::Tensor KVCache::filled(int64_t layer, at::Tensor Layer::*buffer) const {
  if (seq_length(layer) == 0) return {};
  const Layer& l = layers_[static_cast<size_t>(layer)];
  return (l.*buffer).narrow(2, 0, l.length);
}

at::Tensor KVCache::keys(int64_t layer) const { return filled(layer, &Layer::keys); }

at::Tensor KVCache::values(int64_t layer) const { return filled(layer, &Layer::values); }

uint64_t KVCache::nbytes() const {
  uint64_t total = 0;
  for (const Layer& l : layers_)
    for (const at::Tensor* t : {&l.keys, &l.values})
      if (t->defined()) total += t->numel() * t->element_size();
  return total;
}

void KVCache::clear() { layers_.clear(); }

c10::IValue KVCache::to_ivalue(const c10::intrusive_ptr<KVCache>& cache) {
  if (!cache) return c10::IValue();
  return c10::IValue::make_capsule(cache);
}

KVCache* KVCache::from_ivalue(const c10::IValue& value) {
  if (value.isNone()) return nullptr;
  FERRY_CHECK(value.isCapsule(), "past_key_values must be a KVCache (KVCache::to_ivalue) or None, got ",
              value.tagKind());
  auto* cache = dynamic_cast<KVCache*>(value.toCapsule().get());
  FERRY_CHECK(cache != nullptr, "past_key_values holds an object that is not a ferry KVCache");
  return cache;
}

at::Tensor CausalLM::logits(const at::Tensor& input_ids, const c10::intrusive_ptr<KVCache>& cache,
                            int64_t logits_to_keep, const at::Tensor& attention_mask, const at::Tensor& position_ids) {
  Args args{input_ids};
  args.set("past_key_values", KVCache::to_ivalue(cache));
  args.set("logits_to_keep", logits_to_keep);
  if (attention_mask.defined()) args.set("attention_mask", attention_mask);
  if (position_ids.defined()) args.set("position_ids", position_ids);
  c10::IValue out = (*this)(std::move(args));
  FERRY_ASSERT(out.isTensor(), class_name(), " returned ", out.tagKind(), " instead of logits");
  return out.toTensor();
}

std::vector<std::string> CausalLM::tied_weight_names() const {
  if (!config_.tie_word_embeddings) return {};
  return {input_embeddings_name() + ".weight", "lm_head.weight"};
}

std::shared_ptr<CausalLM> create_model(const ModelConfig& config, c10::optional<c10::ScalarType> dtype) {
  c10::ScalarType t = dtype.value_or(config.dtype);
  // Integer or complex weights would be value-cast from the checkpoint's floats: silently wrong.
  FERRY_CHECK(is_floating_dtype(t) && !c10::isComplexType(t), "a ", config.architecture, " computes in floating point, not ",
              dtype_name(t), "; choose float32, bfloat16 or float16", dtype ? "" : " (the config's dtype)");
  // A CPU-only LibTorch 1.13 has no float16 matmuls: refuse now rather than after loading.
#if !defined(FERRY_WITH_CUDA)
  if (t == c10::kHalf) require_torch(TorchFeature::CpuFloat16Compute, "computing a " + config.architecture + " in float16 (bfloat16 and float32 work with this build)");
#endif
  const std::string& impl = config.attn_implementation;
  FERRY_CHECK(impl == "sdpa" || impl == "eager", "attn_implementation '", impl, "' is not known; choose sdpa or eager");
  if (impl == "sdpa") require_torch(TorchFeature::ScaledDotProductAttention, "attn_implementation 'sdpa'");
  const std::string& a = config.architecture;
  if (a == "LlamaForCausalLM" || a == "MistralForCausalLM" || a == "Qwen2ForCausalLM" || a == "MixtralForCausalLM" ||
      a == "Qwen2MoeForCausalLM" || a == "Qwen3MoeForCausalLM")
    return std::make_shared<LlamaForCausalLM>(config, t);
  if (a == "GPT2LMHeadModel") return std::make_shared<GPT2LMHeadModel>(config, t);
  std::string list;
  for (const auto& s : supported_architectures()) list += (list.empty() ? "" : ", ") + s;
  FERRY_FAIL("architecture '", a, "' is not supported; ferry runs ", list);
}

at::Tensor CausalLM::keep_last_positions(const at::Tensor& hidden, const Args& args) {
  const c10::IValue* keep = args.find("logits_to_keep");
  int64_t n = keep && keep->isInt() ? keep->toInt() : 0;
  if (n > 0 && n < hidden.size(1)) return hidden.narrow(1, hidden.size(1) - n, n);
  return hidden;
}

}  // namespace ferry::models
