// The weight streamer: prefetching never changes a result, follows the learned order, relearns
// when the order changes, and cleans up after exceptions.

#include "ferry/core/error.h"
#include "ferry/dispatch/big_modeling.h"
#include "ferry/hooks/weight_streamer.h"
#include "dispatch_models.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

using namespace ferry;
using ferry::testing::TempDir;
using ferry::testing::TiedModel;

namespace {

// A stack of blocks whose forward can skip some of them: another code path.
class Stack : public Module {
 public:
  explicit Stack(int64_t layers, int64_t dim = 32) : Module("Stack") {
    blocks = register_module("blocks", std::make_shared<ModuleList>());
    for (int64_t i = 0; i < layers; ++i) blocks->push_back(std::make_shared<ferry::testing::Block>(dim));
  }
  c10::IValue forward(Args& args) override {
    at::Tensor h = args.tensor(0);
    const c10::IValue* skip = args.find("skip_odd");
    bool skip_odd = skip && skip->toBool();
    const c10::IValue* fail = args.find("fail_at");
    int64_t fail_at = fail ? fail->toInt() : -1;
    for (size_t i = 0; i < blocks->size(); ++i) {
      if (skip_odd && i % 2 == 1) continue;
      if (static_cast<int64_t>(i) == fail_at) throw std::runtime_error("failure injected at block " + std::to_string(i));
      h = (*blocks)[i](h);
    }
    return h;
  }
  std::shared_ptr<ModuleList> blocks;
};

at::Tensor call(Module& m, const at::Tensor& x, bool skip_odd = false) {
  Args args{x};
  args.set("skip_odd", skip_odd);
  return m(args).toTensor();
}

int64_t block_bytes(int64_t dim) { return (dim * 2 + 2 * dim * dim + 2 * dim + 2 * dim * dim + dim + dim) * 4; }

}  // namespace

TEST(StreamerTest, PrefetchedRunsAreIdenticalAndServedAhead) {
  at::manual_seed(0);
  Stack model(6);
  at::Tensor x = at::randn({2, 3, 32});
  at::Tensor expected = call(model, x);
  TempDir dir;
  OffloadOptions options;
  options.streamer.prefetch_bytes = 3 * block_bytes(32);
  auto state = disk_offload(model, dir.path(), options);
  ASSERT_TRUE(state->streamer);
  for (int pass = 0; pass < 4; ++pass) EXPECT_TRUE(at::equal(call(model, x), expected)) << "pass " << pass;
  StreamerStats stats = state->streamer->stats();
  // One hook per module with tensors: each block's norm, up, down and the block (its buffers).
  EXPECT_EQ(state->streamer->learned_length(), 6u * 4u);
  // After the first pass (recording), nearly every tensor (6 per block) comes from prefetch.
  EXPECT_GE(stats.prefetched_loads, 6 * 6 * 3 - 6);
  EXPECT_LE(stats.demand_loads, 6 * 6 + 6);
  EXPECT_EQ(stats.relearns, 0);
}

TEST(StreamerTest, AWarmCpuPassWakesNoIoThread) {
  // Weights in RAM or in a mapped file already in the page cache: prefetching them is a view and a
  // mincore call on the compute thread, so after the first passes no job goes to the I/O threads,
  // and the loads are still served ahead.
  at::manual_seed(3);
  Stack model(4);
  at::Tensor x = at::randn({2, 3, 32});
  at::Tensor expected = call(model, x);
  for (bool disk : {false, true}) {
    TempDir dir;
    OffloadOptions options;
    auto state = disk ? disk_offload(model, dir.path(), options) : cpu_offload(model, options);
    for (int pass = 0; pass < 2; ++pass) call(model, x);  // learn the order; pages come in
    state->streamer->reset_stats();
    EXPECT_TRUE(at::equal(call(model, x), expected)) << "disk " << disk;
    StreamerStats stats = state->streamer->stats();
    EXPECT_EQ(stats.io_jobs, 0) << "disk " << disk;
    EXPECT_GE(stats.prefetched_loads, 4 * 6 - 6) << "disk " << disk;
    remove_hook_from_submodules(model);
  }
}

TEST(StreamerTest, AWindowSmallerThanOneModuleLoadsOnDemand) {
  at::manual_seed(1);
  Stack model(4);
  at::Tensor x = at::randn({2, 32});
  at::Tensor expected = call(model, x);
  TempDir dir;
  OffloadOptions options;
  options.streamer.prefetch_bytes = 16;  // less than any block
  auto state = disk_offload(model, dir.path(), options);
  for (int pass = 0; pass < 3; ++pass) EXPECT_TRUE(at::equal(call(model, x), expected));
  EXPECT_EQ(state->streamer->stats().prefetched_loads, 0);
  EXPECT_GT(state->streamer->stats().demand_loads, 0);
}

TEST(StreamerTest, AChangedOrderRelearnsAndStaysCorrect) {
  at::manual_seed(2);
  Stack model(6);
  at::Tensor x = at::randn({2, 32});
  at::Tensor full = call(model, x), skipping = call(model, x, true);
  TempDir dir;
  OffloadOptions options;
  options.streamer.prefetch_bytes = 2 * block_bytes(32);
  auto state = disk_offload(model, dir.path(), options);
  for (int pass = 0; pass < 3; ++pass) EXPECT_TRUE(at::equal(call(model, x), full));
  EXPECT_TRUE(at::equal(call(model, x, true), skipping));  // prefetched block 1 is not what runs
  EXPECT_GE(state->streamer->stats().relearns, 1);
  for (int pass = 0; pass < 3; ++pass) {
    EXPECT_TRUE(at::equal(call(model, x, true), skipping));
    EXPECT_TRUE(at::equal(call(model, x), full));
  }
}

TEST(StreamerTest, AnExceptionMidForwardLeavesNoWeightsAndNoStuckThreads) {
  at::manual_seed(3);
  Stack model(5);
  at::Tensor x = at::randn({2, 32});
  at::Tensor expected = call(model, x);
  TempDir dir;
  auto state = disk_offload(model, dir.path());
  call(model, x);
  call(model, x);
  Args failing{x};
  failing.set("fail_at", int64_t{3});
  EXPECT_THROW(model(failing), std::runtime_error);
  for (auto& [name, t] : model.named_parameters()) EXPECT_TRUE(t.is_meta()) << name;
  EXPECT_TRUE(at::equal(call(model, x), expected));
  remove_hook_from_submodules(model);
  state.reset();  // joins the I/O threads: a hang here would time the test out
  EXPECT_TRUE(at::equal(call(model, x), expected));
}

TEST(StreamerTest, TiedWeightsWithPrefetch) {
  at::manual_seed(4);
  TiedModel model;
  at::Tensor ids = at::randint(0, 32, {2, 6});
  at::Tensor expected = model(ids);
  TempDir dir;
  OffloadOptions options;
  options.streamer.prefetch_bytes = int64_t{1} << 20;
  auto state = disk_offload(model, dir.path(), options);
  for (int pass = 0; pass < 3; ++pass) EXPECT_TRUE(at::equal(model(ids), expected));
  EXPECT_EQ(state->tied_cache->size(), 0u) << "entries made during a forward are dropped after it";
}

TEST(StreamerTest, OffAndOnGiveTheSameBits) {
  at::manual_seed(5);
  Stack model(4);
  at::Tensor x = at::randn({3, 32});
  std::vector<at::Tensor> outputs;
  for (int64_t prefetch : {int64_t{0}, int64_t{100}, int64_t{1} << 30}) {
    TempDir dir;
    OffloadOptions options;
    options.streamer.prefetch_bytes = prefetch;
    options.streamer.io_threads = 3;
    auto state = disk_offload(model, dir.path(), options);
    EXPECT_EQ(static_cast<bool>(state->streamer), prefetch > 0);
    call(model, x);
    outputs.push_back(call(model, x));
    remove_hook_from_submodules(model);
  }
  EXPECT_TRUE(at::equal(outputs[0], outputs[1]));
  EXPECT_TRUE(at::equal(outputs[0], outputs[2]));
}
