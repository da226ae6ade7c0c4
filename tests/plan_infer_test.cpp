// infer_auto_device_map, plan_device_map, get_balanced_memory, check/clean_device_map: the
// behaviours the conformance file cannot show (logs, explanations, errors, ferry's fixes).
#include "ferry/core/error.h"
#include "ferry/core/log.h"
#include "ferry/plan/balanced_memory.h"
#include "ferry/plan/check_device_map.h"
#include "ferry/plan/infer_device_map.h"
#include "ferry/plan/module_sizes.h"
#include "ferry/plan/tied_parameters.h"
#include "plan_test_util.h"

#include <gtest/gtest.h>

using namespace ferry;
using plan_test::model_for_test;

namespace {

MaxMemory mm(const std::string& text) { return parse_max_memory(text); }

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

// IADM-C1's model: ModelForTest with an extra buffer per module.
ModelTree model_with_buffers() {
  ModelTree tree = model_for_test();
  const auto& kids = tree.module(tree.root()).children;
  ModuleId l1 = kids[0].module, bn = kids[1].module, l2 = kids[2].module;
  tree.add_buffer(l1, "test_buffer1", {10, 2}, c10::ScalarType::Float);
  tree.add_buffer(bn, "test_buffer2", {10, 3}, c10::ScalarType::Float);
  tree.add_buffer(l2, "test_buffer3", {10, 3}, c10::ScalarType::Float);
  return tree;
}

}  // namespace

TEST(PlanInfer, WorkedExampleOfTheHeader) {
  ModelTree tree = model_for_test();
  PlanOptions options;
  options.max_memory = mm("0=200,1=200");
  std::vector<std::string> lines;
  options.verbose = [&](const std::string& line) { lines.push_back(line); };
  DeviceMap map = infer_auto_device_map(tree, options);
  EXPECT_EQ(map, (DeviceMap{{"linear1", Placement::cuda(0)}, {"batchnorm", Placement::cuda(1)}, {"linear2", Placement::cuda(1)}}));
  std::string all;
  for (const auto& l : lines) all += l + "\n";
  EXPECT_NE(all.find("Putting linear1 (64 B) on 0"), std::string::npos) << all;
  EXPECT_NE(all.find("(100 B kept for the largest layer)"), std::string::npos) << all;
  EXPECT_NE(all.find("Not enough space on 0 for batchnorm (72 B"), std::string::npos) << all;
  EXPECT_NE(all.find("moving on to 1"), std::string::npos) << all;
}

TEST(PlanInfer, BufferWarningAsAccelerate) {
  ModelTree tree = model_with_buffers();
  {
    ScopedLogCapture capture;
    PlanOptions options;
    options.max_memory = mm("0=400,cpu=1GB");
    DeviceMap map = infer_auto_device_map(tree, options);
    EXPECT_EQ(map.to_json(), R"({"linear1":0,"batchnorm":"cpu","linear2":"cpu"})");
    EXPECT_TRUE(capture.contains(LogLevel::Warning, "Current model requires 280 bytes of buffer for offloaded layers"));
  }
  {
    ScopedLogCapture capture;
    PlanOptions options;
    options.max_memory = mm("0=400,cpu=1GB");
    options.offload_buffers = true;
    infer_auto_device_map(tree, options);
    EXPECT_FALSE(capture.contains("bytes of buffer"));
  }
}

TEST(PlanInfer, InsufficientMemoryIsAnInfoLine) {
  // IADM-D1: nothing fits GPU 0.
  ModelTree tree("Sequential");
  ModuleId seq = tree.add_submodule(tree.root(), "module", "Sequential");
  for (auto [name, out, in] : {std::tuple{"linear1", 4, 10}, {"linear2", 4, 4}, {"linear3", 8, 4}}) {
    ModuleId l = tree.add_submodule(seq, name, "Linear");
    tree.add_param(l, "weight", {out, in}, c10::ScalarType::Float);
    tree.add_param(l, "bias", {out}, c10::ScalarType::Float);
  }
  ScopedLogCapture capture;
  PlanOptions options;
  options.max_memory = mm("0=256");
  EXPECT_EQ(infer_auto_device_map(tree, options).to_json(), R"({"":"disk"})");
  EXPECT_TRUE(capture.contains(LogLevel::Info, "no modules could be assigned to the following devices due to insufficient memory"));
  EXPECT_TRUE(capture.contains(LogLevel::Info, "  - 0: 336 bytes required"));
  options.fallback_allocation = true;
  EXPECT_EQ(infer_auto_device_map(tree, options).to_json(),
            R"({"module.linear2":0,"module.linear1":"disk","module.linear3":"disk"})");
}

TEST(PlanInfer, DirectBuffersOfASplitModuleGetAPlacement) {
  // Accelerate drops `block.scale` when it splits `block` (defect 9.2); ferry keeps it.
  ModelTree tree("Model");
  ModuleId block = tree.add_submodule(tree.root(), "block", "Block");
  tree.add_buffer(block, "scale", {16}, c10::ScalarType::Float);
  for (const char* name : {"a", "b"}) {
    ModuleId l = tree.add_submodule(block, name, "Linear");
    tree.add_param(l, "weight", {10, 10}, c10::ScalarType::Float);
  }
  ModuleId head = tree.add_submodule(tree.root(), "head", "Linear");
  tree.add_param(head, "weight", {10, 10}, c10::ScalarType::Float);
  PlanOptions options;
  options.max_memory = mm("0=900,cpu=1000");
  options.clean_result = false;
  DeviceMap map = infer_auto_device_map(tree, options);
  EXPECT_TRUE(map.placement_of("block.scale").has_value()) << map.to_json();
  EXPECT_TRUE(uncovered_tensor_names(tree, map).empty()) << map.to_json();
  EXPECT_NO_THROW(check_device_map(tree, map));
  EXPECT_EQ(plan_test::validate_map(tree, map, options.max_memory), "");
  EXPECT_TRUE(map.contains("block.a")) << "block must have been split: " << map.to_json();
}

TEST(PlanInfer, SharedModuleNamesFollowTheirTensors) {
  // Sequential(layer, layer): "1" is the same module as "0" (Accelerate raises IndexError).
  ModelTree tree("Sequential");
  ModuleId layer = tree.add_submodule(tree.root(), "0", "Linear");
  tree.add_param(layer, "weight", {10, 10}, c10::ScalarType::Float);
  tree.add_child(tree.root(), "1", layer);
  ModuleId other = tree.add_submodule(tree.root(), "2", "Linear");
  tree.add_param(other, "weight", {10, 10}, c10::ScalarType::Float);
  PlanOptions options;
  options.max_memory = mm("0=500,cpu=1000");
  DeviceMap map = infer_auto_device_map(tree, options);
  EXPECT_EQ(map.placement_of("1.weight"), map.placement_of("0.weight")) << map.to_json();
  EXPECT_EQ(plan_test::validate_map(tree, map, options.max_memory), "");
  EXPECT_EQ(find_tied_parameters(tree), (std::vector<std::vector<std::string>>{{"0.weight", "1.weight"}}));
}

TEST(PlanInfer, TiedGroupsMoveAsAUnitTransitively) {
  // a.w is tied to b.w; b.v is tied to c.v: a, b and c must share a device.
  ModelTree tree("M");
  auto linear = [&](const char* name) { return tree.add_submodule(tree.root(), name, "Pair"); };
  ModuleId a = linear("a"), b = linear("b"), c = linear("c"), d = linear("d");
  TensorId w = tree.add_param(a, "w", {10, 10}, c10::ScalarType::Float);
  tree.add_param_slot(b, "w", w);
  TensorId v = tree.add_param(b, "v", {10, 10}, c10::ScalarType::Float);
  tree.add_param_slot(c, "v", v);
  tree.add_param(d, "w", {30, 10}, c10::ScalarType::Float);
  PlanOptions options;
  options.max_memory = mm("0=2000,1=2000");
  DeviceMap map = infer_auto_device_map(tree, options);
  EXPECT_EQ(plan_test::validate_map(tree, map, options.max_memory), "") << map.to_json();
  EXPECT_EQ(map.placement_of("a.w"), map.placement_of("c.v")) << map.to_json();
}

TEST(PlanInfer, EveryBudgetIsValidatedWithAMessage) {
  ModelTree tree = model_for_test();
  PlanOptions options;
  options.max_memory = {{Placement::meta(), 10}};
  EXPECT_NE(error_of([&] { infer_auto_device_map(tree, options); }).find("Device meta is not recognized"), std::string::npos);
  options.max_memory = {{Placement::cuda(0), -5}};
  EXPECT_NE(error_of([&] { infer_auto_device_map(tree, options); }).find("the budget of cuda:0 is negative (-5 bytes)"),
            std::string::npos);
  options.max_memory = {{Placement::cpu(), 5}, {Placement::cpu(), 6}};
  EXPECT_NE(error_of([&] { infer_auto_device_map(tree, options); }).find("device cpu has two budgets"), std::string::npos);
  EXPECT_NE(error_of([] { parse_max_memory(""); }).find("empty max memory"), std::string::npos);
}

TEST(PlanInfer, MaxMemoryIsSortedAndDetected) {
  EXPECT_EQ(mm("cpu=1GiB,1=2GiB,disk=5,0=100"),
            (MaxMemory{{Placement::cuda(0), 100}, {Placement::cuda(1), 2LL << 30}, {Placement::cpu(), 1LL << 30},
                       {Placement::disk(), 5}}));
  MaxMemory detected = get_max_memory();
  ASSERT_FALSE(detected.empty());
  EXPECT_EQ(detected.back().device, Placement::cpu());
  EXPECT_GT(detected.back().bytes, 0);
}

TEST(PlanInfer, StrategiesAsLoadCheckpointAndDispatch) {
  ModelTree tree = model_for_test();
  PlanOptions options;
  options.max_memory = mm("0=300,1=300");
  // balanced: GPU 0 lowered to 215 -> linear1 + batchnorm (136) fit next to the 100 B reservation? 136 + 100 > 215
  EXPECT_EQ(plan_device_map(tree, Strategy::Sequential, options).to_json(), R"({"":0})");
  EXPECT_EQ(get_balanced_memory(tree, options.max_memory), mm("0=215,1=300"));
  DeviceMap balanced = plan_device_map(tree, Strategy::Balanced, options);
  EXPECT_EQ(balanced.to_json(), R"({"linear1":0,"batchnorm":1,"linear2":1})");
  EXPECT_EQ(plan_device_map(tree, Strategy::Auto, options), balanced);
  EXPECT_EQ(get_balanced_memory(tree, mm("0=300,1=300,2=300"), {}, {}, true), mm("0=0,1=215,2=300"));
  EXPECT_EQ(parse_strategy("balanced_low_0"), Strategy::BalancedLow0);
  EXPECT_NE(error_of([] { parse_strategy("greedy"); }).find("please choose 'auto', 'balanced', 'balanced_low_0' or 'sequential'"),
            std::string::npos);
}

TEST(PlanInfer, CheckDeviceMapMessages) {
  ModelTree tree = model_for_test();
  EXPECT_EQ(error_of([&] { check_device_map(tree, DeviceMap{{"linear1", Placement::cuda(0)}, {"linear2", Placement::cuda(1)}}); }),
            "[check_device_map] The device_map provided does not give any device for the following parameters: "
            "batchnorm.weight, batchnorm.bias, batchnorm.running_mean, batchnorm.running_var, batchnorm.num_batches_tracked");
  ScopedLogCapture capture;
  check_device_map(tree, DeviceMap{{"", Placement::cpu()}, {"invalid_module", Placement::cuda(0)}, {"another_invalid", Placement::cuda(1)}});
  EXPECT_TRUE(capture.contains(LogLevel::Warning,
                               "The following device_map keys do not match any submodules in the model: ['invalid_module', "
                               "'another_invalid']"));
}

TEST(PlanInfer, CleanDeviceMapAsAccelerate) {
  // Accelerate's test_clean_device_map.
  DeviceMap all{{"a", Placement::cuda(0)}, {"b", Placement::cuda(0)}, {"c", Placement::cuda(0)}};
  EXPECT_EQ(clean_device_map(all).to_json(), R"({"":0})");
  DeviceMap level1{{"a", Placement::cuda(0)}, {"b", Placement::cuda(0)}, {"c", Placement::cuda(1)}};
  EXPECT_EQ(clean_device_map(level1), level1);  // no parent shared by equal siblings but the root
  DeviceMap level2{{"a.x", Placement::cuda(0)}, {"a.y", Placement::cuda(0)}, {"b.x", Placement::cuda(1)},
                   {"b.y", Placement::cuda(1)}, {"c", Placement::cuda(1)}};
  EXPECT_EQ(clean_device_map(level2).to_json(), R"({"c":1,"a":0,"b":1})");
  DeviceMap deeper{{"a.x.1", Placement::cuda(0)}, {"a.x.2", Placement::cuda(0)}, {"a.y", Placement::cpu()}};
  EXPECT_EQ(clean_device_map(deeper).to_json(), R"({"a.y":"cpu","a.x":0})");
  DeviceMap single{{"a.x", Placement::cuda(0)}, {"b", Placement::cpu()}};
  EXPECT_EQ(clean_device_map(single), single);  // one key under "a" is not merged
  EXPECT_EQ(clean_device_map(level2, "a").to_json(), R"({"b.x":1,"b.y":1,"c":1,"a":0})");
}

TEST(PlanInfer, MaxLayerAndSizesApi) {
  ModelTree tree = model_for_test();
  MaxLayer layer = get_max_layer_size(tree);
  EXPECT_EQ(layer.bytes(), 100);
  EXPECT_EQ(layer.names, std::vector<std::string>{"linear2"});
  MaxLayer whole = get_max_layer_size(tree, NoSplitRules{{"ModelForTest"}, {}});
  EXPECT_EQ(whole.bytes(), 100);  // the root is never a layer
  SizeOptions half;
  half.dtype = c10::ScalarType::Half;
  ModuleSizes sizes = compute_module_sizes(tree, half);
  EXPECT_EQ(sizes.bytes(""), 122);
  EXPECT_EQ(sizes.bytes("batchnorm.num_batches_tracked"), 8);  // integers are never converted
  EXPECT_EQ(sizes.bytes("no.such.module"), 0);
  ModelTree flags("M");
  flags.add_buffer(flags.root(), "mask", {3}, c10::ScalarType::Bool);
  EXPECT_EQ(compute_module_total_buffer_size(flags), 0.375);
  EXPECT_TRUE(module_name_matches("model.layers.*", "model.layers.12"));
  EXPECT_FALSE(module_name_matches("model.layers.*", "model.layers.12.mlp"));
  EXPECT_TRUE(module_name_matches("*.experts.?", "mlp.experts.7"));
  EXPECT_FALSE(module_name_matches("*.experts.?", "mlp.experts.17"));
}
