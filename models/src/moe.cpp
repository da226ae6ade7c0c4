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

namespace {

/// One picked expert's part of a forward: its (position in the top-k, token) pairs and where it runs.
struct ExpertCall {
  int64_t expert = 0;
  at::Tensor position, token;
  /// Non-empty: it runs on the CPU beside its weights, which these hooks (all of its own) hold in RAM.
  std::vector<AlignDevicesHook*> on_cpu;
  at::Tensor output;
};

}  // namespace

SparseMoeBlock::ExpertHooks SparseMoeBlock::expert_hooks(size_t expert) const {
  ExpertHooks found;
  bool all = true;
  for_each_hook<AlignDevicesHook>(*experts->at(expert), [&](AlignDevicesHook& hook) {
    all = all && hook.weights_in_memory();
    found.hooks.push_back(&hook);
    found.bytes += hook.offloaded_bytes();
  });
  found.all_in_memory = all && !found.hooks.empty();
  return found;
}

bool SparseMoeBlock::runs_on_cpu(const ExpertHooks& expert, int64_t element_bytes, int64_t hidden_size,
                                 int64_t tokens) const {
  if (!expert.all_in_memory || cpu_experts == CpuExperts::copy) return false;
  for (const AlignDevicesHook* hook : expert.hooks)
    if (hook->weights_cached()) return false;  // already where it executes
  const auto device = expert.hooks.front()->options().execution_device;
  if (!device || device->is_cpu()) return true;  // it executes on the CPU anyway: nothing to copy
  if (cpu_experts == CpuExperts::compute) return true;
  return cost_model.runs_on_cpu(expert.bytes, element_bytes, hidden_size, tokens);
}

c10::IValue SparseMoeBlock::forward(Args& args) {
  at::Tensor x = args.tensor(0);
  const auto shape = x.sizes().vec();
  at::Tensor h = x.reshape({-1, shape.back()});
  Routing r = route(h);
  // transformers' loop: per picked expert, its (position in the top-k, token) pairs in that order.
  at::Tensor mask = at::one_hot(r.experts, experts->size()).permute({2, 1, 0});  // [experts, top_k, tokens]
  std::vector<ExpertCall> calls;
  calls.reserve(r.picked.size());
  for (int64_t e : r.picked) {
    std::vector<at::Tensor> where = at::where(mask[e]);
    ExpertCall& call = calls.emplace_back();
    call.expert = e;
    call.position = where[0];
    call.token = where[1];
    ExpertHooks hooks = expert_hooks(static_cast<size_t>(e));
    if (runs_on_cpu(hooks, h.element_size(), h.size(1), call.token.numel()))
      call.on_cpu = std::move(hooks.hooks);
    else  // offloaded experts that run where the model does: every one starts loading now, before the first runs
      for (AlignDevicesHook* hook : hooks.hooks) hook->load_routed();
  }
  if (on_routed) on_routed(*this, r.picked);
  // Experts on the execution device first, so that an accelerator works through them while the
  // CPU runs its own; their outputs are then added in expert order, as transformers does.
  for (bool cpu_turn : {false, true}) {
    for (ExpertCall& call : calls) {
      if (call.on_cpu.empty() == cpu_turn) continue;
      Module& expert = *experts->at(static_cast<size_t>(call.expert));
      at::Tensor tokens = h.index_select(0, call.token);
      if (!cpu_turn) {
        call.output = expert(tokens);
        continue;
      }
      // The whole expert on the CPU: its tokens go there once, its output comes back once.
      for (AlignDevicesHook* hook : call.on_cpu) hook->run_next_forward_on_cpu();
      call.output = expert(tokens.to(c10::kCPU)).to(h.device());
    }
  }
  at::Tensor out = at::zeros_like(h);
  for (const ExpertCall& call : calls) {
    at::Tensor y = call.output * r.weights.index({call.token, call.position}).unsqueeze(-1);
    out.index_add_(0, call.token, y.to(out.scalar_type()));
  }
  if (shared_expert) out = out + at::sigmoid((*shared_expert_gate)(h)) * (*shared_expert)(h);
  return out.reshape(shape);
}

}  // namespace ferry::models
