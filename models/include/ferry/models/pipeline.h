#pragma once
/// \file
/// Pipeline-parallel inference: a model's decoder layers split into consecutive stages, one per
/// rank of a torch.distributed process group (ferry/distributed/process_group.h). Each rank loads
/// only its stage; hidden states go from stage to stage with c10d send/recv; each stage keeps the
/// KV cache of its layers; the last stage's logits (or only the tokens it chose) reach every rank,
/// so every rank's generate() has the same tokens and all of them step together.
///
///     // on every rank (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set, e.g. by `ferry launch`)
///     DistributedEnv env = *DistributedEnv::from_environment();
///     auto group = std::make_shared<ProcessGroup>(ProcessGroup::connect(env));
///     auto model = create_empty_model(dir);
///     PipelineStage stage = split_stages(model->config().num_hidden_layers, env.world_size)[env.rank];
///     LoadModelOptions options;
///     options.device_map_entries = stage_device_map(*model, stage);   // the other stages stay on disk
///     // or, over this rank's budget (what does not fit is offloaded inside the stage):
///     //   PlanOptions plan;  plan.max_memory = parse_max_memory("cpu=8GiB");
///     //   options.device_map_entries = plan_stage_device_map(*model, stage, Strategy::Auto, plan);
///     LoadedModel loaded = load_model(model, open_model_checkpoint(dir), options);
///     auto pipeline = std::make_shared<PipelineModel>(loaded.model, group, stage);
///     pipeline->set_logits_on_every_rank(false);  // generate() needs the tokens only: send those
///     GenerationOutput out = generate(*pipeline, ids, g);               // the same tokens on every rank
///
///     // or several groups of the batch in flight, every stage busy:
///     //   GenerationOutput out = generate_in_flight(*pipeline, ids, g, {}, env.world_size);
///
/// A model of your own (a ferry::Sequential) runs across ranks with ferry/distributed/sequential_pipeline.h.
///
/// Supported: every ferry::models architecture (the Llama family: Llama, Mistral, Qwen2, Mixtral,
/// Qwen2-MoE, Qwen3-MoE; and GPT-2), each stage resident or offloaded within its rank's budget
/// (plan_stage_device_map).

#include "ferry/distributed/process_group.h"
#include "ferry/models/causal_lm.h"
#include "ferry/models/generate.h"
#include "ferry/plan/device_map.h"
#include "ferry/plan/infer_device_map.h"
#include "ferry/plan/pipeline_stages.h"

#include <functional>
#include <memory>
#include <optional>
#include <vector>

namespace ferry::models {

/// The device map that loads one stage: its decoder layers on "cpu", the input modules (embeddings,
/// GPT-2's positions) on the first stage (the embeddings on the last too when tied to the head),
/// the final norm and head on the last, modules without weights (rotary embeddings) everywhere;
/// the rest "disk", read in place and never touched.
DeviceMap stage_device_map(const CausalLM& model, const PipelineStage& stage);

/// stage_device_map with the stage's own modules planned, by `strategy`, over this rank's budget
/// (options.max_memory) as load_model plans a whole model: what does not fit goes to disk and is
/// read in when it runs (offload inside a stage). The other stages' modules stay on disk, never
/// touched. The decoder layers stay whole (options.no_split gets their names).
DeviceMap plan_stage_device_map(CausalLM& model, const PipelineStage& stage, Strategy strategy,
                                PlanOptions options);

/// One rank's view of a pipelined model: a CausalLM whose forward runs this stage between its
/// neighbours and returns the last stage's logits. Every rank must call it the same way, in the
/// same order (as generate() does on every rank).
class PipelineModel : public CausalLM {
 public:
  PipelineModel(std::shared_ptr<CausalLM> stage_model, std::shared_ptr<ProcessGroup> group, PipelineStage stage);

  c10::IValue forward(Args& args) override;
  std::vector<std::string> no_split_module_classes() const override { return inner_->no_split_module_classes(); }
  std::string input_embeddings_name() const override { return inner_->input_embeddings_name(); }
  std::vector<std::string> decoder_layer_names() const override { return inner_->decoder_layer_names(); }

  const PipelineStage& stage() const { return stage_; }
  /// Bytes this rank sent to the next stage, bytes it received (the previous stage's hidden states;
  /// the last stage's logits, on the other ranks) and the seconds it spent sending and receiving
  /// (all channels together).
  int64_t bytes_sent() const;
  int64_t bytes_received() const;
  double communication_seconds() const;
  /// Seconds this rank spent computing its stage (all channels together): against the wall time,
  /// how busy the stage was.
  double compute_seconds() const;
  /// What one message to the next stage costs on its own (measure_link).
  struct LinkTiming {
    int64_t message_bytes = 0;  ///< a decode step's message: the rows' hidden states and the stop code
    double one_way_seconds = 0;  ///< half the median round trip
  };
  /// The boundary to the next stage on its own: a decode step's message for `rows` prompts sent
  /// there and back `rounds` times. communication_seconds() also counts the waits for the other
  /// stages' compute; this is what the link itself costs per step. Every rank must call it at the
  /// same point (each answers its previous rank, then measures its next); the last stage returns
  /// nullopt.
  std::optional<LinkTiming> measure_link(int64_t rows, int rounds = 5);

  /// Stopping together (Ctrl-C on one rank or all of them): `requested` says whether this rank
  /// wants to stop, as a nonzero code (e.g. the signal received). Each forward carries the largest
  /// code of the ranks so far along with its data, and the last stage's answer comes back with the
  /// logits, so every rank learns of a stop after the same step. Shared by all channels.
  void set_stop_request(std::function<int()> requested);
  /// The code every rank agreed on at this channel's last step (0: go on). generate_in_flight
  /// stops each group there; a caller of generate() checks it after each step (on_step).
  int agreed_stop() const { return agreed_stop_; }

  /// Whether every rank's forward returns the logits, as a model in one process does (the
  /// default). generate() needs only the chosen tokens: with false, the last stage sends each
  /// step's tokens instead (choose_next_tokens), 8 bytes a row instead of the vocabulary's logits,
  /// and the other ranks' forward returns an empty [batch, keep, 0] tensor. Give false when no
  /// rank but the last uses the logits (no prompt logits wanted). Shared by all channels.
  void set_logits_on_every_rank(bool every_rank);
  bool logits_on_every_rank() const;
  /// generate()'s choice of the next tokens: chosen on the last stage and received by the other
  /// ranks, or (logits on every rank) chosen by each rank from the same logits.
  at::Tensor choose_next_tokens(const at::Tensor& logits,
                                const std::function<at::Tensor(const at::Tensor&)>& choose) override;

  /// The same stage on channel `channel` of `channels`: its own message tags and step count, for
  /// one of several sequences in flight (generate_in_flight). Channels share the stage's weights,
  /// counters and one lock, so that the stage computes one of them at a time.
  std::shared_ptr<PipelineModel> channel(int channel, int channels) const;

 private:
  friend GenerationOutput generate_in_flight(PipelineModel&, const at::Tensor&, const GenerationConfig&,
                                             const at::Tensor&, int);
  struct Shared;  // what channels share
  // Runs one send or receive of step `step`, timed; a lost peer's error names the step (and group).
  void communicate(int step, const std::function<void()>& f);
  // Receives `message` from rank `from` (communicate, counted in bytes_received).
  void receive_message(at::Tensor& message, int from, int step, int tag);
  std::shared_ptr<CausalLM> inner_;
  std::shared_ptr<ProcessGroup> group_;
  PipelineStage stage_;
  std::shared_ptr<Shared> shared_;
  int channel_ = 0, channels_ = 1;
  int step_ = 0;
  int agreed_stop_ = 0;
};

/// How generate_in_flight splits `rows` prompts: `micro_batches` clamped to [1, rows] groups, group i
/// holding rows [starts[i], starts[i + 1]) (sizes differ by one at most; starts has groups + 1 entries).
std::vector<int64_t> in_flight_group_starts(int64_t rows, int64_t micro_batches);

/// generate() with several groups of sequences in flight: the batch's rows split into
/// `micro_batches` groups, each generated on its own channel (a thread per group), so that while
/// stage 2 works on group A, stage 1 works on group B, and no stage waits for the round trip of
/// one group's tokens. Every rank must call it with the same arguments. Greedy tokens are
/// generate()'s; sampled ones differ (group i samples with seed + i). Timings: prefill_seconds is
/// the slowest group's, decode_seconds the wall time after it, decode_steps the most any group took
/// (so decode_seconds / decode_steps is the time per step of the whole batch, as for generate()).
/// g.on_step and g.stopping_criteria see one group's rows: give none. micro_batches is clamped to
/// [1, rows]; 1 is generate(). A stop agreed across ranks (set_stop_request) ends each group after
/// its current step; model.agreed_stop() says so afterwards, and the sequences hold the tokens every
/// group made by then.
GenerationOutput generate_in_flight(PipelineModel& model, const at::Tensor& input_ids, const GenerationConfig& g,
                                    const at::Tensor& attention_mask, int micro_batches);

}  // namespace ferry::models
