#include "attention.h"

#include "ferry/core/error.h"
#include "ferry/core/torch_compat.h"

#include <ATen/ATen.h>

#include <limits>

namespace ferry::models::detail {
namespace {

// Grouped-query attention without repeating the key/value heads: query head i reads kv head
// i / n_rep (transformers' repeat_kv order), so [b, kv * n_rep, s, d] queries are [b, kv, n_rep * s, d]
// rows against their kv head's keys. repeat_kv would copy the whole cache n_rep times, every layer,
// every step (eager, 8 prompts of 2,048 positions, 2 query heads a kv head: a decode step 1.09x
// slower). Equal to the repeated form within float rounding.
at::Tensor grouped(const at::Tensor& x, int64_t kv) {
  return x.reshape({x.size(0), kv, x.size(1) / kv * x.size(2), x.size(3)});
}

// [b, kv, n_rep * s, n] back to [b, kv * n_rep, s, n].
at::Tensor ungrouped(const at::Tensor& x, int64_t heads) {
  return x.reshape({x.size(0), heads, x.size(1) * x.size(2) / heads, x.size(3)});
}

}  // namespace

at::Tensor causal_mask(int64_t q_len, int64_t kv_len, int64_t sliding_window, c10::ScalarType dtype,
                       c10::Device device, const at::Tensor& padding_mask) {
  int64_t past = kv_len - q_len;
  bool window_bites = sliding_window > 0 && kv_len > sliding_window;
  if (q_len == 1 && !window_bites && !padding_mask.defined()) return at::Tensor();  // one query sees every key
  auto opts = at::TensorOptions().dtype(at::kLong).device(device);
  at::Tensor q_pos = at::arange(past, past + q_len, opts).unsqueeze(1);
  at::Tensor k_pos = at::arange(0, kv_len, opts).unsqueeze(0);
  at::Tensor allowed = k_pos.le(q_pos);
  if (sliding_window > 0) allowed = allowed.logical_and(k_pos.gt(q_pos - sliding_window));
  double lowest = 0;
  switch (dtype) {
    case at::kHalf: lowest = -65504.0; break;
    case at::kBFloat16: lowest = -3.3895313892515355e38; break;
    case at::kDouble: lowest = std::numeric_limits<double>::lowest(); break;
    default: lowest = std::numeric_limits<float>::lowest(); break;
  }
  if (padding_mask.defined()) {
    // [batch, 1, q, kv]: a key is visible when causal (and in the window) and not padding. Combined
    // as booleans, filled once, so a row of padding queries sees only `lowest`s: uniform, not NaN.
    at::Tensor tokens = padding_mask.to(device).ne(0).view({padding_mask.size(0), 1, 1, kv_len});
    allowed = allowed.view({1, 1, q_len, kv_len}).logical_and(tokens);
    at::Tensor mask = at::zeros(allowed.sizes(), at::TensorOptions().dtype(dtype).device(device));
    return mask.masked_fill_(allowed.logical_not(), lowest);
  }
  at::Tensor mask = at::zeros({q_len, kv_len}, at::TensorOptions().dtype(dtype).device(device));
  mask.masked_fill_(allowed.logical_not(), lowest);
  return mask.view({1, 1, q_len, kv_len});
}

at::Tensor padding_mask_keyword(const Args& args, int64_t batch, int64_t kv_len) {
  const c10::IValue& v = keyword_or_none(args, "attention_mask");
  if (v.isNone()) return {};
  FERRY_CHECK(v.isTensor(), "attention_mask must be a [batch, length] tensor, got ", v.tagKind());
  at::Tensor mask = v.toTensor();
  FERRY_CHECK(mask.dim() == 2 && mask.size(0) == batch && mask.size(1) == kv_len, "attention_mask is ", mask.sizes(),
              " but the attention has ", batch, " sequence(s) over ", kv_len,
              " positions (cached and new): give the mask of every position so far, padding included");
  return mask;
}

at::Tensor eager_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                           const at::Tensor& mask) {
  at::Tensor scores = ungrouped(at::matmul(grouped(q, k.size(1)), k.transpose(2, 3)), q.size(1)) * scale;
  return attend(scores, v, mask, q.scalar_type());
}

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                     const at::Tensor& mask, bool sdpa) {
  if (!sdpa) return eager_attention(q, k, v, scale, mask);
#if defined(FERRY_HAS_SDPA)
  // The queries grouped by kv head (above); the mask's rows, one per query position, repeated for
  // each query head of a group.
  const int64_t n_rep = q.size(1) / k.size(1);
  c10::optional<at::Tensor> additive;
  if (mask.defined()) additive = n_rep == 1 ? mask : mask.repeat({1, 1, n_rep, 1});
  return ungrouped(at::scaled_dot_product_attention(grouped(q, k.size(1)), k, v, additive, /*dropout_p=*/0.0,
                                                    /*is_causal=*/false, scale),
                   q.size(1));
#else
  require_torch(TorchFeature::ScaledDotProductAttention, "attn_implementation 'sdpa'");
  return {};
#endif
}

at::Tensor attend(const at::Tensor& scores, const at::Tensor& v, const at::Tensor& mask, c10::ScalarType dtype) {
  at::Tensor s = mask.defined() ? scores + mask : scores;
  at::Tensor weights = at::softmax(s, -1, at::kFloat).to(dtype);
  return ungrouped(at::matmul(grouped(weights, v.size(1)), v), scores.size(1));
}

}  // namespace ferry::models::detail
