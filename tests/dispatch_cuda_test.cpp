// CUDA variants of the equivalence suite: the same models executed on cuda:0 with weights
// offloaded to CPU RAM and disk give the resident model's output. Compiled only when LibTorch
// has CUDA (FERRY_WITH_CUDA); skipped when no GPU is present.

#if defined(FERRY_WITH_CUDA)

#include "ferry/core/error.h"
#include "ferry/dispatch/big_modeling.h"
#include "ferry/hooks/cpu_offload_hook.h"
#include "ferry/hooks/weight_streamer.h"
#include "dispatch_models.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>

using namespace ferry;
using ferry::testing::ModelForTest;
using ferry::testing::TempDir;
using ferry::testing::TiedModel;

namespace {

const c10::Device kCuda(c10::kCUDA, 0);

#define REQUIRE_GPU() \
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device"

}  // namespace

TEST(DispatchCudaTest, CpuOffloadExecutesOnTheGpu) {
  REQUIRE_GPU();
  at::manual_seed(0);
  ModelForTest model;
  at::Tensor x = at::randn({2, 3});
  at::Tensor expected = model(x);
  OffloadOptions options;
  options.execution_device = kCuda;
  cpu_offload(model, options);
  at::Tensor out = model(x);
  EXPECT_TRUE(out.device().is_cpu()) << "io_same_device: the output comes back to the input's device";
  EXPECT_TRUE(at::allclose(out, expected, 1e-5, 1e-5));
  remove_hook_from_submodules(model);
  EXPECT_TRUE(at::allclose(model(x), expected, 1e-5, 1e-5));
}

TEST(DispatchCudaTest, MixedGpuCpuDiskMapMatchesResident) {
  REQUIRE_GPU();
  at::manual_seed(1);
  TiedModel model;
  at::Tensor ids = at::randint(0, 32, {2, 5});
  at::Tensor expected = model(ids);
  for (int64_t prefetch : {int64_t{0}, int64_t{1} << 20}) {
    TempDir dir;
    DispatchOptions options;
    options.offload_dir = dir.path();
    options.streamer.prefetch_bytes = prefetch;
    dispatch_model(model,
                   DeviceMap{{"embed", Placement::cuda(0)}, {"blocks.0", Placement::cuda(0)},
                             {"blocks.1", Placement::cpu()}, {"blocks.2", Placement::disk()},
                             {"gain", Placement::cuda(0)}, {"head", Placement::cpu()}},
                   options);
    EXPECT_TRUE(model.embed->weight->device().is_cuda());
    EXPECT_TRUE(model.head->weight->is_meta());
    for (int pass = 0; pass < 2; ++pass) {
      at::Tensor out = model(ids);
      EXPECT_TRUE(at::allclose(out.cpu(), expected, 1e-5, 1e-5)) << "prefetch " << prefetch << " pass " << pass;
    }
    remove_hook_from_submodules(model);
    model.to(c10::Device(c10::kCPU));
    EXPECT_TRUE(model.embed->weight->is_same(*model.head->weight));
  }
}

TEST(DispatchCudaTest, MovingADispatchedModelIsRefused) {
  REQUIRE_GPU();
  ModelForTest model;
  TempDir dir;
  DispatchOptions options;
  options.offload_dir = dir.path();
  dispatch_model(model, DeviceMap{{"linear1", Placement::disk()}, {"batchnorm", Placement::cpu()},
                                  {"linear2", Placement::cuda(0)}},
                 options);
  EXPECT_THROW(model.to(kCuda), ferry::Error);
}

TEST(DispatchCudaTest, CpuOffloadWithHookSharesOneGpu) {
  REQUIRE_GPU();
  Linear model1(4, 5), model2(5, 5);
  at::Tensor x = at::randn({2, 4});
  at::Tensor expected = model2(model1(x));
  auto hook1 = cpu_offload_with_hook(model1, kCuda).hook;
  auto hook2 = cpu_offload_with_hook(model2, kCuda, hook1).hook;
  EXPECT_TRUE(model1.weight->device().is_cpu());
  at::Tensor out = model2(model1(x));
  EXPECT_TRUE(model1.weight->device().is_cpu()) << "model1 goes back to the CPU when model2 runs";
  EXPECT_TRUE(model2.weight->device().is_cuda());
  EXPECT_TRUE(at::allclose(out.cpu(), expected, 1e-5, 1e-5));
  hook2->offload();
  EXPECT_TRUE(model2.weight->device().is_cpu());
}

TEST(DispatchCudaTest, StreamerCopiesAheadOnACopyStreamWithTheSameBits) {
  // Weights in pinned CPU RAM (cpu_offload) and in a mapped offload folder staged through 1 MiB
  // chunks (weights of 4 and 8 MiB, so chunks are reused within one tensor): the streamer's
  // output is bit-identical to synchronous loading, and its loads were served ahead.
  REQUIRE_GPU();
  at::manual_seed(2);
  TiedModel model(/*vocab=*/64, /*dim=*/1024, /*layers=*/4);
  at::Tensor ids = at::randint(0, 64, {2, 7});
  for (bool disk : {false, true}) {
    std::vector<at::Tensor> outputs;
    for (int64_t prefetch : {int64_t{0}, int64_t{64} << 20}) {
      TempDir dir;
      OffloadOptions options;
      options.execution_device = kCuda;
      options.streamer.prefetch_bytes = prefetch;
      options.streamer.staging_chunk_bytes = 1 << 20;
      options.streamer.staging_chunks = 2;
      auto state = disk ? disk_offload(model, dir.path(), options) : cpu_offload(model, options);
      if (!disk && prefetch > 0)
        EXPECT_TRUE(state->weights_map->load("blocks.0.up.weight").is_pinned()) << "CPU-offloaded weights are pinned";
      at::Tensor out;
      for (int pass = 0; pass < 3; ++pass) out = model(ids).cpu();
      if (state->streamer) {
        StreamerStats stats = state->streamer->stats();
        EXPECT_GT(stats.prefetched_loads, 0) << "disk " << disk;
      }
      outputs.push_back(out);
      remove_hook_from_submodules(model);
    }
    EXPECT_TRUE(at::equal(outputs[0], outputs[1])) << "disk " << disk;
  }
}

TEST(DispatchCudaTest, StreamerOnCudaSurvivesAnExceptionMidForward) {
  REQUIRE_GPU();
  TiedModel model(/*vocab=*/32, /*dim=*/256, /*layers=*/3);
  OffloadOptions options;
  options.execution_device = kCuda;
  auto state = cpu_offload(model, options);
  at::Tensor ids = at::randint(0, 32, {1, 4});
  at::Tensor expected = model(ids).cpu();
  EXPECT_THROW(model(at::randint(0, 32, {1, 4}).to(at::kFloat)), std::exception);  // embedding needs ints
  for (auto& [name, t] : model.blocks->at(0)->named_parameters()) EXPECT_TRUE(t.is_meta()) << name << ": dropped after the exception";
  EXPECT_TRUE(at::equal(model(ids).cpu(), expected));
}

#endif  // FERRY_WITH_CUDA
