// Benchmark: a model of one's own as a pipeline (SequentialPipeline), one input at a time against
// all inputs in flight, and against the whole model in one process. bench/sequential_pipeline.py
// runs the three with rounds interleaved; one run of this program is one row of one round.
//
//   ./build/bench_sequential_pipeline [--blocks 8] [--width 2048] [--rows 64] [--inputs 16]
//   ./build/ferry launch --nproc 2 -- ./build/bench_sequential_pipeline [--in-flight] [...]
//
// The model: `blocks` blocks of Linear(width, width) -> GELU, each rank with real weights only for
// its own blocks. `inputs` inputs of [rows, width] go through it once to warm up and once timed.
// Rank 0 (or the single process) prints one JSON line: ms per input, and the bytes it sent in the
// timed pass.

#include "bench_util.h"
#include "ferry/distributed/sequential_pipeline.h"
#include "ferry/nn/init_on_device.h"
#include "ferry/nn/layers.h"

#include <ATen/ATen.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace {

class Block : public ferry::Module {
 public:
  explicit Block(int64_t width) : Module("Block") {
    linear = register_module("linear", std::make_shared<ferry::Linear>(width, width));
  }
  c10::IValue forward(ferry::Args& args) override { return at::gelu((*linear)(args.tensor(0))); }
  std::shared_ptr<ferry::Linear> linear;
};

}  // namespace

int main(int argc, char** argv) {
  int64_t blocks = 8, width = 2048, rows = 64, inputs = 16;
  bool in_flight = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> int64_t {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return std::atoll(argv[++i]);
    };
    if (a == "--blocks") blocks = value();
    else if (a == "--width") width = value();
    else if (a == "--rows") rows = value();
    else if (a == "--inputs") inputs = value();
    else if (a == "--in-flight") in_flight = true;
    else {
      std::fprintf(stderr, "unknown option %s (see the comment at the top of bench_sequential_pipeline.cpp)\n", a.c_str());
      return 2;
    }
  }
  try {
    const std::optional<ferry::DistributedEnv> env = ferry::DistributedEnv::from_environment();
    const int rank = env ? env->rank : 0, world = env ? env->world_size : 1;
    const ferry::PipelineStage stage = ferry::split_stages(blocks, world)[static_cast<size_t>(rank)];
    auto model = std::make_shared<ferry::Sequential>();
    for (int64_t b = 0; b < blocks; ++b) {
      std::optional<ferry::InitOnDevice> empty;
      if (b < stage.first_layer || b >= stage.end_layer) empty.emplace(c10::Device(c10::kMeta));
      model->push_back(std::make_shared<Block>(width));
    }
    std::vector<at::Tensor> xs;
    for (int64_t i = 0; i < inputs; ++i) xs.push_back(at::randn({rows, width}));

    std::shared_ptr<ferry::ProcessGroup> group;
    std::optional<ferry::SequentialPipeline> pipeline;
    if (env) {
      group = std::make_shared<ferry::ProcessGroup>(ferry::ProcessGroup::connect(*env));
      pipeline.emplace(model, group, stage);
    }
    auto pass = [&] {
      if (!pipeline) {
        for (const at::Tensor& x : xs) (void)(*model)(x);
      } else if (in_flight) {
        (void)pipeline->forward_in_flight(xs);
      } else {
        for (const at::Tensor& x : xs) (void)pipeline->forward(x);
      }
    };
    pass();  // warm-up: first-touch of the weights, the allocator, the connections
    const int64_t sent_before = pipeline ? pipeline->bytes_sent() : 0;
    const double start = ferry::bench::now();
    pass();
    const double ms = (ferry::bench::now() - start) * 1e3 / static_cast<double>(inputs);
    if (rank == 0)
      std::printf("{\"ranks\": %d, \"in_flight\": %s, \"ms_per_input\": %.3f, \"bytes_sent\": %lld}\n", world,
                  in_flight ? "true" : "false", ms, static_cast<long long>((pipeline ? pipeline->bytes_sent() : 0) - sent_before));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_sequential_pipeline: %s\n", e.what());
    return 1;
  }
}
