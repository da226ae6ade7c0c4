// Where an expert held in CPU RAM runs: the cost model's arithmetic (ferry/plan/expert_cost_model.h),
// an AlignDevicesHook running its module beside the weights it holds (run_next_forward_on_cpu), and
// the `--cpu-experts` names.

#include "ferry/core/error.h"
#include "ferry/hooks/align_devices_hook.h"
#include "ferry/hooks/model_hook.h"
#include "ferry/hooks/weight_streamer.h"
#include "ferry/io/checkpoint.h"
#include "ferry/io/safetensors.h"
#include "ferry/io/weights_map.h"
#include "ferry/nn/layers.h"
#include "ferry/plan/expert_cost_model.h"
#include "test_util.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include <memory>

using namespace ferry;
using ferry_test::TempDir;

namespace {

// The file comment's machine: PCIe at 25 GB/s, a CPU reading weights at 40 GB/s, 1 TFLOP/s.
ExpertCostModel example_machine() {
  ExpertCostModel cost;
  cost.link_bytes_per_second = 25e9;
  cost.cpu_bytes_per_second = 40e9;
  cost.cpu_flops = 1e12;
  return cost;
}

constexpr int64_t kExpertBytes = int64_t{12} << 20;  // a float32 expert of 3.1M parameters
constexpr int64_t kHidden = 4096;

}  // namespace

TEST(ExpertCostModel, OneTokenRunsOnTheCpuAndALongPromptCopies) {
  const ExpertCostModel cost = example_machine();
  ASSERT_TRUE(cost.valid());
  EXPECT_NEAR(cost.seconds_copying(kExpertBytes), 12582912 / 25e9, 1e-12);
  // One token: reading 12 MiB at 40 GB/s (0.315 ms) and 6.3 MFLOP at 1 TFLOP/s beat copying it at
  // 25 GB/s (0.503 ms); the token's hidden state crosses twice (32 KiB, 1.3 us).
  EXPECT_NEAR(cost.seconds_on_cpu(kExpertBytes, 4, kHidden, 1),
              12582912 / 40e9 + 2.0 * 3145728 / 1e12 + 2.0 * 4096 * 4 / 25e9, 1e-12);
  EXPECT_TRUE(cost.runs_on_cpu(kExpertBytes, 4, kHidden, 1));
  // Many tokens: the CPU's arithmetic (2 FLOPs per parameter per token) takes over.
  EXPECT_NEAR(cost.seconds_on_cpu(kExpertBytes, 4, kHidden, 1000),
              12582912 / 40e9 + 2.0 * 3145728 * 1000 / 1e12 + 2.0 * 1000 * 4096 * 4 / 25e9, 1e-12);
  EXPECT_FALSE(cost.runs_on_cpu(kExpertBytes, 4, kHidden, 1000));
  // The break-even point, and runs_on_cpu agrees on both sides of it.
  const int64_t most = cost.max_tokens_on_cpu(kExpertBytes, 4, kHidden);
  EXPECT_EQ(most, 24);
  EXPECT_TRUE(cost.runs_on_cpu(kExpertBytes, 4, kHidden, most));
  EXPECT_FALSE(cost.runs_on_cpu(kExpertBytes, 4, kHidden, most + 1));
}

TEST(ExpertCostModel, TheBreakEvenMovesWithTheHardware) {
  const ExpertCostModel base = example_machine();
  const int64_t at_base = base.max_tokens_on_cpu(kExpertBytes, 4, kHidden);
  ExpertCostModel faster_link = base;  // NVLink-C2C-like: copying is cheap, the CPU rarely wins
  faster_link.link_bytes_per_second = 400e9;
  EXPECT_EQ(faster_link.max_tokens_on_cpu(kExpertBytes, 4, kHidden), 0);
  EXPECT_FALSE(faster_link.runs_on_cpu(kExpertBytes, 4, kHidden, 1));
  ExpertCostModel faster_cpu = base;  // more arithmetic: more tokens before the copy pays
  faster_cpu.cpu_flops = 4e12;
  EXPECT_GT(faster_cpu.max_tokens_on_cpu(kExpertBytes, 4, kHidden), at_base);
  // bfloat16: half the bytes for the same parameters, so the copy is cheaper per FLOP.
  EXPECT_LT(base.max_tokens_on_cpu(kExpertBytes / 2, 2, kHidden), at_base);
}

TEST(ExpertCostModel, WithoutFiguresItNeverChoosesTheCpu) {
  ExpertCostModel none;
  EXPECT_FALSE(none.valid());
  EXPECT_FALSE(none.runs_on_cpu(kExpertBytes, 4, kHidden, 1));
  EXPECT_EQ(none.max_tokens_on_cpu(kExpertBytes, 4, kHidden), 0);
  ExpertCostModel partial = example_machine();
  partial.cpu_flops = 0;
  EXPECT_FALSE(partial.runs_on_cpu(kExpertBytes, 4, kHidden, 1));
  EXPECT_EQ(example_machine().describe(), "link 25.0 GB/s, CPU 40.0 GB/s and 1.00 TFLOP/s (given)");
}

TEST(ExpertCostModel, CpuExpertsNames) {
  for (CpuExperts mode : {CpuExperts::automatic, CpuExperts::compute, CpuExperts::copy})
    EXPECT_EQ(parse_cpu_experts(to_string(mode)), mode);
  try {
    parse_cpu_experts("gpu");
    FAIL() << "'gpu' is not a choice";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("'gpu' is not a choice"), std::string::npos) << what;
    EXPECT_NE(what.find("auto"), std::string::npos) << what;
    EXPECT_NE(what.find("compute"), std::string::npos) << what;
    EXPECT_NE(what.find("copy"), std::string::npos) << what;
  }
}

// A Linear offloaded to RAM with a streamer: the next forward after run_next_forward_on_cpu uses
// the held tensors themselves (nothing loaded, nothing streamed) and gives the same output; the
// one after that loads through the streamer again.
TEST(ExpertCompute, HookRunsItsModuleBesideTheWeightsItHoldsOnce) {
  c10::NoGradGuard no_grad;
  auto linear = std::make_shared<Linear>(16, 8);
  const at::Tensor x = at::randn({3, 16});
  const at::Tensor expected = (*linear)(x);
  const at::Tensor held_weight = linear->weight.get().clone();
  auto streamer = std::make_shared<WeightStreamer>(StreamerOptions{});
  AlignDevicesOptions o;
  o.execution_device = c10::Device(c10::kCPU);
  o.offload = true;
  o.weights_map = io::make_state_dict_weights_map({{"weight", held_weight}, {"bias", linear->bias.get().clone()}});
  o.streamer = streamer;
  auto hook = std::make_shared<AlignDevicesHook>(o);
  add_hook_to_module(*linear, hook);
  ASSERT_TRUE(hook->weights_in_memory());
  ASSERT_TRUE(linear->weight.get().is_meta());

  hook->run_next_forward_on_cpu();
  at::Tensor seen;  // the weight the forward ran with
  struct Spy : ModelHook {
    at::Tensor* seen;
    Module* linear;
    void pre_forward(Module&, Args&) override { *seen = dynamic_cast<Linear&>(*linear).weight.get(); }
  };
  EXPECT_TRUE(at::equal((*linear)(x), expected));
  EXPECT_TRUE(linear->weight.get().is_meta()) << "dropped again after the forward";
  StreamerStats stats = streamer->stats();
  EXPECT_EQ(stats.expert_runs_in_place, 1);
  EXPECT_EQ(stats.expert_bytes_in_place, (16 * 8 + 8) * 4);
  EXPECT_EQ(stats.bytes_loaded, 0) << "nothing loaded: the held tensors are used";
  EXPECT_EQ(stats.demand_loads + stats.prefetched_loads, 0);

  // The held tensor itself, not a copy: a second hook appended after it sees the slot.
  auto spy = std::make_shared<Spy>();
  spy->seen = &seen;
  spy->linear = linear.get();
  add_hook_to_module(*linear, spy, /*append=*/true);
  hook->run_next_forward_on_cpu();
  EXPECT_TRUE(at::equal((*linear)(x), expected));
  EXPECT_TRUE(seen.is_same(held_weight)) << "the weights map's own tensor";

  // Only the next forward: the one after loads through the streamer.
  streamer->reset_stats();
  EXPECT_TRUE(at::equal((*linear)(x), expected));
  stats = streamer->stats();
  EXPECT_EQ(stats.expert_runs_in_place, 0);
  EXPECT_EQ(stats.demand_loads + stats.prefetched_loads, 2) << "weight and bias through the streamer";
}

// Weights read from a file cannot be "beside" the CPU: the hook says why.
TEST(ExpertCompute, WeightsInAFileAreRefusedByName) {
  TempDir tmp("expert_compute");
  auto linear = std::make_shared<Linear>(4, 4);
  const std::string path = (tmp.path() / "w.safetensors").string();
  io::save_safetensors(path, {{"weight", linear->weight.get()}, {"bias", linear->bias.get()}});
  AlignDevicesOptions o;
  o.execution_device = c10::Device(c10::kCPU);
  o.offload = true;
  o.weights_map = io::make_checkpoint_weights_map(io::Checkpoint::open(path));
  auto hook = std::make_shared<AlignDevicesHook>(o);
  add_hook_to_module(*linear, hook);
  EXPECT_FALSE(hook->weights_in_memory());
  try {
    hook->run_next_forward_on_cpu();
    FAIL() << "weights in a file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("read from a file"), std::string::npos) << e.what();
  }
  // Not offloaded at all: nothing is held either.
  auto resident = std::make_shared<Linear>(4, 4);
  AlignDevicesOptions r;
  r.execution_device = c10::Device(c10::kCPU);
  auto resident_hook = std::make_shared<AlignDevicesHook>(r);
  add_hook_to_module(*resident, resident_hook);
  EXPECT_FALSE(resident_hook->weights_in_memory());
  EXPECT_THROW(resident_hook->run_next_forward_on_cpu(), Error);
}
