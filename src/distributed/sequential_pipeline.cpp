#include "ferry/distributed/sequential_pipeline.h"

#include "ferry/core/error.h"

#include <ATen/ATen.h>

#include <string>

namespace ferry {
namespace {

// A message's shape and dtype travel first, in a header of fixed length, so that the receiver
// can make room for any tensor: [dtype, dims, size 0, ..., size kMaxDims - 1].
constexpr int64_t kMaxDims = 8;

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

void SequentialPipeline::send(const at::Tensor& data, int dst, int tag) {
  FERRY_CHECK(data.dim() <= kMaxDims, "rank ", stage_.rank, " step ", step_, ": a stage's output has ", data.dim(),
              " dimensions; at most ", kMaxDims, " can go to the next rank");
  at::Tensor header = at::zeros({2 + kMaxDims}, at::kLong);
  auto* h = header.data_ptr<int64_t>();
  h[0] = static_cast<int64_t>(data.scalar_type());
  h[1] = data.dim();
  for (int64_t d = 0; d < data.dim(); ++d) h[2 + d] = data.size(d);
  group_->send(header, dst, tag);
  group_->send(data, dst, tag + 1);
  bytes_sent_ += static_cast<int64_t>(header.nbytes() + data.nbytes());
}

at::Tensor SequentialPipeline::receive(int src, int tag) {
  at::Tensor header = at::empty({2 + kMaxDims}, at::kLong);
  group_->recv(header, src, tag);
  const auto* h = header.data_ptr<int64_t>();
  FERRY_CHECK(h[1] >= 0 && h[1] <= kMaxDims && h[0] >= 0 && h[0] < static_cast<int64_t>(c10::ScalarType::NumOptions),
              "rank ", stage_.rank, ": the header received from rank ", src, " is not one of SequentialPipeline's (",
              h[0], ", ", h[1], "): do both ranks run the same program?");
  std::vector<int64_t> sizes(h + 2, h + 2 + h[1]);
  at::Tensor data = at::empty(sizes, at::TensorOptions().dtype(static_cast<c10::ScalarType>(h[0])));
  group_->recv(data, src, tag + 1);
  return data;
}

at::Tensor SequentialPipeline::forward(const at::Tensor& input) {
  const int step = step_++;
  const int tag = step * 2;  // the header, then the data
  try {
    at::Tensor x;
    if (stage_.is_first()) {
      FERRY_CHECK(input.defined(), "rank 0's input to SequentialPipeline::forward is undefined");
      x = input;
    } else {
      x = receive(stage_.rank - 1, tag);
    }
    const auto& children = model_->children();
    for (int64_t i = stage_.first_layer; i < stage_.end_layer; ++i) x = (*children[static_cast<size_t>(i)].second)(x);
    const at::Tensor message = x.to(at::kCPU).contiguous();  // once, whatever the ranks it goes to
    if (!stage_.is_last()) {
      send(message, stage_.rank + 1, tag);
      return receive(stage_.world_size - 1, tag);  // the output, from the last stage
    }
    for (int r = 0; r < stage_.world_size - 1; ++r) send(message, r, tag);
    return x;
  } catch (const Error& e) {
    throw e.in("SequentialPipeline::forward", "step " + std::to_string(step) + ": ");
  }
}

}  // namespace ferry
