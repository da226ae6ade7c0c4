#pragma once
// Internal: the eager attention pieces the architectures share.

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace ferry::models::detail {

/// The additive mask [1, 1, q_len, kv_len] (0 where allowed, the dtype's lowest value elsewhere) for
/// queries at positions past .. past + q_len - 1 over keys 0 .. kv_len - 1, past = kv_len - q_len:
/// causal, and within `sliding_window` positions when it is > 0 (transformers' rule: a key k is
/// visible from query q when q - sliding_window < k <= q). Undefined when nothing is masked.
at::Tensor causal_mask(int64_t q_len, int64_t kv_len, int64_t sliding_window, c10::ScalarType dtype,
                       c10::Device device);

/// softmax(q k^T * scale + mask) v over [batch, heads, seq, head_dim] tensors, with key/value heads
/// repeated to the query heads (grouped-query attention). Softmax in float32, then the query dtype.
at::Tensor eager_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                           const at::Tensor& mask);

/// softmax(scores + mask) in float32, cast to `dtype`, times v (repeated to the score heads).
at::Tensor attend(const at::Tensor& scores, const at::Tensor& v, const at::Tensor& mask, c10::ScalarType dtype);

}  // namespace ferry::models::detail
