#pragma once
/// \file
/// A model of your own across processes: a ferry::Sequential (its children applied in order) split
/// into consecutive stages, one per rank of a ProcessGroup. Each rank runs its children; the
/// activations go from rank to rank with c10d send/recv, whatever their shape and dtype; the last
/// stage's output comes back to every rank. (A ferry::models CausalLM, with its KV cache and sampling,
/// goes through models/pipeline.h instead.)
///
///     // on every rank (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT: `ferry launch --nproc 2 -- ./my_program`)
///     DistributedEnv env = *DistributedEnv::from_environment();
///     auto group = std::make_shared<ProcessGroup>(ProcessGroup::connect(env));
///     auto model = std::make_shared<Sequential>();          // the same model on every rank; the
///     for (int i = 0; i < 8; ++i) model->push_back(block());  // others' blocks may stay empty (meta)
///     SequentialPipeline pipeline(model, group, split_stages(model->size(), env.world_size)[env.rank]);
///     at::Tensor y = pipeline.forward(x);   // rank 0's x through blocks 0-3 here and 4-7 on rank 1;
///                                           // every rank gets y
///     // many inputs in flight: rank 0 works on x2 while rank 1 works on x1 (a pipeline's throughput)
///     std::vector<at::Tensor> ys = pipeline.forward_in_flight({x1, x2, x3, x4});
///
/// Every rank makes the same calls in the same order (forward_in_flight with as many inputs); only
/// rank 0's inputs are used. A lost rank makes them throw a ferry::Error naming it and the step,
/// within the group's timeout.

#include "ferry/distributed/process_group.h"
#include "ferry/nn/layers.h"
#include "ferry/plan/pipeline_stages.h"

#include <ATen/core/Tensor.h>

#include <memory>
#include <vector>

namespace ferry {

/// One rank's part of a Sequential run as a pipeline (see the file's comment).
class SequentialPipeline {
 public:
  /// `stage`'s layers are the model's children [first_layer, end_layer) (split_stages over
  /// model->size()); its rank and world size must be the group's.
  SequentialPipeline(std::shared_ptr<Sequential> model, std::shared_ptr<ProcessGroup> group, PipelineStage stage);

  /// Runs one input through every stage: rank 0 takes `input` (the other ranks' is ignored and may
  /// be undefined), each stage receives the previous one's output and sends its own on; returns the
  /// last stage's output on every rank (on the CPU, except on the last rank, where it is as computed).
  at::Tensor forward(const at::Tensor& input);
  /// Runs several inputs (micro-batches) through the stages with all of them in flight: each rank
  /// passes its output for input i on and starts on input i + 1 while the next rank works on i, so
  /// that with as many inputs as ranks or more every rank is busy (forward() keeps one rank busy at
  /// a time). Returns the outputs in order, on every rank, once the last stage has made all of them.
  /// The other ranks pass as many inputs (undefined ones will do); a different count is an error.
  std::vector<at::Tensor> forward_in_flight(const std::vector<at::Tensor>& inputs);

  const PipelineStage& stage() const { return stage_; }
  /// Bytes this rank sent to other ranks so far (activations and the outputs it returned).
  int64_t bytes_sent() const { return bytes_sent_; }

 private:
  // Sends `data` (on the CPU, contiguous) after a header with its shape, dtype and the number of
  // inputs in flight (`count`, which the receiver checks against its own); the sends go on in the
  // background, in `pending`.
  void send(const at::Tensor& data, int dst, int tag, int64_t count, std::vector<PendingSend>& pending);
  at::Tensor receive(int src, int tag, int64_t count);
  std::shared_ptr<Sequential> model_;
  std::shared_ptr<ProcessGroup> group_;
  PipelineStage stage_;
  int step_ = 0;
  int64_t bytes_sent_ = 0;
};

}  // namespace ferry
