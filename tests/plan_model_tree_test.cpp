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
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
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

// ---- hostile trees (issue 13: deep nesting, shared modules, sizes that overflow) ---------------

namespace {

std::string nested_tree(int depth) {
  std::string open, close;
  for (int i = 0; i < depth; ++i) {
    open += R"({"name": "m", "class": "Block", "children": [)";
    close += "]}";
  }
  return R"({"class": "Root", "children": [)" + open + R"({"name": "leaf", "params": [{"name": "w", "shape": [2], "dtype": "float32"}]})" +
         close + "]}";
}

// `levels` modules, each registering the one below it twice (a and b): 2^levels names.
std::string doubly_shared_tree(int levels) {
  std::string node = R"({"class": "Linear", "params": [{"name": "weight", "shape": [4, 4], "dtype": "float32"}]})";
  std::string path;
  std::vector<std::string> paths;
  for (int i = 0; i < levels; ++i) paths.push_back(path = path.empty() ? "a" : path + ".a");
  for (int i = levels - 1; i >= 0; --i) {
    const std::string parent = i == 0 ? "" : paths[static_cast<size_t>(i - 1)];
    node.insert(1, R"("name": "a", )");
    node = R"({"class": "Block", "children": [)" + node + R"(, {"name": "b", "same_module_as": ")" + paths[static_cast<size_t>(i)] + R"("}]})";
  }
  return node;
}

}  // namespace

TEST(PlanModelTreeHostile, DeepNestingIsRefusedQuicklyWithoutACrash) {
  // 200 levels is deep for a model and still fine; 100,000 levels is refused by the reader's depth
  // limit before any walk (it used to copy each subtree per level, then overflow the stack).
  ModelTree ok = ModelTree::from_json(nested_tree(200));
  EXPECT_EQ(ok.tensor_count(), 1u);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_NE(error_of([] { ModelTree::from_json(nested_tree(100'000)); }).find("nests deeper than"), std::string::npos);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 5.0);
}

TEST(PlanModelTreeHostile, ModulesSharedAcrossLevelsStopWithAnErrorNotMinutes) {
  // 2^24 names: Python's named_parameters(remove_duplicate=False) would list them all.
  ModelTree small = ModelTree::from_json(doubly_shared_tree(4));
  PlanOptions options;
  options.max_memory = parse_max_memory("cpu=1GiB");
  EXPECT_EQ(plan_device_map(small, Strategy::Sequential, options).size(), 1u);
  const ModelTree huge = ModelTree::from_json(doubly_shared_tree(24));
  const auto start = std::chrono::steady_clock::now();
  const std::string message = error_of([&] { plan_device_map(huge, Strategy::Sequential, options); });
  EXPECT_NE(message.find("under more than"), std::string::npos) << message;
  EXPECT_NE(message.find("Register each shared module once"), std::string::npos) << message;
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 10.0);
}

TEST(PlanModelTreeHostile, SizesThatOverflowAreRefusedNotWrapped) {
  auto tree_with_shape = [](const std::string& shape, const std::string& dtype = "float32") {
    return R"({"class": "M", "params": [{"name": "w", "shape": )" + shape + R"(, "dtype": ")" + dtype + R"("}]})";
  };
  // 2^32 x 2^32 elements of 4 bytes used to count as 0 bytes and be planned onto a 20 GiB GPU.
  EXPECT_NE(error_of([&] { ModelTree::from_json(tree_with_shape("[4294967296, 4294967296]")); }).find("more elements than fit in 64 bits"),
            std::string::npos);
  EXPECT_NE(error_of([&] { ModelTree::from_json(tree_with_shape("[4611686018427387904]")); }).find("too large"),
            std::string::npos);
  EXPECT_NE(error_of([&] { ModelTree::from_json(tree_with_shape("[3.5]")); }).find("must be integers, got 3.5"),
            std::string::npos);
  EXPECT_NE(error_of([&] { ModelTree::from_json(tree_with_shape("[-2]")); }).find("must be non-negative, got -2"),
            std::string::npos);
  const std::string two_to_64 = error_of([&] { ModelTree::from_json(tree_with_shape("[18446744073709551616]")); });
  EXPECT_EQ(two_to_64.find("negative"), std::string::npos) << two_to_64;
  EXPECT_NE(two_to_64.find("64 bits"), std::string::npos) << two_to_64;
  // The same bounds hold for trees built in code.
  ModelTree tree;
  EXPECT_NE(error_of([&] { tree.add_param(tree.root(), "w", {int64_t(1) << 62, 4}, c10::ScalarType::Float); })
                .find("more elements than fit in 64 bits"),
            std::string::npos);
}

TEST(PlanModelTreeHostile, TreeFilesThatAreNotFilesSayWhatTheyAre) {
  const std::string dir = std::filesystem::temp_directory_path() / ("ferry_tree_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  EXPECT_NE(error_of([&] { ModelTree::from_json_file(dir); }).find("is a directory, not a file"), std::string::npos);
  const std::string fifo = dir + "/tree.json";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_NE(error_of([&] { ModelTree::from_json_file(fifo); }).find("is a FIFO, not a file"), std::string::npos);
  const std::string loop = dir + "/loop.json";
  std::filesystem::create_symlink(loop, loop);
  EXPECT_NE(error_of([&] { ModelTree::from_json_file(loop); }).find("symbolic links that loop"), std::string::npos);
  std::filesystem::remove_all(dir);
}
