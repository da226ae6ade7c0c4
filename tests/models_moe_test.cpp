// Mixtures of experts (Mixtral, Qwen2-MoE, Qwen3-MoE) against transformers' own outputs on the
// tiny checkpoints scripts/make_moe_fixtures.py writes (tests/data/tiny_*moe*, tiny_mixtral):
// resident and with experts offloaded, only the experts the router picks run and load.

#include "ferry/dispatch/big_modeling.h"
#include "ferry/hooks/attach.h"
#include "ferry/hooks/weight_streamer.h"
#include "ferry/models/generate.h"
#include "ferry/models/load_model.h"
#include "ferry/models/moe.h"
#include "ferry/models/pretrained.h"
#include "models_test_util.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include <fstream>
#include <iostream>

using namespace ferry;
using namespace ferry::models;
using namespace ferry::models::testing;

namespace {

const char* const kMoeFixtures[] = {"tiny_mixtral", "tiny_qwen2_moe", "tiny_qwen3_moe"};

std::string moe_block_name(const std::string& fixture_name, int layer) {
  return "model.layers." + std::to_string(layer) + (fixture_name == "tiny_mixtral" ? ".block_sparse_moe" : ".mlp");
}

// Logits within 1e-4 of transformers' and the same greedy tokens.
// A device map with layer 0's experts each on disk on its own and everything else resident; its path.
std::string layer0_experts_on_disk(const std::string& name, const TempDir& tmp) {
  const std::string block = moe_block_name(name, 0);
  std::string map = "{";
  for (const char* resident : {"model.embed_tokens", "model.rotary_emb", "model.norm", "lm_head", "model.layers.1",
                               "model.layers.0.self_attn", "model.layers.0.input_layernorm",
                               "model.layers.0.post_attention_layernorm"})
    map += std::string("\"") + resident + "\": \"cpu\", ";
  map += "\"" + block + ".gate\": \"cpu\"";
  if (name == "tiny_qwen2_moe")
    map += ", \"" + block + ".shared_expert\": \"cpu\", \"" + block + ".shared_expert_gate\": \"cpu\"";
  for (int e = 0; e < 8; ++e) map += ", \"" + block + ".experts." + std::to_string(e) + "\": \"disk\"";
  const std::string path = (tmp.path() / "map.json").string();
  std::ofstream(path) << map << "}";
  return path;
}

void expect_matches(CausalLM& model, const Reference& ref, const std::string& what) {
  at::Tensor logits;
  {
    c10::NoGradGuard no_grad;
    logits = model.logits(ref.input_ids);
  }
  ASSERT_EQ(logits.sizes(), ref.logits.sizes()) << what;
  const double diff = max_abs_diff(logits, ref.logits);
  std::cout << "[ " << what << " ] max abs logit diff vs transformers: " << diff << "\n";
  EXPECT_LT(diff, 1e-4) << what;
  GenerationConfig g;
  g.max_new_tokens = ref.generated.size(1) - ref.input_ids.size(1);
  GenerationOutput out = generate(model, ref.input_ids, g);
  EXPECT_TRUE(at::equal(out.sequences, ref.generated)) << what << "\nferry:\n" << out.sequences << "\ntransformers:\n"
                                                       << ref.generated;
}

}  // namespace

TEST(ModelsMoe, ResidentMatchesTransformers) {
  for (const char* name : kMoeFixtures) {
    const std::string dir = fixture(name);
    auto model = load_pretrained(dir, {at::kFloat});
    expect_matches(*model, read_reference(dir), name);
  }
}

TEST(ModelsMoe, ClassesAndNamesAreTheHubsOneModulePerExpert) {
  auto mixtral = create_empty_model(fixture("tiny_mixtral"));
  EXPECT_EQ(mixtral->submodule("model.layers.0.block_sparse_moe").class_name(), "MixtralSparseMoeBlock");
  EXPECT_EQ(mixtral->submodule("model.layers.0.block_sparse_moe.experts.7").class_name(), "MixtralBlockSparseTop2MLP");
  EXPECT_EQ(mixtral->submodule("model.layers.1.block_sparse_moe.experts.7.w1").class_name(), "Linear");
  auto qwen2 = create_empty_model(fixture("tiny_qwen2_moe"));
  EXPECT_EQ(qwen2->submodule("model.layers.0.mlp").class_name(), "Qwen2MoeSparseMoeBlock");
  EXPECT_EQ(qwen2->submodule("model.layers.0.mlp.shared_expert").class_name(), "Qwen2MoeMLP");
  EXPECT_EQ(qwen2->submodule("model.layers.1.mlp").class_name(), "Qwen2MoeMLP") << "mlp_only_layers: [1]";
  auto qwen3 = create_empty_model(fixture("tiny_qwen3_moe"));
  EXPECT_EQ(qwen3->submodule("model.layers.1.self_attn.q_norm").class_name(), "Qwen3MoeRMSNorm");
  EXPECT_EQ(qwen3->submodule("model.layers.1.mlp.experts.0").class_name(), "Qwen3MoeMLP");
}

TEST(ModelsMoe, ExpertsOffloadedOneByOneMatchTransformersAndOnlyPickedOnesLoad) {
  for (const char* name : kMoeFixtures) {
    const std::string dir = fixture(name);
    const Reference ref = read_reference(dir);
    TempDir tmp("moe");
    // Layer 0's experts each on disk on its own, everything else resident.
    const std::string block = moe_block_name(name, 0);
    const std::string path = layer0_experts_on_disk(name, tmp);
    LoadModelOptions options;
    options.device_map = path;
    options.dtype = at::kFloat;
    LoadedModel loaded = load_model(dir, options);
    ASSERT_TRUE(loaded.dispatch && loaded.dispatch->streamer) << name;
    loaded.dispatch->streamer->reset_stats();
    expect_matches(*loaded.model, ref, std::string(name) + " experts on disk");
    // Experts are loaded when picked, outside the learned order: the order of the other offloaded
    // modules never changes (no relearning), though every token picks other experts.
    StreamerStats stats = loaded.dispatch->streamer->stats();
    EXPECT_GT(stats.routed_loads, 0) << name;
    EXPECT_EQ(stats.relearns, 0) << name;

    // One token through the model: the bytes brought in are exactly those of the experts the
    // router of layer 0 picked.
    auto& moe = dynamic_cast<SparseMoeBlock&>(loaded.model->submodule(block));
    std::vector<int64_t> picked;
    moe.on_routed = [&](SparseMoeBlock&, const std::vector<int64_t>& experts) { picked = experts; };
    const int64_t expert_bytes = [&] {
      int64_t b = 0;
      for (const auto& [n, t] : moe.experts->at(0)->named_parameters()) b += static_cast<int64_t>(t.numel()) * 4;
      return b;
    }();
    loaded.dispatch->streamer->reset_stats();
    {
      c10::NoGradGuard no_grad;
      loaded.model->logits(ref.input_ids.narrow(0, 0, 1).narrow(1, 0, 1));
    }
    ASSERT_EQ(picked.size(), 2u) << name << ": one token, top-2";
    stats = loaded.dispatch->streamer->stats();
    EXPECT_EQ(stats.bytes_loaded, 2 * expert_bytes) << name;
    // Both experts started loading when the router picked them, before either ran.
    EXPECT_EQ(stats.routed_loads, 2 * 3) << name << ": each expert's three Linear modules (one hook each)";
    EXPECT_EQ(stats.demand_loads, 0) << name;
    EXPECT_EQ(stats.prefetched_loads, 2 * 3) << name << ": three Linear weights per expert";
  }
}

// device_map "auto" plans a mixture of experts by the expert: with a CPU budget for the dense
// parts and four experts, those four stay in RAM, the other twelve go to disk, and the tokens are
// transformers'. Accelerate's whole layers (plan_by_expert = false) put layer 1 on disk whole.
TEST(ModelsMoe, AutoDeviceMapPlacesExpertsOneByOneAndMatches) {
  const std::string dir = fixture("tiny_mixtral");
  const Reference ref = read_reference(dir);
  constexpr int64_t kDense = 648448, kReserve = 256000, kExpert = 36864;  // as tests/plan_expert_test.cpp
  LoadModelOptions options;
  options.device_map = "auto";
  options.max_memory = "cpu=" + std::to_string(kDense + kReserve + 4 * kExpert + 1000);
  options.dtype = at::kFloat;
  LoadedModel loaded = load_model(dir, options);
  const DeviceMap& map = loaded.device_map;
  const std::string experts0 = "model.layers.0.block_sparse_moe.experts.";
  EXPECT_EQ(map.placement_of("model.layers.1.self_attn.q_proj.weight"), Placement::cpu()) << map.to_json(1);
  EXPECT_EQ(map.placement_of("lm_head.weight"), Placement::cpu()) << map.to_json(1);
  EXPECT_EQ(map.placement_of(experts0 + "3.w1.weight"), Placement::cpu()) << map.to_json(1);
  EXPECT_EQ(map.placement_of(experts0 + "4.w1.weight"), Placement::disk()) << map.to_json(1);
  EXPECT_EQ(map.placement_of("model.layers.1.block_sparse_moe.experts.0.w1.weight"), Placement::disk());
  expect_matches(*loaded.model, ref, "tiny_mixtral planned by the expert");

  options.plan_by_expert = false;
  LoadedModel whole = load_model(dir, options);
  EXPECT_EQ(whole.device_map.placement_of("model.layers.1.self_attn.q_proj.weight"), Placement::disk())
      << whole.device_map.to_json(1);
  EXPECT_FALSE(whole.device_map.contains(experts0 + "0")) << whole.device_map.to_json(1);
}

// The expert cache through a model: every expert of layer 0 on disk, a cache with room for half of
// them; generation gives transformers' tokens, and picks are served from the cache.
TEST(ModelsMoe, ExpertCacheServesRepeatedPicksAndChangesNoToken) {
  for (const char* name : kMoeFixtures) {
    const std::string dir = fixture(name);
    const Reference ref = read_reference(dir);
    TempDir tmp("moe_cache");
    const std::string block = moe_block_name(name, 0);
    const std::string path = layer0_experts_on_disk(name, tmp);
    LoadModelOptions options;
    options.device_map = path;
    options.dtype = at::kFloat;
    LoadedModel probe = load_model(dir, LoadModelOptions{});
    int64_t expert_bytes = 0;
    for (const auto& [n, t] : probe.model->submodule(block + ".experts.0").named_parameters())
      expert_bytes += static_cast<int64_t>(t.numel()) * 4;
    options.expert_cache_bytes = 4 * expert_bytes;
    LoadedModel loaded = load_model(dir, options);
    ASSERT_TRUE(loaded.dispatch && loaded.dispatch->streamer) << name;
    auto& streamer = *loaded.dispatch->streamer;
    expect_matches(*loaded.model, ref, std::string(name) + " with an expert cache");
    const StreamerStats stats = streamer.stats();
    EXPECT_GT(stats.expert_cache_hits, 0) << name;
    EXPECT_GT(stats.expert_cache_misses, 0) << name;
    EXPECT_EQ(stats.expert_cache_hits + stats.expert_cache_misses, stats.routed_loads) << name;
    EXPECT_LE(streamer.expert_cache_bytes(), 4 * expert_bytes) << name;
    EXPECT_GT(streamer.expert_cache_bytes(), 0) << name;
  }
}

// Experts held in CPU RAM, as dispatch holds "cpu" experts beside a model executing on a GPU:
// every expert's Linear layers offloaded to a state dict, with a streamer. With compute (and with
// auto: the model executes on the CPU, so there is nothing to copy) every pick runs beside its
// weights and nothing is loaded; with copy every pick goes through the streamer. Transformers'
// logits and tokens in every case. (On a GPU: tests/dispatch_cuda_test.cpp.)
TEST(ModelsMoe, ExpertsHeldInRamRunBesideTheirWeightsOrAreCopied) {
  for (const char* name : kMoeFixtures) {
    const std::string dir = fixture(name);
    const Reference ref = read_reference(dir);
    for (CpuExperts mode : {CpuExperts::compute, CpuExperts::automatic, CpuExperts::copy}) {
      const std::string what = std::string(name) + " --cpu-experts " + to_string(mode);
      auto model = load_pretrained(dir, {at::kFloat});
      auto streamer = std::make_shared<WeightStreamer>(StreamerOptions{});
      AttachOptions attach;
      attach.streamer = streamer;
      int64_t experts = 0;
      for (const auto& [block_name, module] : model->named_modules()) {
        auto* block = dynamic_cast<SparseMoeBlock*>(module);
        if (!block) continue;
        block->cpu_experts = mode;
        for (size_t e = 0; e < block->experts->size(); ++e) {
          Module& expert = *block->experts->at(e);
          io::NamedTensors held;
          for (const auto& [n, t] : expert.named_parameters()) held.emplace_back(n, t.clone());
          attach_align_device_hook(expert, c10::Device(c10::kCPU), /*offload=*/true,
                                   io::make_state_dict_weights_map(std::move(held)), attach);
          ++experts;
        }
      }
      ASSERT_GT(experts, 0) << what;
      expect_matches(*model, ref, what);
      const StreamerStats stats = streamer->stats();
      if (mode == CpuExperts::copy) {
        EXPECT_EQ(stats.expert_runs_in_place, 0) << what;
        EXPECT_GT(stats.routed_loads, 0) << what;
        EXPECT_GT(stats.demand_loads + stats.prefetched_loads, 0) << what;
      } else {
        EXPECT_GT(stats.expert_runs_in_place, 0) << what;
        EXPECT_EQ(stats.routed_loads, 0) << what;
        EXPECT_EQ(stats.bytes_loaded, 0) << what << ": the held tensors themselves";
      }
      EXPECT_EQ(stats.relearns, 0) << what << ": experts never enter the learned order";
    }
  }
}
