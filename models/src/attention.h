#pragma once
// Internal: the eager attention pieces the architectures share.

#include "ferry/core/error.h"
#include "ferry/models/causal_lm.h"
#include "ferry/nn/args.h"

#include <ATen/ATen.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <utility>

namespace ferry::models::detail {

/// The additive mask [1, 1, q_len, kv_len] (0 where allowed, the dtype's lowest value elsewhere) for
/// queries at positions past .. past + q_len - 1 over keys 0 .. kv_len - 1, past = kv_len - q_len:
/// causal, and within `sliding_window` positions when it is > 0 (transformers' rule: a key k is
/// visible from query q when q - sliding_window < k <= q). Undefined when nothing is masked.
/// With `padding_mask` ([batch, kv_len], nonzero for tokens, 0 for padding; the `attention_mask`
/// keyword) the mask is [batch, 1, q_len, kv_len] and hides the padding keys too.
at::Tensor causal_mask(int64_t q_len, int64_t kv_len, int64_t sliding_window, c10::ScalarType dtype,
                       c10::Device device, const at::Tensor& padding_mask = {});

/// The `attention_mask` keyword ([batch, kv_len]: 1 for tokens, 0 for left padding), undefined when
/// absent or None. Checked against the keys' length so a stale mask fails with both numbers.
at::Tensor padding_mask_keyword(const Args& args, int64_t batch, int64_t kv_len);

/// softmax(q k^T * scale + mask) v over [batch, heads, seq, head_dim] tensors; with fewer key/value
/// heads than query heads (grouped-query attention) each serves its group of query heads, uncopied.
/// Softmax in float32, then the query dtype.
at::Tensor eager_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                           const at::Tensor& mask);

/// The same through at::scaled_dot_product_attention when `sdpa` (LibTorch 2.1 on; refused before),
/// else eager_attention. Equal within float rounding (the fixtures' 1e-4 hold for both).
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                     const at::Tensor& mask, bool sdpa);

/// softmax(scores + mask) in float32, cast to `dtype`, times v (each of v's heads serving its group of
/// score heads, as repeat_kv would, without the copy).
at::Tensor attend(const at::Tensor& scores, const at::Tensor& v, const at::Tensor& mask, c10::ScalarType dtype);

/// Keyword argument `name`, or a None value.
inline const c10::IValue& keyword_or_none(const Args& args, const std::string& name) {
  static const c10::IValue none;
  const c10::IValue* v = args.find(name);
  return v ? *v : none;
}

/// Tokens already in the KV cache passed as past_key_values (0 without one): the first layer with
/// entries, since a pipeline stage fills only its own layers.
inline int64_t cached_length(const Args& args) {
  KVCache* cache = KVCache::from_ivalue(keyword_or_none(args, "past_key_values"));
  if (!cache) return 0;
  for (int64_t layer = 0; layer < cache->num_layers(); ++layer)
    if (const int64_t n = cache->seq_length(layer)) return n;
  return 0;
}

/// True when a pipeline stage before the last asks for the hidden states after its layers
/// (keyword `return_hidden_states`) instead of the final norm and the logits.
inline bool returns_hidden_states(const Args& args) {
  const c10::IValue* v = args.find("return_hidden_states");
  return v && v->isBool() && v->toBool();
}

/// The decoder layers a forward runs, [first, end) of the model's `count`: a pipeline stage's
/// (keywords `first_layer`, `end_layer`), or all of them.
inline std::pair<int64_t, int64_t> layers_to_run(const Args& args, int64_t count) {
  auto keyword = [&](const char* name, int64_t fallback) {
    const c10::IValue* v = args.find(name);
    return v && v->isInt() ? v->toInt() : fallback;
  };
  const int64_t first = keyword("first_layer", 0), end = keyword("end_layer", count);
  FERRY_CHECK(0 <= first && first <= end && end <= count, "layers [", first, ", ", end, ") are not within the model's ",
              count);
  return {first, end};
}

/// Position ids continuing after the cache: [1, seq] = past .. past + seq - 1.
inline at::Tensor positions_after_cache(const at::Tensor& ids, int64_t past) {
  return at::arange(past, past + ids.size(1), ids.options().dtype(at::kLong)).unsqueeze(0);
}

}  // namespace ferry::models::detail
