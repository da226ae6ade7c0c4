// Example: a model of your own split over processes (ferry/distributed/sequential_pipeline.h).
//
//   ./build/ferry launch --nproc 2 -- ./build/pipeline_example      (or --nproc 3, 4, ...)
//
// Every rank builds the same eight-block model, its own blocks with their weights and the other
// ranks' blocks under init_empty_weights (no memory), so no rank holds the whole model. Rank 0's
// inputs go through every rank's blocks, one after another and then all in flight; every rank gets
// the outputs. Rank 0 then checks them against the whole model run in one process. Exit status 0
// when they matched.

#include "ferry/distributed/sequential_pipeline.h"
#include "ferry/nn/init_on_device.h"
#include "ferry/nn/layers.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <memory>
#include <optional>
#include <vector>

namespace {

/// Linear -> GELU, with weights drawn from a seed of its own (the same on every rank).
class Block : public ferry::Module {
 public:
  Block(int64_t width, uint64_t seed) : Module("Block") {
    at::manual_seed(seed);
    linear = register_module("linear", std::make_shared<ferry::Linear>(width, width));
  }
  c10::IValue forward(ferry::Args& args) override { return at::gelu((*linear)(args.tensor(0))); }
  std::shared_ptr<ferry::Linear> linear;
};

constexpr int64_t kBlocks = 8, kWidth = 64;

/// The model, with real weights for the blocks in [first, end) and empty (meta) ones elsewhere.
std::shared_ptr<ferry::Sequential> build(int64_t first, int64_t end) {
  auto model = std::make_shared<ferry::Sequential>();
  for (int64_t i = 0; i < kBlocks; ++i) {
    std::optional<ferry::InitOnDevice> empty;
    if (i < first || i >= end) empty.emplace(c10::Device(c10::kMeta));  // init_empty_weights(), for this block
    model->push_back(std::make_shared<Block>(kWidth, 1000 + static_cast<uint64_t>(i)));
  }
  return model;
}

}  // namespace

int main() {
  try {
    const std::optional<ferry::DistributedEnv> env = ferry::DistributedEnv::from_environment();
    if (!env) {
      std::fprintf(stderr, "run it with ferry launch: ferry launch --nproc 2 -- ./build/pipeline_example\n");
      return 2;
    }
    auto group = std::make_shared<ferry::ProcessGroup>(ferry::ProcessGroup::connect(*env));
    const ferry::PipelineStage stage = ferry::split_stages(kBlocks, env->world_size)[static_cast<size_t>(env->rank)];
    ferry::SequentialPipeline pipeline(build(stage.first_layer, stage.end_layer), group, stage);
    std::printf("rank %d of %d: blocks %lld-%lld\n", env->rank, env->world_size,
                static_cast<long long>(stage.first_layer), static_cast<long long>(stage.end_layer - 1));

    at::manual_seed(7);
    const at::Tensor x = at::randn({4, 16, kWidth});  // the same on every rank; only rank 0's is used
    const std::vector<at::Tensor> inputs = {x, x + 1, x + 2};
    std::vector<at::Tensor> one_by_one;
    for (const at::Tensor& input : inputs) one_by_one.push_back(pipeline.forward(input));  // one after another
    const std::vector<at::Tensor> in_flight = pipeline.forward_in_flight(inputs);           // all three at once

    if (env->rank != 0) return 0;
    const auto whole = build(0, kBlocks);  // the whole model, in one process
    double diff = 0;
    for (size_t i = 0; i < inputs.size(); ++i) {
      const at::Tensor want = (*whole)(inputs[i]);
      diff = std::max({diff, (one_by_one[i] - want).abs().max().item<double>(),
                       (in_flight[i] - want).abs().max().item<double>()});
    }
    const bool same = diff <= 1e-6;  // the same kernels on the same numbers: equal, up to a BLAS's thread split
    const at::Tensor& y = in_flight.back();
    std::printf("output %s [%lld, %lld, %lld], max difference from one process %.3g (3 inputs one by one and in "
                "flight): %s\n",
                at::toString(y.scalar_type()), static_cast<long long>(y.size(0)), static_cast<long long>(y.size(1)),
                static_cast<long long>(y.size(2)), diff, same ? "the same" : "DIFFERENT");
    return same ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pipeline_example: %s\n", e.what());
    return 1;
  }
}
