// ModelTree and its sources: JSON tree format, dotted names, checkpoints, ferry::Module,
// torch::nn::Module.
#include "ferry/core/error.h"
#include "ferry/nn/init_on_device.h"
#include "ferry/nn/layers.h"
#include "ferry/nn/module.h"
#include "ferry/plan/checkpoint_tree.h"
#include "ferry/plan/infer_device_map.h"
#include "ferry/plan/model_tree.h"
#include "ferry/plan/module_sizes.h"
#include "ferry/plan/module_tree.h"
#include "ferry/plan/tied_parameters.h"
#include "plan_test_util.h"

#include <gtest/gtest.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>

using namespace ferry;

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST(PlanModelTree, JsonFormatWithTiesNoneAndSharedModules) {
  ModelTree tree = ModelTree::from_json(R"({"name": "", "class": "Model", "children": [
      {"name": "a", "class": "Linear", "params": [{"name": "weight", "shape": [2, 3], "dtype": "float16"}, {"name": "bias"}],
       "buffers": [{"name": "mask", "shape": [8], "dtype": "bool", "persistent": false}]},
      {"name": "b", "class": "Linear", "params": [{"name": "weight", "tied_to": "a.weight"}]},
      {"name": "c", "same_module_as": "a"}]})");
  EXPECT_EQ(tree.module_count(), 3u);
  EXPECT_EQ(tree.tensor_count(), 2u);
  const TreeModule& a = tree.module(tree.module(tree.root()).children[0].module);
  EXPECT_EQ(a.class_name, "Linear");
  EXPECT_EQ(a.params[1].tensor, kNoTensor);
  EXPECT_FALSE(a.buffers[0].persistent);
  EXPECT_EQ(tree.module(tree.root()).children[2].module, tree.module(tree.root()).children[0].module);
  ModuleSizes sizes = compute_module_sizes(tree);
  EXPECT_EQ(sizes.bytes(""), 13);  // 6 halfs + 8 bools, each tensor once
  EXPECT_EQ(sizes.bytes("b"), 0);
  auto groups = find_tied_parameters(tree);
  ASSERT_EQ(groups.size(), 1u);
  EXPECT_EQ(groups[0], (std::vector<std::string>{"a.weight", "b.weight", "c.weight"}));
}

TEST(PlanModelTree, JsonErrorsSayWhere) {
  EXPECT_NE(error_of([] { ModelTree::from_json("{"); }).find("invalid model tree JSON"), std::string::npos);
  EXPECT_NE(error_of([] { ModelTree::from_json("[]"); }).find("must be a JSON object"), std::string::npos);
  EXPECT_NE(error_of([] {
              ModelTree::from_json(R"({"class": "M", "params": [{"name": "w", "tied_to": "x.w"}]})");
            }).find("parameter 'w' is tied to 'x.w', which is not an earlier parameter or buffer"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              ModelTree::from_json(R"({"class": "M", "children": [{"name": "a", "same_module_as": "b"}]})");
            }).find("module 'a' is the same module as 'b'"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              ModelTree::from_json(R"({"class": "M", "params": [{"name": "w", "shape": [2], "dtype": "float99"}]})");
            }).find("unknown dtype 'float99'"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              ModelTree::from_json(R"({"class": "M", "params": [{"name": "w", "shape": [2], "dtype": "float32"},
                                                                 {"name": "w", "shape": [2], "dtype": "float32"}]})");
            }).find("the root module uses the name 'w' twice"),
            std::string::npos);
  EXPECT_NE(error_of([] { ModelTree::from_json(R"({"class": "M", "params": [{"shape": [2]}]})"); }).find("malformed model tree"),
            std::string::npos);
  EXPECT_NE(error_of([] { ModelTree::from_json_file("/nonexistent.json"); }).find("[ModelTree::from_json_file] /nonexistent.json: does not exist"),
            std::string::npos);
}

TEST(PlanModelTree, ValidateRejectsCyclesAndDots) {
  ModelTree tree("M");
  ModuleId a = tree.add_submodule(tree.root(), "a", "A");
  tree.add_child(a, "back", a);
  EXPECT_NE(error_of([&] { tree.validate(); }).find("module 'a.back' contains itself"), std::string::npos);
  ModelTree dotted("M");
  dotted.add_param(dotted.root(), "a.b", {1}, c10::ScalarType::Float);
  EXPECT_NE(error_of([&] { dotted.validate(); }).find("local names cannot contain '.'"), std::string::npos);
}

TEST(PlanModelTree, DottedNamesInNaturalOrder) {
  std::vector<NamedTreeTensor> names;
  for (const char* n : {"model.layers.10.w", "model.layers.2.w", "lm_head.weight", "model.layers.2.b", "model.norm.weight"})
    names.push_back({n, TreeTensor{{4}, c10::ScalarType::Float}});
  ModelTree tree = model_tree_from_named_tensors(names);
  ModuleSizes sizes = compute_module_sizes(tree);
  std::vector<std::string> order;
  for (const auto& [name, bits] : sizes.entries()) order.push_back(name);
  EXPECT_EQ(order, (std::vector<std::string>{"", "lm_head", "lm_head.weight", "model", "model.layers", "model.layers.2",
                                             "model.layers.2.b", "model.layers.2.w", "model.layers.10", "model.layers.10.w",
                                             "model.norm", "model.norm.weight"}));
  EXPECT_TRUE(natural_name_less("layers.9", "layers.10"));
  EXPECT_FALSE(natural_name_less("layers.10", "layers.9"));
  EXPECT_TRUE(natural_name_less("a", "a.b"));
  names.push_back({"model.norm", TreeTensor{{4}, c10::ScalarType::Float}});
  EXPECT_NE(error_of([&] { model_tree_from_named_tensors(names); }).find("'model.norm' is both a tensor and a module"),
            std::string::npos);
  EXPECT_NE(error_of([] { model_tree_from_named_tensors({{"a..b", TreeTensor{}}}); }).find("empty component"),
            std::string::npos);
  EXPECT_NE(error_of([] { model_tree_from_named_tensors({{"a", TreeTensor{}}, {"a", TreeTensor{}}}); }).find("appears twice"),
            std::string::npos);
}

TEST(PlanModelTree, CheckpointHeadersOnly) {
  LoadedModelTree m = load_checkpoint_tree(std::string(FERRY_TEST_DATA_DIR) + "/tiny_llama");
  EXPECT_TRUE(m.from_checkpoint);
  EXPECT_EQ(m.tree.tensor_count(), 30u);
  PlanOptions options;
  options.max_memory = parse_max_memory("0=1MiB,1=1MiB,cpu=1MiB");
  options.no_split.patterns = {"model.layers.*"};
  options.sizes.dtype = c10::ScalarType::Half;
  DeviceMap map = plan_device_map(m.tree, Strategy::Balanced, options);
  EXPECT_EQ(map.to_json(), R"({"lm_head":0,"model.embed_tokens":0,"model.layers.0":1,"model.layers.1":1,"model.layers.2":"cpu","model.norm":"cpu"})");
  EXPECT_EQ(plan_test::validate_map(m.tree, map, options.max_memory, options.sizes), "");
  EXPECT_NE(error_of([] { load_checkpoint_tree(FERRY_TEST_DATA_DIR); }).find(std::string("cannot plan from '") + FERRY_TEST_DATA_DIR),
            std::string::npos);
}

TEST(PlanModelTree, FromFerryModuleKeepsClassesTiesAndPersistence) {
  auto guard = init_empty_weights(/*include_buffers=*/true);  // meta tensors: no memory, sizes still known
  auto root = std::make_shared<Sequential>();
  auto l1 = std::make_shared<Linear>(3, 4);
  auto bn = std::make_shared<BatchNorm1d>(4);
  auto l2 = std::make_shared<Linear>(4, 5);
  root->push_back(l1);
  root->push_back(bn);
  root->push_back(l2);
  root->push_back(l1);  // the same module again
  bn->register_buffer("mask", at::empty({8}, at::TensorOptions().dtype(at::kBool).device(at::kMeta)), false);
  ModelTree tree = model_tree_from_module(*root);
  EXPECT_EQ(tree.module(tree.root()).class_name, "Sequential");
  EXPECT_EQ(tree.module(tree.module(tree.root()).children[0].module).class_name, "Linear");
  EXPECT_EQ(tree.module(tree.root()).children[3].module, tree.module(tree.root()).children[0].module);
  const TreeModule& bn_node = tree.module(tree.module(tree.root()).children[1].module);
  EXPECT_FALSE(bn_node.buffers.back().persistent);
  EXPECT_EQ(compute_module_sizes(tree).bytes(""), 236 + 1);
  EXPECT_EQ(find_tied_parameters(tree), (std::vector<std::vector<std::string>>{{"0.weight", "3.weight"}, {"0.bias", "3.bias"}}));
  PlanOptions options;
  options.max_memory = parse_max_memory("0=200,1=200");
  DeviceMap map = infer_auto_device_map(tree, options);
  EXPECT_EQ(plan_test::validate_map(tree, map, options.max_memory), "") << map.to_json();
  EXPECT_EQ(map.placement_of("3.weight"), map.placement_of("0.weight"));
}

TEST(PlanModelTree, FromTorchModuleWithSharedTensors) {
  torch::nn::Sequential seq(torch::nn::Linear(3, 4), torch::nn::BatchNorm1d(4), torch::nn::Linear(4, 5));
  ModelTree tree = model_tree_from_torch_module(*seq);
  EXPECT_EQ(tree.module(tree.root()).class_name, "Sequential");
  EXPECT_EQ(tree.module(tree.module(tree.root()).children[0].module).class_name, "Linear");
  EXPECT_EQ(tree.module(tree.module(tree.root()).children[1].module).class_name, "BatchNorm1d");
  EXPECT_EQ(compute_module_sizes(tree).bytes(""), 236);
  EXPECT_TRUE(find_tied_parameters(tree).empty());
  // One tensor object registered in two modules, and one module registered twice.
  auto root = std::make_shared<torch::nn::Module>("Net");
  auto a = std::make_shared<torch::nn::Module>("Block");
  auto b = std::make_shared<torch::nn::Module>("Block");
  at::Tensor w = torch::empty({4, 3});
  a->register_parameter("w", w);
  b->register_parameter("w", w);
  b->register_buffer("stats", torch::empty({2}));
  root->register_module("a", a);
  root->register_module("b", b);
  root->register_module("b_again", b);
  ModelTree tied = model_tree_from_torch_module(*root);
  EXPECT_EQ(tied.module(tied.root()).class_name, "Net");
  EXPECT_EQ(tied.module_count(), 3u);
  EXPECT_EQ(find_tied_parameters(tied), (std::vector<std::vector<std::string>>{{"a.w", "b.w", "b_again.w"}}));
  EXPECT_EQ(compute_module_sizes(tied).bytes(""), 48 + 8);
  EXPECT_EQ(python_class_name("torch::nn::LinearImpl"), "Linear");
  EXPECT_EQ(python_class_name("MyBlock"), "MyBlock");
}
