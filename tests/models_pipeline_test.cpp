// Pipeline stages (models/pipeline.h): how layers split over ranks and what each rank loads. The
// runs across processes are in models_cli_test.cpp (ModelsCli.Pipeline*).
#include "ferry/models/pipeline.h"
#include "ferry/models/pretrained.h"
#include "models_test_util.h"

#include <gtest/gtest.h>

using namespace ferry;
using namespace ferry::models;
using namespace ferry::models::testing;

namespace {

std::vector<std::pair<int64_t, int64_t>> ranges(const std::vector<PipelineStage>& stages) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (const auto& s : stages) out.emplace_back(s.first_layer, s.end_layer);
  return out;
}

using Ranges = std::vector<std::pair<int64_t, int64_t>>;

}  // namespace

TEST(PipelineStages, ConsecutiveLayersInProportionToTheShares) {
  EXPECT_EQ(ranges(split_stages(7, 2)), (Ranges{{0, 4}, {4, 7}}));
  EXPECT_EQ(ranges(split_stages(3, 3)), (Ranges{{0, 1}, {1, 2}, {2, 3}}));
  EXPECT_EQ(ranges(split_stages(32, 4)), (Ranges{{0, 8}, {8, 16}, {16, 24}, {24, 32}}));
  EXPECT_EQ(ranges(split_stages(6, std::vector<double>{1, 2})), (Ranges{{0, 2}, {2, 6}}));
  // A tiny share still gets a layer; a huge one leaves one for each later rank.
  EXPECT_EQ(ranges(split_stages(4, std::vector<double>{0.01, 100, 0.01})), (Ranges{{0, 1}, {1, 3}, {3, 4}}));
  // The last stage's head counts as layers of work: 16 layers and a head worth 2.6 split 9 + 7.
  EXPECT_EQ(ranges(split_stages(16, std::vector<double>{1, 1}, 2.6)), (Ranges{{0, 9}, {9, 16}}));
  EXPECT_EQ(ranges(split_stages(16, std::vector<double>{1, 1, 1}, 2.6)), (Ranges{{0, 6}, {6, 12}, {12, 16}}));
  EXPECT_EQ(ranges(split_stages(2, std::vector<double>{1, 1}, 50)), (Ranges{{0, 1}, {1, 2}})) << "one layer each, at least";
  EXPECT_NE(error_of([] { split_stages(4, std::vector<double>{1, 1}, -1); }).find("the head's work must be 0 or more"),
            std::string::npos);
  const auto stages = split_stages(5, 2);
  EXPECT_TRUE(stages[0].is_first() && !stages[0].is_last());
  EXPECT_TRUE(stages[1].is_last() && stages[1].world_size == 2 && stages[1].rank == 1);
  EXPECT_NE(error_of([] { split_stages(2, 3); })
                .find("a pipeline of 3 ranks needs at least 3 decoder layers; this model has 2. Use at most 2 ranks"),
            std::string::npos);
  EXPECT_NE(error_of([] { split_stages(4, std::vector<double>{1, 0}); }).find("rank 1's share of the layers must be positive"),
            std::string::npos);
}

// The head's work follows the run: a decoding step runs it on every prompt's position as the layers,
// a prefill on the last position of each prompt only; the weights' reading counts in every forward.
// generate_in_flight's groups (and what ferry run reports and measures the link for): at most one
// per prompt, sizes a row apart at most.
TEST(PipelineStages, PromptsSplitIntoGroupsInFlight) {
  using ferry::models::in_flight_group_starts;
  EXPECT_EQ(in_flight_group_starts(5, 2), (std::vector<int64_t>{0, 2, 5}));
  EXPECT_EQ(in_flight_group_starts(3, 8), (std::vector<int64_t>{0, 1, 2, 3})) << "no empty groups";
  EXPECT_EQ(in_flight_group_starts(4, 0), (std::vector<int64_t>{0, 4})) << "fewer than one: the whole batch";
  EXPECT_EQ(in_flight_group_starts(64, 2), (std::vector<int64_t>{0, 32, 64}));
}

TEST(PipelineStages, TheHeadsWorkFollowsTheRun) {
  const double c = kCpuWeightReadPositions;  // 32
  // 128 prompts of 8, 8 tokens: layers 32 + 1,024 + 7 x 160, head 8 x 160.
  EXPECT_NEAR(head_work_for_run(2.6, {128, 8, 0, 8}, c), 2.6 * 1280.0 / 2176.0, 1e-12);
  // A prompt of 1,024 and one token: the head runs one position of 1,024.
  EXPECT_NEAR(head_work_for_run(2.6, {1, 1024, 0, 1}, c), 2.6 * 33.0 / 1056.0, 1e-12);
  // The same prompt in chunks of 128: 8 forwards, each reading the weights and running the head once.
  EXPECT_NEAR(head_work_for_run(2.6, {1, 1024, 128, 1}, c), 2.6 * (8 * 33.0) / (8 * 32.0 + 1024), 1e-12);
  // With the prompt's logits the head runs every prompt position too.
  EXPECT_NEAR(head_work_for_run(2.6, {1, 1024, 0, 1, true}, c), 2.6, 1e-12);
  // A long decode of one prompt: about the head's decoding worth.
  EXPECT_NEAR(head_work_for_run(2.6, {1, 8, 0, 1000}, c), 2.6, 0.01);
  // So a 16-layer Llama splits 9 + 7 for decoding and 8 + 8 for a long prompt.
  EXPECT_EQ(ranges(split_stages(16, {1, 1}, head_work_for_run(2.6, {128, 8, 0, 8}, c))), (Ranges{{0, 9}, {9, 16}}));
  EXPECT_EQ(ranges(split_stages(16, {1, 1}, head_work_for_run(2.6, {1, 1024, 0, 1}, c))), (Ranges{{0, 8}, {8, 16}}));
  EXPECT_NE(error_of([&] { head_work_for_run(2.6, {0, 8, 0, 1}, c); }).find("a run of 0 prompt(s) of 8 position(s)"),
            std::string::npos);
}

// The ranks of one host share it: each takes its GPU(s) and its part of the RAM, never all of them.
TEST(PipelineStages, RanksOfOneHostShareItsGpusAndRam) {
  const MaxMemory host = parse_max_memory("0=80GiB,1=80GiB,2=40GiB,cpu=48GiB,disk=900GB");
  EXPECT_EQ(local_rank_budget(host, 0, 1), host) << "alone on the host: all of it";
  EXPECT_EQ(local_rank_budget(host, 1, 2), parse_max_memory("1=80GiB,cpu=24GiB,disk=900GB")) << "GPUs dealt in turn";
  EXPECT_EQ(local_rank_budget(host, 0, 2), parse_max_memory("0=80GiB,2=40GiB,cpu=24GiB,disk=900GB"));
  EXPECT_EQ(local_rank_budget(host, 2, 3), parse_max_memory("2=40GiB,cpu=16GiB,disk=900GB"));
  // Fewer GPUs than ranks: 5 ranks on 2 GPUs, ranks 0, 2, 4 share GPU 0 (a third each), 1 and 3 GPU 1.
  const MaxMemory two = parse_max_memory("0=90GiB,1=80GiB,cpu=50GiB");
  EXPECT_EQ(local_rank_budget(two, 4, 5), parse_max_memory("0=30GiB,cpu=10GiB"));
  EXPECT_EQ(local_rank_budget(two, 3, 5), parse_max_memory("1=40GiB,cpu=10GiB"));
  EXPECT_EQ(local_rank_budget(parse_max_memory("cpu=8GiB"), 3, 4), parse_max_memory("cpu=2GiB")) << "no GPU";
  EXPECT_NE(error_of([&] { local_rank_budget(two, 2, 2); }).find("LOCAL_RANK must be in [0, LOCAL_WORLD_SIZE)"),
            std::string::npos);
}

TEST(PipelineStages, EachRankLoadsItsLayersAndLeavesTheRestOnDisk) {
  auto model = create_empty_model(fixture("tiny_llama"));  // 3 layers, untied head
  const auto stages = split_stages(3, 2);
  const DeviceMap first = stage_device_map(*model, stages[0]), last = stage_device_map(*model, stages[1]);
  const Placement cpu = Placement::cpu(), disk = Placement::disk();
  EXPECT_EQ(first.placement_of("model.embed_tokens.weight"), cpu) << first.to_json();
  EXPECT_EQ(first.placement_of("model.layers.1.mlp.up_proj.weight"), cpu) << first.to_json();
  EXPECT_EQ(first.placement_of("model.layers.2.mlp.up_proj.weight"), disk) << first.to_json();
  EXPECT_EQ(first.placement_of("lm_head.weight"), disk) << first.to_json();
  EXPECT_EQ(first.placement_of("model.norm.weight"), disk) << first.to_json();
  EXPECT_EQ(last.placement_of("model.embed_tokens.weight"), disk) << last.to_json();
  EXPECT_EQ(last.placement_of("model.layers.0.self_attn.q_proj.weight"), disk) << last.to_json();
  EXPECT_EQ(last.placement_of("model.layers.2.self_attn.q_proj.weight"), cpu) << last.to_json();
  EXPECT_EQ(last.placement_of("lm_head.weight"), cpu) << last.to_json();
  EXPECT_EQ(last.placement_of("model.norm.weight"), cpu) << last.to_json();
  for (const DeviceMap* map : {&first, &last}) EXPECT_EQ(map->placement_of("model.rotary_emb"), cpu) << "no weights";
  // A head tied to the embeddings lives with them on the last stage too.
  auto tied = create_empty_model(fixture("tiny_qwen2"));
  ASSERT_TRUE(tied->config().tie_word_embeddings);
  EXPECT_EQ(stage_device_map(*tied, split_stages(3, 2)[1]).placement_of("model.embed_tokens.weight"), cpu);
}

// GPT-2's learned positions run before the first block: they go with the embeddings to the first
// stage; the tied embeddings go to the last stage too, its final LayerNorm only there.
TEST(PipelineStages, Gpt2PositionsGoWithTheEmbeddingsToTheFirstStage) {
  auto model = create_model(parse_config(R"({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
    "vocab_size": 71, "n_embd": 48, "n_layer": 3, "n_head": 3, "n_positions": 32})"));
  ASSERT_EQ(model->input_module_names(), (std::vector<std::string>{"transformer.wte", "transformer.wpe"}));
  const auto stages = split_stages(3, 2);
  const DeviceMap first = stage_device_map(*model, stages[0]), last = stage_device_map(*model, stages[1]);
  const Placement cpu = Placement::cpu(), disk = Placement::disk();
  for (const char* name : {"transformer.wte.weight", "transformer.wpe.weight", "transformer.h.1.attn.c_attn.weight"})
    EXPECT_EQ(first.placement_of(name), cpu) << name << " " << first.to_json();
  for (const char* name : {"transformer.h.2.attn.c_attn.weight", "transformer.ln_f.weight"})
    EXPECT_EQ(first.placement_of(name), disk) << name << " " << first.to_json();
  for (const char* name : {"transformer.wte.weight", "transformer.h.2.mlp.c_fc.weight", "transformer.ln_f.bias"})
    EXPECT_EQ(last.placement_of(name), cpu) << name << " " << last.to_json();
  for (const char* name : {"transformer.wpe.weight", "transformer.h.0.ln_1.weight"})
    EXPECT_EQ(last.placement_of(name), disk) << name << " " << last.to_json();
}
