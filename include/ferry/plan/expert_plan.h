#pragma once
/// \file
/// Planning a mixture of experts by the expert. Accelerate keeps a decoder layer whole, so a MoE
/// layer with 128 experts lands on one device, or on disk, as a block; each token then needs 8 of
/// them. plan_by_expert places the dense parts first (embeddings, attention, norms, routers, shared
/// experts, head: everything but the routed experts) with infer_auto_device_map's own algorithm and
/// no-split rules, then the routed experts one by one where room remains: the GPU of their layer,
/// the other GPUs, the CPU, disk.
///
///     // Mixtral-shaped (tests/plan_expert_test.cpp): 2 layers of 8 experts of 36 KiB, dense parts
///     // of 633 KiB whose largest layer (the embedding) is 250 KiB.
///     PlanOptions options;
///     options.max_memory = parse_max_memory("0=1089768,cpu=477284");
///     options.no_split.patterns = {"model.layers.*"};
///     DeviceMap map = infer_auto_device_map(tree, options);  // calls plan_by_expert
///     // GPU 0: the dense parts (633 KiB), 250 KiB kept, then room for 5 experts: layer 0's 0-4.
///     // CPU: 250 KiB kept, room for 6: layer 0's 5-7 and layer 1's 0-2. Disk: layer 1's 3-7.
///     // {"model.embed_tokens": 0, "model.layers.0.self_attn": 0, ...,
///     //  "model.layers.0.block_sparse_moe.experts.4": 0, "...experts.5": "cpu", ...,
///     //  "model.layers.1.block_sparse_moe.experts.3": "disk", ...}
///
/// Routed experts are recognised by name, as transformers and the Hub checkpoints spell them: a
/// numbered child of a module called `experts` (Mixtral's `block_sparse_moe.experts.3`, Qwen-MoE's
/// `mlp.experts.17`). A shared expert (`shared_expert`) is a dense part.

#include "ferry/plan/device_map.h"
#include "ferry/plan/infer_device_map.h"
#include "ferry/plan/model_tree.h"

#include <string_view>

namespace ferry {

/// True if `module_name` names a routed expert: its last component is a number and the one
/// before it is `experts` ("model.layers.0.mlp.experts.17").
bool is_routed_expert(std::string_view module_name);

/// True if some module of `tree` is a routed expert.
bool has_routed_experts(const ModelTree& tree);

/// infer_auto_device_map for a mixture of experts: the dense parts by Accelerate's algorithm, then
/// each routed expert on the first device with room, in this order: the GPU its layer's dense part
/// is on, the other GPUs, the CPU, disk. On the main devices (the first GPU and the CPU, as in
/// Accelerate) room is kept for the largest dense layer or the experts one token streams in
/// (options.experts_per_token of the largest expert), whichever is larger. The map has an entry
/// per placed module, cleaned (options.clean_result) so that a layer whose parts all share a
/// device is one entry. `verbose` gets one line per layer: how many experts went where.
DeviceMap plan_by_expert(const ModelTree& tree, const PlanOptions& options);

}  // namespace ferry
