// Mixtures of experts on a GPU with their experts in CPU RAM: each of --cpu-experts' choices gives
// transformers' logits and tokens, and the counters show where the experts ran. Compiled only when
// LibTorch has CUDA (FERRY_WITH_CUDA); skipped when no GPU is present.

#if defined(FERRY_WITH_CUDA)

#include "ferry/hooks/weight_streamer.h"
#include "ferry/models/generate.h"
#include "ferry/models/load_model.h"
#include "ferry/models/moe.h"
#include "ferry/models/pretrained.h"
#include "models_test_util.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include <fstream>
#include <iostream>

using namespace ferry;
using namespace ferry::models;
using namespace ferry::models::testing;

namespace {

// Everything on cuda:0 but the routed experts, which are held in CPU RAM; the map's path.
std::string experts_in_ram_map(const std::string& fixture_name, const TempDir& tmp) {
  const auto model = create_empty_model(fixture(fixture_name));
  std::string map = "{\"\": 0";
  for (const auto& [name, module] : model->named_modules())
    if (const auto* block = dynamic_cast<SparseMoeBlock*>(module))
      for (size_t e = 0; e < block->experts->size(); ++e)
        map += ", \"" + name + ".experts." + std::to_string(e) + "\": \"cpu\"";
  const std::string path = (tmp.path() / "map.json").string();
  std::ofstream(path) << map << "}";
  return path;
}

}  // namespace

TEST(ModelsMoeCuda, ExpertsInRamRunOnTheCpuOrAreCopiedAndMatchTransformers) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  for (const char* name : {"tiny_mixtral", "tiny_qwen2_moe", "tiny_qwen3_moe"}) {
    const std::string dir = fixture(name);
    const Reference ref = read_reference(dir);
    TempDir tmp("moe_cuda");
    const std::string map = experts_in_ram_map(name, tmp);
    // auto with given figures: the CPU wins up to 2 tokens per call, so the prompt's calls copy and
    // decoding's (one token) run on the CPU.
    ExpertCostModel two_tokens;
    two_tokens.link_bytes_per_second = 1e9;
    for (CpuExperts mode : {CpuExperts::compute, CpuExperts::copy, CpuExperts::automatic}) {
      const std::string what = std::string(name) + " --cpu-experts " + to_string(mode);
      LoadModelOptions options;
      options.device_map = map;
      options.dtype = at::kFloat;
      options.cpu_experts = mode;
      LoadedModel loaded;
      if (mode == CpuExperts::automatic) {
        // The CPU's arithmetic rate that makes one token cost 0.4x a copy: 2 tokens run on the CPU, 3 copy.
        loaded = load_model(dir, options);
        const double bytes = static_cast<double>(loaded.cpu_experts.expert_bytes);
        const double hidden = static_cast<double>(loaded.model->config().hidden_size);
        two_tokens.cpu_bytes_per_second = 1e30;  // reading costs nothing
        two_tokens.cpu_flops = 2.0 * (bytes / 4) / (0.4 * bytes / 1e9 - 8.0 * hidden / 1e9);
        ASSERT_EQ(two_tokens.max_tokens_on_cpu(loaded.cpu_experts.expert_bytes, 4, loaded.model->config().hidden_size), 2);
        options.expert_cost_model = two_tokens;
      }
      loaded = load_model(dir, options);
      ASSERT_TRUE(loaded.dispatch && loaded.dispatch->streamer) << what;
      EXPECT_GT(loaded.cpu_experts.experts, 0) << what;
      EXPECT_FALSE(loaded.cpu_experts.explanation.empty()) << what;
      std::cout << "[ " << what << " ] " << loaded.cpu_experts.explanation << "\n";
      WeightStreamer& streamer = *loaded.dispatch->streamer;
      at::Tensor logits;
      {
        c10::NoGradGuard no_grad;
        logits = loaded.model->logits(ref.input_ids.to(c10::Device(c10::kCUDA, 0))).cpu();
      }
      const double diff = max_abs_diff(logits, ref.logits);
      std::cout << "[ " << what << " ] max abs logit diff vs transformers: " << diff << "\n";
      EXPECT_LT(diff, 1e-4) << what;
      const StreamerStats prompt = streamer.stats();
      GenerationConfig g;
      g.max_new_tokens = ref.generated.size(1) - ref.input_ids.size(1);
      const GenerationOutput out = generate(*loaded.model, ref.input_ids.to(c10::Device(c10::kCUDA, 0)), g);
      EXPECT_TRUE(at::equal(out.sequences.cpu(), ref.generated)) << what;
      const StreamerStats all = streamer.stats();
      switch (mode) {
        case CpuExperts::compute:
          EXPECT_GT(all.expert_runs_in_place, 0) << what;
          EXPECT_EQ(all.routed_loads, 0) << what;
          break;
        case CpuExperts::copy:
          EXPECT_EQ(all.expert_runs_in_place, 0) << what;
          EXPECT_GT(all.routed_loads, 0) << what;
          break;
        case CpuExperts::automatic:
          EXPECT_GT(prompt.routed_loads, 0) << what << ": the prompt's calls carry several tokens each";
          EXPECT_GT(all.expert_runs_in_place, prompt.expert_runs_in_place) << what << ": decoding runs on the CPU";
          break;
      }
    }
  }
}

#endif  // FERRY_WITH_CUDA
