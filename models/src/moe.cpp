#include "ferry/models/moe.h"

#include "ferry/core/error.h"
#include "ferry/hooks/align_devices_hook.h"
#include "ferry/hooks/model_hook.h"
#include "ferry/models/llama.h"

#include <ATen/ATen.h>

namespace ferry::models {

MixtralExpert::MixtralExpert(const ModelConfig& c) : Module("MixtralBlockSparseTop2MLP") {
  w1 = register_module("w1", std::make_shared<Linear>(c.hidden_size, c.moe_intermediate_size, false, c.dtype));
  w2 = register_module("w2", std::make_shared<Linear>(c.moe_intermediate_size, c.hidden_size, false, c.dtype));
  w3 = register_module("w3", std::make_shared<Linear>(c.hidden_size, c.moe_intermediate_size, false, c.dtype));
}

c10::IValue MixtralExpert::forward(Args& args) {
  at::Tensor x = args.tensor(0);
  return (*w2)(at::silu((*w1)(x)) * (*w3)(x));
}

SparseMoeBlock::SparseMoeBlock(const std::string& prefix, const ModelConfig& c)
    : Module(prefix + "SparseMoeBlock"), top_k(c.num_experts_per_tok), norm_topk_prob(c.norm_topk_prob) {
  FERRY_CHECK(c.num_experts > 0 && c.num_experts_per_tok > 0 && c.num_experts_per_tok <= c.num_experts,
              "a sparse MoE block needs 1 <= num_experts_per_tok <= num_experts, got ", c.num_experts_per_tok, " of ",
              c.num_experts);
  gate = register_module("gate", std::make_shared<Linear>(c.hidden_size, c.num_experts, false, c.dtype));
  experts = register_module("experts", std::make_shared<ModuleList>());
  for (int64_t e = 0; e < c.num_experts; ++e) {
    if (prefix == "Mixtral")
      experts->push_back(std::make_shared<MixtralExpert>(c));
    else
      experts->push_back(std::make_shared<LlamaMLP>(prefix, c, c.moe_intermediate_size));
  }
  if (c.shared_expert_intermediate_size > 0) {
    shared_expert = register_module("shared_expert", std::make_shared<LlamaMLP>(prefix, c, c.shared_expert_intermediate_size));
    shared_expert_gate = register_module("shared_expert_gate", std::make_shared<Linear>(c.hidden_size, 1, false, c.dtype));
  }
}

Routing SparseMoeBlock::route(const at::Tensor& h) {
  at::Tensor logits = (*gate)(h);  // [tokens, experts]
  at::Tensor probs = at::softmax(logits.to(at::kFloat), -1);
  auto [weights, experts_of_token] = at::topk(probs, top_k, -1);
  if (norm_topk_prob) weights = weights / weights.sum(-1, /*keepdim=*/true);
  Routing r{experts_of_token, weights.to(h.scalar_type()), {}};
  at::Tensor picked = std::get<0>(at::_unique(experts_of_token.flatten(), /*sorted=*/true));
  const int64_t* p = picked.data_ptr<int64_t>();
  r.picked.assign(p, p + picked.numel());
  return r;
}

c10::IValue SparseMoeBlock::forward(Args& args) {
  at::Tensor x = args.tensor(0);
  const auto shape = x.sizes().vec();
  at::Tensor h = x.reshape({-1, shape.back()});
  Routing r = route(h);
  // Offloaded experts: every picked one starts loading now, before the first of them runs.
  for (int64_t e : r.picked)
    for_each_hook<AlignDevicesHook>(*experts->at(static_cast<size_t>(e)), [](AlignDevicesHook& hook) { hook.load_routed(); });
  if (on_routed) on_routed(*this, r.picked);
  at::Tensor out = at::zeros_like(h);
  // transformers' loop: per picked expert, its (position in the top-k, token) pairs in that order.
  at::Tensor mask = at::one_hot(r.experts, experts->size()).permute({2, 1, 0});  // [experts, top_k, tokens]
  for (int64_t e : r.picked) {
    std::vector<at::Tensor> where = at::where(mask[e]);
    const at::Tensor& position = where[0];
    const at::Tensor& token = where[1];
    at::Tensor y = (*experts)[static_cast<size_t>(e)](h.index_select(0, token));
    y = y * r.weights.index({token, position}).unsqueeze(-1);
    out.index_add_(0, token, y.to(out.scalar_type()));
  }
  if (shared_expert) out = out + at::sigmoid((*shared_expert_gate)(h)) * (*shared_expert)(h);
  return out.reshape(shape);
}

}  // namespace ferry::models
