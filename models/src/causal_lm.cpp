#include "ferry/models/causal_lm.h"

#include "ferry/core/dtype.h"
#include "ferry/core/error.h"
#include "ferry/core/torch_compat.h"
#include "ferry/models/gpt2.h"
#include "ferry/models/llama.h"

#include <ATen/ATen.h>

namespace ferry::models {

std::pair<at::Tensor, at::Tensor> KVCache::update(int64_t layer, const at::Tensor& keys, const at::Tensor& values) {
  FERRY_ASSERT(layer >= 0);
  if (static_cast<size_t>(layer) >= keys_.size()) {
    keys_.resize(layer + 1);
    values_.resize(layer + 1);
  }
  at::Tensor& k = keys_[layer];
  at::Tensor& v = values_[layer];
  if (!k.defined()) {
    k = keys.contiguous();
    v = values.contiguous();
  } else {
    // The layer's new entries arrive on its execution device; so do the old ones (stored there).
    FERRY_ASSERT(k.device() == keys.device(), "layer ", layer, " cache on ", k.device(), " but new keys on ",
                 keys.device());
    k = at::cat({k, keys}, 2);
    v = at::cat({v, values}, 2);
  }
  return {k, v};
}

int64_t KVCache::seq_length(int64_t layer) const {
  if (layer < 0 || static_cast<size_t>(layer) >= keys_.size() || !keys_[layer].defined()) return 0;
  return keys_[layer].size(2);
}

at::Tensor KVCache::keys(int64_t layer) const {
  return static_cast<size_t>(layer) < keys_.size() ? keys_[layer] : at::Tensor();
}

at::Tensor KVCache::values(int64_t layer) const {
  return static_cast<size_t>(layer) < values_.size() ? values_[layer] : at::Tensor();
}

uint64_t KVCache::nbytes() const {
  uint64_t total = 0;
  for (const auto* list : {&keys_, &values_})
    for (const at::Tensor& t : *list)
      if (t.defined()) total += t.numel() * t.element_size();
  return total;
}

void KVCache::clear() {
  keys_.clear();
  values_.clear();
}

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
