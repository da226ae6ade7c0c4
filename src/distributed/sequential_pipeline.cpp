#include "ferry/distributed/sequential_pipeline.h"

#include "ferry/core/error.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <string>

namespace ferry {
namespace {

// A message's shape and dtype travel first, in a header of fixed length, so that the receiver
// can make room for any tensor, with the number of inputs in flight, which the receiver checks:
// [dtype, dims, size 0, ..., size kMaxDims - 1, inputs in flight].
constexpr int64_t kMaxDims = 8;
constexpr int64_t kHeaderLength = 2 + kMaxDims + 1;

}  // namespace

SequentialPipeline::SequentialPipeline(std::shared_ptr<Sequential> model, std::shared_ptr<ProcessGroup> group,
                                       PipelineStage stage)
    : model_(std::move(model)), group_(std::move(group)), stage_(stage) {
  FERRY_CHECK(model_ && group_, "SequentialPipeline needs a model and a process group");
  FERRY_CHECK(group_->size() == stage_.world_size && group_->rank() == stage_.rank, "the process group (rank ",
              group_->rank(), " of ", group_->size(), ") does not match the stage (rank ", stage_.rank, " of ",
              stage_.world_size, ")");
  const auto children = static_cast<int64_t>(model_->size());
  FERRY_CHECK(stage_.first_layer >= 0 && stage_.first_layer < stage_.end_layer && stage_.end_layer <= children,
              "rank ", stage_.rank, "'s stage, children [", stage_.first_layer, ", ", stage_.end_layer,
              "), is not within the model's ", children, " children: split_stages(model->size(), world_size) gives "
              "each rank its own");
}

void SequentialPipeline::send(const at::Tensor& data, int dst, int tag, int64_t count, std::vector<PendingSend>& pending) {
  FERRY_CHECK(data.dim() <= kMaxDims, "rank ", stage_.rank, ": a stage's output has ", data.dim(),
              " dimensions; at most ", kMaxDims, " can go to the next rank");
  at::Tensor header = at::zeros({kHeaderLength}, at::kLong);
  auto* h = header.data_ptr<int64_t>();
  h[0] = static_cast<int64_t>(data.scalar_type());
  h[1] = data.dim();
  for (int64_t d = 0; d < data.dim(); ++d) h[2 + d] = data.size(d);
  h[kHeaderLength - 1] = count;
  pending.push_back(group_->send_async(header, dst, tag));
  pending.push_back(group_->send_async(data, dst, tag + 1));
  bytes_sent_ += static_cast<int64_t>(header.nbytes() + data.nbytes());
}

at::Tensor SequentialPipeline::receive(int src, int tag, int64_t count) {
  at::Tensor header = at::empty({kHeaderLength}, at::kLong);
  group_->recv(header, src, tag);
  const auto* h = header.data_ptr<int64_t>();
  FERRY_CHECK(h[1] >= 0 && h[1] <= kMaxDims && h[0] >= 0 && h[0] < static_cast<int64_t>(c10::ScalarType::NumOptions),
              "rank ", stage_.rank, ": the header received from rank ", src, " is not one of SequentialPipeline's (",
              h[0], ", ", h[1], "): do both ranks run the same program?");
  FERRY_CHECK(h[kHeaderLength - 1] == count, "rank ", stage_.rank, " runs ", count, " input(s) in flight and rank ",
              src, " runs ", h[kHeaderLength - 1], ": every rank must call forward_in_flight with as many inputs as rank 0 "
              "(or forward() where rank 0 does)");
  std::vector<int64_t> sizes(h + 2, h + 2 + h[1]);
  at::Tensor data = at::empty(sizes, at::TensorOptions().dtype(static_cast<c10::ScalarType>(h[0])));
  group_->recv(data, src, tag + 1);
  return data;
}

at::Tensor SequentialPipeline::forward(const at::Tensor& input) { return forward_in_flight({input}).front(); }

std::vector<at::Tensor> SequentialPipeline::forward_in_flight(const std::vector<at::Tensor>& inputs) {
  const auto count = static_cast<int64_t>(inputs.size());
  FERRY_CHECK(count > 0, "SequentialPipeline::forward_in_flight needs at least one input");
  const int first_step = step_;
  step_ += static_cast<int>(count);
  const auto tag_of = [&](int64_t i) { return (first_step + static_cast<int>(i)) * 2; };  // the header, then the data
  int64_t i = 0;
  try {
    // Each input through this rank's children, passed on at once: the next rank works on input i
    // while this one goes on with input i + 1.
    std::vector<at::Tensor> outputs(inputs.size());
    std::vector<PendingSend> pending;  // sends under way: this rank does not wait for the next one to take them
    const auto& children = model_->children();
    for (i = 0; i < count; ++i) {
      at::Tensor x;
      if (stage_.is_first()) {
        FERRY_CHECK(inputs[i].defined(), "rank 0's input ", i, " to SequentialPipeline::forward is undefined");
        x = inputs[i];
      } else {
        x = receive(stage_.rank - 1, tag_of(i), count);
      }
      for (int64_t c = stage_.first_layer; c < stage_.end_layer; ++c) x = (*children[static_cast<size_t>(c)].second)(x);
      if (stage_.is_last()) {
        outputs[i] = x;
        const at::Tensor message = x.to(at::kCPU).contiguous();  // once, whatever the ranks it goes to
        for (int r = 0; r < stage_.world_size - 1; ++r) send(message, r, tag_of(i), count, pending);
      } else {
        send(x.to(at::kCPU).contiguous(), stage_.rank + 1, tag_of(i), count, pending);
      }
    }
    // The other ranks take the outputs once their own inputs are through.
    if (!stage_.is_last())
      for (i = 0; i < count; ++i) outputs[i] = receive(stage_.world_size - 1, tag_of(i), count);
    for (PendingSend& p : pending) p.wait();
    return outputs;
  } catch (const Error& e) {
    throw e.in("SequentialPipeline::forward", "step " + std::to_string(first_step + std::min(i, count - 1)) + ": ");
  }
}

}  // namespace ferry
