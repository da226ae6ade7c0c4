#include "ferry/models/pipeline.h"

#include "ferry/core/error.h"
#include "ferry/plan/model_tree.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>

namespace ferry::models {
namespace {

// Positions whose logits the model returns: CausalLM's logits_to_keep (0 or more than the
// sequence: all).
int64_t kept_positions(const Args& args, int64_t seq) {
  const c10::IValue* keep = args.find("logits_to_keep");
  const int64_t n = keep && keep->isInt() ? keep->toInt() : 0;
  return n > 0 && n < seq ? n : seq;
}

}  // namespace

DeviceMap stage_device_map(const CausalLM& model, const PipelineStage& stage) {
  const Placement here = Placement::cpu(), elsewhere = Placement::disk();
  const std::vector<std::string> layers = model.decoder_layer_names();
  const std::string embeddings = model.input_embeddings_name();
  DeviceMap map;
  // Walk down from the root: a decoder layer or the embeddings is one entry; a module holding some
  // of them is opened; any other module is one entry (the final norm, the head, rotary embeddings).
  auto holds = [&](const std::string& name) {
    const std::string prefix = name + ".";
    if (embeddings.rfind(prefix, 0) == 0) return true;
    for (const auto& l : layers)
      if (l.rfind(prefix, 0) == 0) return true;
    return false;
  };
  std::function<void(const Module&, const std::string&)> visit = [&](const Module& m, const std::string& path) {
    for (const auto& [name, child] : m.children()) {
      const std::string full = path.empty() ? name : path + "." + name;
      if (const auto it = std::find(layers.begin(), layers.end(), full); it != layers.end()) {
        const auto i = static_cast<int64_t>(it - layers.begin());
        map.set(full, i >= stage.first_layer && i < stage.end_layer ? here : elsewhere);
      } else if (full == embeddings) {
        const bool tied = model.config().tie_word_embeddings;
        map.set(full, stage.is_first() || (tied && stage.is_last()) ? here : elsewhere);
      } else if (holds(full)) {
        visit(*child, full);
      } else {
        const bool weightless = child->named_parameters().empty();
        map.set(full, stage.is_last() || weightless ? here : elsewhere);
      }
    }
  };
  visit(model, "");
  return map;
}

DeviceMap plan_stage_device_map(CausalLM& model, const PipelineStage& stage, Strategy strategy,
                                PlanOptions options) {
  DeviceMap whole = stage_device_map(model, stage);
  // The stage's own tensors, in the model's order, are the tree the planner sees.
  auto in_stage = [&](const std::string& name) {
    const auto p = whole.placement_of(name);
    return p && !p->is_disk();
  };
  std::vector<NamedTreeTensor> tensors;
  for (const auto& [name, t] : model.named_parameters())
    if (in_stage(name)) tensors.push_back({name, TreeTensor{t.sizes().vec(), t.scalar_type()}});
  for (const auto& [name, t] : model.named_buffers())
    if (in_stage(name)) tensors.push_back({name, TreeTensor{t.sizes().vec(), t.scalar_type()}});
  if (tensors.empty()) return whole;
  const ModelTree tree = model_tree_from_named_tensors(std::move(tensors), /*natural_order=*/false);
  for (const std::string& layer : model.decoder_layer_names()) options.no_split.patterns.push_back(layer);
  options.experts_per_token = model.config().num_experts_per_tok;
  const DeviceMap planned = plan_device_map(tree, strategy, options);
  // Each of the stage's entries takes the planned placement covering it, or is replaced by the
  // planned entries inside it (a mixture of experts' layer planned by the expert).
  DeviceMap out;
  for (const auto& [key, placement] : whole) {
    if (placement.is_disk()) {
      out.set(key, placement);
      continue;
    }
    if (const auto covering = planned.owner_of(key)) {
      out.set(key, planned.at(*covering));
      continue;
    }
    const size_t before = out.size();
    for (const auto& [inner, p] : planned)
      if (inner.rfind(key + ".", 0) == 0) out.set(inner, p);
    if (out.size() == before) out.set(key, placement);  // nothing to plan in it (no tensors)
  }
  return out;
}

PipelineModel::PipelineModel(std::shared_ptr<CausalLM> stage_model, std::shared_ptr<ProcessGroup> group,
                             PipelineStage stage)
    : CausalLM(stage_model->class_name(), stage_model->config()),
      inner_(std::move(stage_model)),
      group_(std::move(group)),
      stage_(stage) {
  FERRY_CHECK(inner_->config().model_type != "gpt2", "pipeline parallelism runs the Llama family (Llama, Mistral, "
              "Qwen2, Mixtral, Qwen2-MoE, Qwen3-MoE); not ", inner_->config().architecture, " yet");
  FERRY_CHECK(group_ && group_->size() == stage_.world_size && group_->rank() == stage_.rank, "the process group (rank ",
              group_ ? group_->rank() : -1, " of ", group_ ? group_->size() : 0, ") does not match the stage (rank ",
              stage_.rank, " of ", stage_.world_size, ")");
  // The same names as the model it wraps (generate() looks up the input embeddings by name).
  for (const auto& [name, child] : inner_->children()) register_module(name, child);
}

c10::IValue PipelineModel::forward(Args& args) {
  using Clock = std::chrono::steady_clock;
  const at::Tensor ids = args.tensor(0);
  const int64_t batch = ids.size(0), seq = ids.size(1);
  const ModelConfig& c = config();
  const auto options = at::TensorOptions().dtype(c.dtype);
  const int tag = step_++;
  Args stage_args = args;
  stage_args.set("first_layer", stage_.first_layer);
  stage_args.set("end_layer", stage_.end_layer);
  auto timed = [&](auto&& f) {
    const auto t0 = Clock::now();
    f();
    communication_seconds_ += std::chrono::duration<double>(Clock::now() - t0).count();
  };
  if (!stage_.is_first()) {
    at::Tensor hidden = at::empty({batch, seq, c.hidden_size}, options);
    timed([&] { group_->recv(hidden, stage_.rank - 1, tag); });
    stage_args.set("hidden_states", hidden);
  }
  const int64_t keep = kept_positions(args, seq);
  at::Tensor logits;
  if (!stage_.is_last()) {
    stage_args.set("return_hidden_states", true);
    const at::Tensor hidden = (*inner_)(std::move(stage_args)).toTensor().to(at::kCPU).contiguous();
    timed([&] { group_->send(hidden, stage_.rank + 1, tag); });
    bytes_sent_ += static_cast<int64_t>(hidden.nbytes());
    logits = at::empty({batch, keep, c.vocab_size}, options);
    timed([&] { group_->recv(logits, stage_.world_size - 1, tag); });
  } else {
    logits = (*inner_)(std::move(stage_args)).toTensor().to(at::kCPU).contiguous();
    timed([&] {
      for (int r = 0; r < stage_.world_size - 1; ++r) group_->send(logits, r, tag);
    });
  }
  return logits;
}

}  // namespace ferry::models
