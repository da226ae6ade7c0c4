#pragma once
/// \file
/// Mixtures of experts as transformers defines them (modeling_mixtral.py, modeling_qwen2_moe.py,
/// modeling_qwen3_moe.py), laid out as the Hub's checkpoints store them: every expert its own
/// module with its own Linear layers (`model.layers.0.block_sparse_moe.experts.3.w1`,
/// `model.layers.0.mlp.experts.17.gate_proj`), so that each can be placed, hooked and offloaded on
/// its own, and only the experts the router picks run (and, offloaded, load).
///
///     auto model = ferry::models::create_model(ferry::models::load_config("/models/qwen3-moe"));
///     auto& moe = model->submodule("model.layers.0.mlp");          // a SparseMoeBlock
///     // its "gate" (the router), "experts.0" .. "experts.127", each a Qwen3MoeMLP
///
/// Routing follows transformers: softmax of the router's logits in float32, the top-k experts per
/// token, their weights renormalised to sum to 1 (Mixtral always; Qwen when norm_topk_prob) and cast
/// to the model's dtype; each picked expert runs on its tokens and its output, times the weight, is
/// added in expert order. Qwen2-MoE adds a shared expert on every token, gated by a sigmoid.
///
/// Offloaded experts load only when picked: as soon as the router has run, the weights of every
/// picked expert start loading at once (WeightStreamer::load_routed), and the streamer's learned
/// order covers the dense part only, never prefetching experts blindly. An expert held in CPU RAM
/// while the model runs on a GPU may instead run on the CPU beside its weights, only its tokens'
/// hidden states crossing the link (cpu_experts; the cost model decides per call by default).

#include "ferry/models/config.h"
#include "ferry/nn/layers.h"
#include "ferry/nn/module.h"
#include "ferry/plan/expert_cost_model.h"

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace ferry {
class AlignDevicesHook;
}

namespace ferry::models {

/// One Mixtral expert: w2(silu(w1 x) * w3 x) (transformers' former MixtralBlockSparseTop2MLP, the
/// Hub checkpoints' layout).
class MixtralExpert : public Module {
 public:
  explicit MixtralExpert(const ModelConfig& config);
  c10::IValue forward(Args& args) override;
  std::shared_ptr<Linear> w1, w2, w3;
};

/// Which experts a batch of tokens was routed to (SparseMoeBlock::route).
struct Routing {
  /// [tokens, top_k]: expert indices, and their weights in the model's dtype.
  at::Tensor experts, weights;
  /// The distinct experts picked, in increasing order.
  std::vector<int64_t> picked;
};

/// `block_sparse_moe` (Mixtral) or `mlp` (Qwen2-MoE, Qwen3-MoE): the router `gate`, the `experts`
/// and, for Qwen2-MoE, `shared_expert` and `shared_expert_gate`.
class SparseMoeBlock : public Module {
 public:
  /// `prefix` names the family ("Mixtral", "Qwen2Moe", "Qwen3Moe") for the class names.
  SparseMoeBlock(const std::string& prefix, const ModelConfig& config);
  /// hidden_states [batch, seq, hidden] -> [batch, seq, hidden].
  c10::IValue forward(Args& args) override;
  /// The router's decision for hidden states [tokens, hidden].
  Routing route(const at::Tensor& hidden_states);

  /// Called with the experts a forward picked, after routing and before the first of them runs
  /// (by then offloaded picked experts have all started loading: AlignDevicesHook::load_routed).
  /// Unset: nothing.
  std::function<void(SparseMoeBlock&, const std::vector<int64_t>&)> on_routed;

  /// Experts held in CPU RAM while the model executes elsewhere (a GPU): run them on the CPU beside
  /// their weights, copy the weights over, or choose per call by `cost_model` and the tokens the
  /// router sent (ferry/plan/expert_cost_model.h; automatic with an invalid model copies). An
  /// expert in the expert cache, or one executing on the CPU anyway, is never copied.
  CpuExperts cpu_experts = CpuExperts::automatic;
  ExpertCostModel cost_model;
  /// The AlignDevicesHooks of one expert (its own and its submodules'), found in one walk.
  struct ExpertHooks {
    std::vector<AlignDevicesHook*> hooks;
    /// Every one of them holds its weights in CPU RAM (the whole expert can run beside them).
    bool all_in_memory = false;
    int64_t bytes = 0;  ///< their offloaded weights' bytes
  };
  ExpertHooks expert_hooks(size_t expert) const;
  /// The choice for one call of an expert with `tokens` tokens.
  bool runs_on_cpu(const ExpertHooks& expert, int64_t element_bytes, int64_t hidden_size, int64_t tokens) const;

  std::shared_ptr<Linear> gate;
  std::shared_ptr<ModuleList> experts;
  std::shared_ptr<Module> shared_expert;       ///< Qwen2-MoE only
  std::shared_ptr<Linear> shared_expert_gate;  ///< Qwen2-MoE only
  int64_t top_k = 0;
  bool norm_topk_prob = true;
};

}  // namespace ferry::models
