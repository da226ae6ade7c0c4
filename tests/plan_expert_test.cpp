// Planning a mixture of experts by the expert (ferry/plan/expert_plan.h): dense parts first, then
// each routed expert where room remains; Accelerate's whole layers on request.
#include "ferry/plan/check_device_map.h"
#include "ferry/plan/expert_plan.h"
#include "ferry/plan/infer_device_map.h"
#include "plan_test_util.h"

#include <gtest/gtest.h>

using namespace ferry;

namespace {

// Mixtral's checkpoint names: 2 layers of 8 experts (36 KiB each), a 250 KiB embedding and head.
ModelTree mixtral_tree() {
  std::vector<NamedTreeTensor> t;
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    t.push_back({name, TreeTensor{std::move(shape), c10::ScalarType::Float}});
  };
  add("model.embed_tokens.weight", {1000, 64});
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {64});
    for (const char* proj : {"q_proj", "k_proj", "v_proj", "o_proj"}) add(p + "self_attn." + proj + ".weight", {64, 64});
    add(p + "post_attention_layernorm.weight", {64});
    add(p + "block_sparse_moe.gate.weight", {8, 64});
    for (int e = 0; e < 8; ++e) {
      const std::string x = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
      add(x + "w1.weight", {48, 64});
      add(x + "w2.weight", {64, 48});
      add(x + "w3.weight", {48, 64});
    }
  }
  add("model.norm.weight", {64});
  add("lm_head.weight", {1000, 64});
  return model_tree_from_named_tensors(std::move(t));
}

constexpr int64_t kExpert = 3 * 48 * 64 * 4;                                   // 36,864 B
constexpr int64_t kDense = 2 * 1000 * 64 * 4 + 256 + 2 * (2 * 256 + 4 * 64 * 64 * 4 + 8 * 64 * 4);  // 648,448 B
constexpr int64_t kReserve = 1000 * 64 * 4;  // the largest dense layer (embedding) beats 2 experts

std::string expert(int layer, int e) {
  return "model.layers." + std::to_string(layer) + ".block_sparse_moe.experts." + std::to_string(e);
}

PlanOptions options_for(const std::string& budgets) {
  PlanOptions o;
  o.max_memory = parse_max_memory(budgets);
  o.no_split.patterns = {"model.layers.*"};
  return o;
}

}  // namespace

TEST(PlanByExpert, RoutedExpertsAreNumberedChildrenOfExperts) {
  EXPECT_TRUE(is_routed_expert("model.layers.0.mlp.experts.17"));
  EXPECT_TRUE(is_routed_expert("model.layers.3.block_sparse_moe.experts.0"));
  EXPECT_TRUE(is_routed_expert("experts.2"));
  EXPECT_FALSE(is_routed_expert("model.layers.0.mlp.experts"));
  EXPECT_FALSE(is_routed_expert("model.layers.0.mlp.shared_expert"));
  EXPECT_FALSE(is_routed_expert("model.layers.0.mlp.experts.17.gate_proj"));
  EXPECT_FALSE(is_routed_expert("model.layers.0.mlp.my_experts.1"));
  EXPECT_FALSE(is_routed_expert("model.layers.0.mlp.experts.1a"));
  EXPECT_TRUE(has_routed_experts(mixtral_tree()));
  EXPECT_FALSE(has_routed_experts(plan_test::model_for_test()));
}

// Dense parts on GPU 0 first; the experts fill what is left after the reserve, in layer order,
// then the CPU (after its own reserve), then disk.
TEST(PlanByExpert, DenseFirstThenExpertsByTheExpertWhereRoomRemains) {
  const ModelTree tree = mixtral_tree();
  const std::string budgets = "0=" + std::to_string(kDense + kReserve + 5 * kExpert + 1000) +
                              ",cpu=" + std::to_string(kReserve + 6 * kExpert + 100);
  PlanOptions options = options_for(budgets);
  std::vector<std::string> lines;
  options.verbose = [&](const std::string& line) { lines.push_back(line); };
  const DeviceMap map = infer_auto_device_map(tree, options);

  EXPECT_EQ(plan_test::validate_map(tree, map, options.max_memory), "");
  EXPECT_NO_THROW(check_device_map(tree, map));
  for (const char* dense : {"model.embed_tokens.weight", "model.layers.1.self_attn.o_proj.weight",
                            "model.layers.1.block_sparse_moe.gate.weight", "model.norm.weight", "lm_head.weight"})
    EXPECT_EQ(map.placement_of(dense), Placement::cuda(0)) << dense << "\n" << map.to_json(1);
  // 5 experts on GPU 0, 6 on the CPU, the last 5 on disk.
  for (int i = 0; i < 16; ++i) {
    const Placement want = i < 5 ? Placement::cuda(0) : i < 11 ? Placement::cpu() : Placement::disk();
    EXPECT_EQ(map.placement_of(expert(i / 8, i % 8) + ".w2.weight"), want) << expert(i / 8, i % 8);
  }
  // Keys never nest: each name has one owner, the most specific.
  for (const auto& [key, p] : map)
    for (const auto& [other, q] : map)
      EXPECT_FALSE(key != other && other.rfind(key + ".", 0) == 0) << key << " covers " << other;
  const std::string said = [&] {
    std::string all;
    for (const auto& l : lines) all += l + "\n";
    return all;
  }();
  EXPECT_NE(said.find("model.layers.0.block_sparse_moe.experts: 8 routed experts (36.0 KiB each) -> 5 on 0 3 on cpu"),
            std::string::npos)
      << said;
  EXPECT_NE(said.find("model.layers.1.block_sparse_moe.experts: 8 routed experts (36.0 KiB each) -> 3 on cpu 5 on disk"),
            std::string::npos)
      << said;

  // Accelerate's way: decoder layers whole. Layer 0 does not fit next to the embedding and head
  // plus the reserve on GPU 0, so whole layers go further away than they need to.
  options.plan_by_expert = false;
  const DeviceMap whole = infer_auto_device_map(tree, options);
  for (const auto& [key, p] : whole) EXPECT_EQ(key.find("experts"), std::string::npos) << key;
  EXPECT_EQ(plan_test::validate_map(tree, whole, options.max_memory), "");
}

// Where the whole model fits, the map is the one Accelerate gives, and cleaning merges per layer.
TEST(PlanByExpert, SameMapAsWholeLayersWhenEverythingFitsAndLayersMergeBack) {
  const ModelTree tree = mixtral_tree();
  PlanOptions options = options_for("0=10MiB,cpu=10MiB");
  const DeviceMap by_expert = infer_auto_device_map(tree, options);
  options.plan_by_expert = false;
  EXPECT_TRUE(by_expert.same_entries(infer_auto_device_map(tree, options))) << by_expert.to_json();
  EXPECT_EQ(by_expert.to_json(), R"({"":0})");

  // Room on GPU 0 for the dense parts and layer 0's experts: layer 0 merges back into one key,
  // and so do layer 1's 8 experts on the CPU.
  PlanOptions tight = options_for("0=" + std::to_string(kDense + kReserve + 8 * kExpert) + ",cpu=10MiB");
  const DeviceMap map = infer_auto_device_map(tree, tight);
  EXPECT_EQ(map.placement_of(expert(0, 7)), Placement::cuda(0)) << map.to_json(1);
  EXPECT_EQ(map.placement_of(expert(1, 0)), Placement::cpu()) << map.to_json(1);
  EXPECT_EQ(plan_test::validate_map(tree, map, tight.max_memory), "");
  EXPECT_TRUE(map.contains("model.layers.0")) << map.to_json(1);
  EXPECT_TRUE(map.contains("model.layers.1.block_sparse_moe.experts")) << map.to_json(1);
}

// The balanced strategies and the top-k reserve go through the same planner.
TEST(PlanByExpert, StrategiesAndTopKReserve) {
  const ModelTree tree = mixtral_tree();
  for (Strategy s : all_strategies()) {
    PlanOptions options = options_for("0=800KiB,1=800KiB,cpu=300KiB");
    const DeviceMap map = plan_device_map(tree, s, options);
    EXPECT_EQ(plan_test::validate_map(tree, map, options.max_memory), "") << to_string(s);
    EXPECT_NO_THROW(check_device_map(tree, map)) << to_string(s);
  }
  // Top-8 of big experts: the reserve for one token's experts (8 x 36 KiB) exceeds the embedding,
  // so fewer experts stay on GPU 0 than with top-2.
  PlanOptions top2 = options_for("0=" + std::to_string(kDense + 8 * kExpert + 5 * kExpert) + ",cpu=10MiB");
  PlanOptions top8 = top2;
  top8.experts_per_token = 8;
  auto on_gpu = [&](const DeviceMap& map) {
    int n = 0;
    for (int i = 0; i < 16; ++i) n += map.placement_of(expert(i / 8, i % 8)) == Placement::cuda(0);
    return n;
  };
  const int with_top2 = on_gpu(infer_auto_device_map(tree, top2));
  const int with_top8 = on_gpu(infer_auto_device_map(tree, top8));
  EXPECT_EQ(with_top8, 5) << "room: 13 experts - 8 reserved";
  EXPECT_GT(with_top2, with_top8);
}
