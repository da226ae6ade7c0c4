// The weight streamer: prefetching never changes a result, follows the learned order, relearns
// when the order changes, and cleans up after exceptions. First the streamer alone (modules
// described by hand, passes simulated by calling it as a hook would), then through hooks.

#include "ferry/core/error.h"
#include "ferry/dispatch/big_modeling.h"
#include "ferry/hooks/weight_streamer.h"
#include "ferry/io/weights_map.h"
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

// ---- The streamer alone ----------------------------------------------------------------------

namespace {

// `layers` layers of "layers.<i>.weight" [dim, dim], ".bias" [dim] and ".norm" [dim], all float,
// as a state dict.
io::NamedTensors layer_tensors(int layers, int64_t dim = 48) {
  io::NamedTensors out;
  for (int i = 0; i < layers; ++i) {
    const std::string prefix = "layers." + std::to_string(i) + ".";
    out.emplace_back(prefix + "weight", at::randn({dim, dim}));
    out.emplace_back(prefix + "bias", at::randn({dim}));
    out.emplace_back(prefix + "norm", at::randn({dim}));
  }
  return out;
}

// The same tensors in a safetensors file read in place (zero-copy views of its mapping).
io::WeightsMapPtr checkpoint_weights(const TempDir& dir, const io::NamedTensors& tensors) {
  const std::string path = dir / "model.safetensors";
  io::save_safetensors(path, tensors);
  return io::make_checkpoint_weights_map(io::Checkpoint::open(path));
}

// Layer i as a hook would describe it: the weight at its stored dtype (on the CPU, a view), the
// bias cast to double (a new tensor, loaded on an I/O thread), and the norm, when `tied_norm`, as
// a tensor loaded elsewhere (never prefetched).
StreamedModule layer_module(const io::WeightsMapPtr& weights, int i, bool with_norm = false, bool tied_norm = false) {
  const std::string prefix = "layers." + std::to_string(i) + ".";
  StreamedModule m;
  m.weights = weights;
  m.device = c10::kCPU;
  m.tensors.push_back({prefix + "weight", at::kFloat});
  m.tensors.push_back({prefix + "bias", at::kDouble});
  if (with_norm) m.tensors.push_back({prefix + "norm", at::kFloat, /*streamed=*/!tied_norm});
  for (const auto& t : m.tensors) m.bytes += static_cast<int64_t>(weights->info(t.name).nbytes);
  return m;
}

// Registered modules and what each was registered with.
struct Registered {
  std::vector<StreamedModuleId> ids;
  std::vector<StreamedModule> modules;
};

Registered register_layers(WeightStreamer& streamer, const io::WeightsMapPtr& weights, int layers,
                           bool with_norm = false, bool tied_norm = false) {
  Registered r;
  for (int i = 0; i < layers; ++i) {
    r.modules.push_back(layer_module(weights, i, with_norm, tied_norm));
    r.ids.push_back(streamer.add_module(r.modules.back()));
  }
  return r;
}

// One simulated forward that runs the given layers in order, as a hook does (on_forward, a fetch
// per tensor, release), checking every fetched tensor against the weights map's own load: the same
// bits, and for the CPU at the stored dtype the very same memory. Returns the most bytes in flight.
int64_t run_pass(WeightStreamer& streamer, const Registered& r, const std::vector<int>& layers) {
  int64_t most_in_flight = 0;
  for (int layer : layers) {
    const StreamedModule& m = r.modules[layer];
    streamer.on_forward(r.ids[layer]);
    most_in_flight = std::max(most_in_flight, streamer.prefetched_bytes());
    for (size_t i = 0; i < m.tensors.size(); ++i) {
      const StreamedTensor& t = m.tensors[i];
      at::Tensor fetched = streamer.fetch(r.ids[layer], i, c10::kCPU);
      at::Tensor direct = m.weights->load(t.name, c10::kCPU, t.dtype);
      EXPECT_EQ(fetched.scalar_type(), t.dtype) << t.name;
      EXPECT_TRUE(at::equal(fetched, direct)) << t.name;
      if (m.weights->info(t.name).dtype == t.dtype) EXPECT_EQ(fetched.data_ptr(), direct.data_ptr()) << t.name;
    }
    streamer.release(r.ids[layer]);
    most_in_flight = std::max(most_in_flight, streamer.prefetched_bytes());
    EXPECT_LE(streamer.prefetched_bytes(), streamer.options().prefetch_bytes);
  }
  return most_in_flight;
}

std::vector<int> upto(int n) {
  std::vector<int> out;
  for (int i = 0; i < n; ++i) out.push_back(i);
  return out;
}

}  // namespace

TEST(StreamerAloneTest, LearnsTheOrderThenServesFromPrefetchWithTheMapsOwnBits) {
  at::manual_seed(10);
  io::NamedTensors tensors = layer_tensors(4);
  TempDir dir;
  for (bool file : {true, false}) {
    io::WeightsMapPtr weights = file ? checkpoint_weights(dir, tensors) : io::make_state_dict_weights_map(tensors);
    WeightStreamer streamer;
    Registered r = register_layers(streamer, weights, 4);
    EXPECT_EQ(streamer.module_count(), 4u);

    run_pass(streamer, r, upto(4));  // recording: every load on demand
    EXPECT_EQ(streamer.learned_length(), 0u) << "the order is known when its first module runs again";
    StreamerStats stats = streamer.stats();
    EXPECT_EQ(stats.prefetched_loads, 0);
    EXPECT_EQ(stats.demand_loads, 4 * 2);

    run_pass(streamer, r, upto(4));  // layer 0 learns the order and loads layers 1-3 ahead
    EXPECT_EQ(streamer.learned_length(), 4u);
    stats = streamer.stats();
    EXPECT_EQ(stats.prefetched_loads, 3 * 2) << "file " << file;
    EXPECT_EQ(stats.demand_loads, 4 * 2 + 2) << "file " << file;
    EXPECT_GT(stats.io_jobs, 0) << "the double biases are cast on I/O threads";

    streamer.reset_stats();
    run_pass(streamer, r, upto(4));  // wrap-around: layer 0 was loaded while layer 3 ran
    stats = streamer.stats();
    EXPECT_EQ(stats.prefetched_loads, 4 * 2) << "file " << file;
    EXPECT_EQ(stats.demand_loads, 0) << "file " << file;
    EXPECT_EQ(stats.relearns, 0);
    const int64_t dim = 48;
    EXPECT_EQ(stats.bytes_loaded, 4 * (dim * dim * 4 + dim * 8));
  }
}

// The expert cache (Note [Expert cache policy]): routed modules stay loaded after they run, within
// the byte budget, ranked by how often they are picked. The workload that defeats recency: every
// "token" picks one hot expert and then two never seen before; a cache of two experts kept by
// recency would hold the last two cold ones and miss the hot one every time. Ranked by use, the hot
// one is served from the cache on every token after the first, and the picks stay exact.
TEST(StreamerAloneTest, ExpertCacheKeepsTheMostPickedWithinItsBudget) {
  at::manual_seed(12);
  const int experts = 41;
  io::NamedTensors tensors = layer_tensors(experts);
  io::WeightsMapPtr weights = io::make_state_dict_weights_map(tensors);
  StreamerOptions options;
  Registered r;
  {
    WeightStreamer probe;
    r = register_layers(probe, weights, 1);
  }
  options.expert_cache_bytes = 2 * r.modules[0].bytes;  // room for two experts
  WeightStreamer streamer(options);
  r = register_layers(streamer, weights, experts);
  auto pick = [&](int e) {
    streamer.load_routed(r.ids[e]);
    run_pass(streamer, r, {e});  // on_forward, fetch (checked against the map), release
  };
  const int tokens = 20;
  for (int t = 0; t < tokens; ++t) {
    pick(0);               // the hot expert
    pick(1 + 2 * t);       // two cold ones, each picked once
    pick(2 + 2 * t);
    EXPECT_LE(streamer.expert_cache_bytes(), options.expert_cache_bytes);
  }
  const StreamerStats stats = streamer.stats();
  EXPECT_EQ(stats.routed_loads, 3 * tokens);
  // The hot expert from the third token on: in the first it was picked no more often than the cold
  // ones, and the least recently picked of equals made room.
  EXPECT_EQ(stats.expert_cache_hits, tokens - 2);
  EXPECT_EQ(stats.expert_cache_misses, 2 * tokens + 2);
  EXPECT_EQ(stats.expert_bytes_cached, (tokens - 2) * r.modules[0].bytes);
  EXPECT_TRUE(streamer.expert_cached(r.ids[0]));
  EXPECT_EQ(stats.demand_loads, 0) << "every fetch served by a routed load or the cache";
  // The same picks kept by recency: the hot expert is always the least recent of three, never hit.
  StreamerOptions lru_options = options;
  lru_options.expert_cache_policy = StreamerOptions::ExpertCachePolicy::recency;
  WeightStreamer lru(lru_options);
  Registered l = register_layers(lru, weights, experts);
  for (int t = 0; t < tokens; ++t)
    for (int e : {0, 1 + 2 * t, 2 + 2 * t}) {
      lru.load_routed(l.ids[e]);
      run_pass(lru, l, {e});
    }
  EXPECT_EQ(lru.stats().expert_cache_hits, 0);
  // Without a budget nothing is kept.
  WeightStreamer uncached;
  Registered u = register_layers(uncached, weights, 2);
  for (int t = 0; t < 3; ++t) {
    uncached.load_routed(u.ids[0]);
    run_pass(uncached, u, {0});
  }
  EXPECT_EQ(uncached.stats().expert_cache_hits, 0);
  EXPECT_EQ(uncached.stats().expert_cache_misses, 3);
  EXPECT_EQ(uncached.expert_cache_bytes(), 0);
  // drop_prefetched empties it.
  streamer.drop_prefetched();
  EXPECT_EQ(streamer.expert_cache_bytes(), 0);
  EXPECT_FALSE(streamer.expert_cached(r.ids[0]));
}

TEST(StreamerAloneTest, AChangedOrderRelearns) {
  at::manual_seed(11);
  io::NamedTensors tensors = layer_tensors(4);
  TempDir dir;
  io::WeightsMapPtr weights = checkpoint_weights(dir, tensors);
  StreamerOptions options;
  options.prefetch_bytes = int64_t{1} << 20;
  WeightStreamer streamer(options);
  Registered r = register_layers(streamer, weights, 4);
  for (int pass = 0; pass < 3; ++pass) run_pass(streamer, r, upto(4));
  EXPECT_EQ(streamer.learned_length(), 4u);
  EXPECT_EQ(streamer.stats().relearns, 0);

  const std::vector<int> skipping = {0, 2, 3};  // layer 1 was prefetched, layer 2 runs instead
  run_pass(streamer, r, skipping);
  EXPECT_EQ(streamer.stats().relearns, 1);
  EXPECT_EQ(streamer.learned_length(), 0u);
  run_pass(streamer, r, skipping);
  EXPECT_EQ(streamer.learned_length(), 3u);
  run_pass(streamer, r, skipping);
  streamer.reset_stats();
  run_pass(streamer, r, skipping);
  StreamerStats stats = streamer.stats();
  EXPECT_EQ(stats.relearns, 0);
  EXPECT_EQ(stats.prefetched_loads, 3 * 2);
  EXPECT_EQ(stats.demand_loads, 0);

  run_pass(streamer, r, upto(4));  // and back
  EXPECT_EQ(streamer.stats().relearns, 1);
}

TEST(StreamerAloneTest, WithoutABudgetEveryLoadIsOnDemand) {
  at::manual_seed(12);
  io::NamedTensors tensors = layer_tensors(3);
  TempDir dir;
  io::WeightsMapPtr weights = checkpoint_weights(dir, tensors);
  for (int64_t budget : {int64_t{0}, int64_t{100}}) {  // off, and smaller than any module
    StreamerOptions options;
    options.prefetch_bytes = budget;
    WeightStreamer streamer(options);
    Registered r = register_layers(streamer, weights, 3);
    for (int pass = 0; pass < 3; ++pass) EXPECT_EQ(run_pass(streamer, r, upto(3)), 0) << "budget " << budget;
    StreamerStats stats = streamer.stats();
    EXPECT_EQ(stats.prefetched_loads, 0) << "budget " << budget;
    EXPECT_EQ(stats.demand_loads, 3 * 3 * 2) << "budget " << budget;
    EXPECT_EQ(stats.io_jobs, 0) << "budget " << budget;
    EXPECT_EQ(streamer.learned_length(), budget == 0 ? 0u : 3u) << "budget " << budget;
  }
}

TEST(StreamerAloneTest, TheByteBudgetBoundsTheModulesInFlight) {
  at::manual_seed(13);
  io::NamedTensors tensors = layer_tensors(6);
  TempDir dir;
  io::WeightsMapPtr weights = checkpoint_weights(dir, tensors);
  const int64_t module_bytes = layer_module(weights, 0).bytes;
  for (int64_t in_flight : {1, 2, 3, 5}) {
    StreamerOptions options;
    options.prefetch_bytes = in_flight * module_bytes + module_bytes / 2;
    WeightStreamer streamer(options);
    Registered r = register_layers(streamer, weights, 6);
    int64_t most = 0;
    for (int pass = 0; pass < 3; ++pass) most = std::max(most, run_pass(streamer, r, upto(6)));
    EXPECT_EQ(most, in_flight * module_bytes) << in_flight << " modules";
    streamer.reset_stats();
    run_pass(streamer, r, upto(6));
    EXPECT_EQ(streamer.stats().prefetched_loads, 6 * 2) << in_flight << " modules";
    EXPECT_EQ(streamer.stats().demand_loads, 0) << in_flight << " modules";
  }
}

TEST(StreamerAloneTest, TensorsLoadedElsewhereAreNeverPrefetched) {
  at::manual_seed(14);
  io::NamedTensors tensors = layer_tensors(3);
  TempDir dir;
  io::WeightsMapPtr weights = checkpoint_weights(dir, tensors);
  WeightStreamer streamer;
  Registered r = register_layers(streamer, weights, 3, /*with_norm=*/true, /*tied_norm=*/true);
  for (int pass = 0; pass < 3; ++pass) run_pass(streamer, r, upto(3));
  streamer.reset_stats();
  run_pass(streamer, r, upto(3));  // fetching them still works: on demand
  EXPECT_EQ(streamer.stats().prefetched_loads, 3 * 2);
  EXPECT_EQ(streamer.stats().demand_loads, 3);
}

TEST(StreamerAloneTest, RemovingAModuleForgetsItAndTheOrder) {
  at::manual_seed(15);
  io::NamedTensors tensors = layer_tensors(3);
  TempDir dir;
  io::WeightsMapPtr weights = checkpoint_weights(dir, tensors);
  WeightStreamer streamer;
  Registered r = register_layers(streamer, weights, 3);
  for (int pass = 0; pass < 2; ++pass) run_pass(streamer, r, upto(3));
  EXPECT_EQ(streamer.learned_length(), 3u);
  EXPECT_GT(streamer.prefetched_bytes(), 0);

  streamer.drop_prefetched();  // keeps the order
  EXPECT_EQ(streamer.prefetched_bytes(), 0);
  EXPECT_EQ(streamer.learned_length(), 3u);
  run_pass(streamer, r, upto(3));
  EXPECT_EQ(streamer.stats().relearns, 0);

  streamer.remove_module(r.ids[1]);
  streamer.remove_module(r.ids[1]);  // again: nothing
  EXPECT_EQ(streamer.module_count(), 2u);
  EXPECT_EQ(streamer.learned_length(), 0u);
  EXPECT_THROW(streamer.fetch(r.ids[1], 0, c10::kCPU), Error);
  EXPECT_THROW(streamer.on_forward(r.ids[1]), Error);
  EXPECT_THROW(streamer.set_device(r.ids[1], c10::kCPU), Error);
  EXPECT_THROW(streamer.fetch(r.ids[0], 2, c10::kCPU), Error) << "layer 0 has 2 tensors";

  for (int pass = 0; pass < 3; ++pass) run_pass(streamer, r, {0, 2});
  EXPECT_EQ(streamer.learned_length(), 2u);
  streamer.reset_stats();
  run_pass(streamer, r, {0, 2});
  EXPECT_EQ(streamer.stats().prefetched_loads, 2 * 2);

  StreamedModule bad = layer_module(weights, 0);
  bad.tensors.push_back({"layers.9.weight", at::kFloat});
  EXPECT_THROW(streamer.add_module(bad), Error);
  bad = layer_module(weights, 0);
  bad.weights = nullptr;
  EXPECT_THROW(streamer.add_module(bad), Error);
  EXPECT_EQ(streamer.module_count(), 2u);
}

// ---- Through hooks ---------------------------------------------------------------------------

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
