// nn/module_tensors.h: set_module_tensor_to_device, named_module_tensors, non-persistent buffers,
// find_tied_parameters, retie_parameters (Accelerate's test_modeling_utils, CPU-portable part).
#include "ferry/nn/init_on_device.h"
#include "ferry/nn/layers.h"
#include "ferry/nn/module_tensors.h"
#include "ferry/plan/tied_parameters.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "test_models.h"
#include "test_util.h"

#include <algorithm>
#include <fstream>

namespace {

using ferry_test::error_of;
using ferry_test::find_named;
using ferry_test::has;
using ferry_test::LinearWithNonPersistentBuffers;
using ferry_test::ModelForTest;
using ferry_test::names_of;
using Names = std::vector<std::string>;
using Groups = std::vector<std::vector<std::string>>;

const c10::Device kCpu(c10::kCPU);
const c10::Device kMeta(c10::kMeta);

// ---- set_module_tensor_to_device -------------------------------------------------------------

TEST(ModuleTensorsTest, SetModuleTensorToMetaAndCpu) {
  // Accelerate's test_set_module_tensor_to_meta_and_cpu, parameter and buffer, short and dotted names.
  ModelForTest model;
  // Through the sub-module and the short name.
  ferry::set_module_tensor_to_device(*model.linear1, "weight", kMeta);
  EXPECT_TRUE(model.linear1->weight->is_meta());
  EXPECT_EQ(model.linear1->weight->sizes(), (std::vector<int64_t>{4, 3}));
  std::string no_value = error_of([&] { ferry::set_module_tensor_to_device(*model.linear1, "weight", kCpu); });
  EXPECT_EQ(no_value,
            "[set_module_tensor_to_device] 'weight' is on the meta device; a value is needed to put it on cpu (load it "
            "from the checkpoint or the offload folder)");
  at::Tensor w = at::randn({4, 3});
  ferry::set_module_tensor_to_device(*model.linear1, "weight", kCpu, w);
  EXPECT_EQ(model.linear1->weight->device(), kCpu);
  EXPECT_TRUE(at::equal(model.linear1->weight.get(), w));

  // Through the root and the dotted name.
  ferry::set_module_tensor_to_device(model, "linear1.weight", kMeta);
  EXPECT_TRUE(model.linear1->weight->is_meta());
  std::string dotted = error_of([&] { ferry::set_module_tensor_to_device(model, "linear1.weight", kCpu); });
  EXPECT_TRUE(has(dotted, "'linear1.weight' is on the meta device; a value is needed to put it on cpu")) << dotted;
  ferry::set_module_tensor_to_device(model, "linear1.weight", kCpu, at::randn({4, 3}));
  EXPECT_EQ(model.linear1->weight->device(), kCpu);

  // A buffer, both ways.
  ferry::set_module_tensor_to_device(*model.batchnorm, "running_mean", kMeta);
  EXPECT_TRUE(model.batchnorm->running_mean->is_meta());
  EXPECT_TRUE(model.batchnorm->has_buffer("running_mean"));
  EXPECT_FALSE(error_of([&] { ferry::set_module_tensor_to_device(*model.batchnorm, "running_mean", kCpu); }).empty());
  at::Tensor m = at::randn({4});
  ferry::set_module_tensor_to_device(*model.batchnorm, "running_mean", kCpu, m);
  EXPECT_TRUE(at::equal(model.batchnorm->running_mean.get(), m));
  ferry::set_module_tensor_to_device(model, "batchnorm.running_mean", kMeta);
  EXPECT_TRUE(model.batchnorm->running_mean->is_meta());
  ferry::set_module_tensor_to_device(model, "batchnorm.running_mean", kCpu, m);
  EXPECT_EQ(model.batchnorm->running_mean->device(), kCpu);

  // The model runs again with real weights everywhere.
  EXPECT_EQ(model(at::randn({2, 3})).sizes(), (std::vector<int64_t>{2, 5}));
}

TEST(ModuleTensorsTest, SetModuleTensorSetsDtype) {
  ModelForTest model;
  at::Tensor w = model.linear1->weight.get();
  ferry::set_module_tensor_to_device(model, "linear1.weight", kCpu, w, at::kHalf);
  EXPECT_EQ(model.linear1->weight->scalar_type(), at::kHalf);
  EXPECT_TRUE(at::equal(model.linear1->weight.get(), w.to(at::kHalf)));

  // Without dtype a value is cast to the slot's dtype.
  ferry::set_module_tensor_to_device(model, "linear2.weight", kCpu, at::ones({5, 4}, at::kDouble));
  EXPECT_EQ(model.linear2->weight->scalar_type(), at::kFloat);
  // An integer value is never cast to a floating dtype.
  ferry::set_module_tensor_to_device(model, "batchnorm.num_batches_tracked", kCpu, at::scalar_tensor(7, at::kLong),
                                     at::kHalf);
  EXPECT_EQ(model.batchnorm->num_batches_tracked->scalar_type(), at::kLong);
  EXPECT_EQ(model.batchnorm->num_batches_tracked->item<int64_t>(), 7);
  // Moving to meta with a dtype gives a meta tensor of that dtype (integer tensors keep theirs).
  ferry::set_module_tensor_to_device(model, "linear2.bias", kMeta, c10::nullopt, at::kBFloat16);
  EXPECT_TRUE(model.linear2->bias->is_meta());
  EXPECT_EQ(model.linear2->bias->scalar_type(), at::kBFloat16);
  ferry::set_module_tensor_to_device(model, "batchnorm.num_batches_tracked", kMeta, c10::nullopt, at::kHalf);
  EXPECT_EQ(model.batchnorm->num_batches_tracked->scalar_type(), at::kLong);
}

TEST(ModuleTensorsTest, SetModuleTensorChecksShape) {
  ModelForTest model;
  std::string msg = error_of(
      [&] { ferry::set_module_tensor_to_device(model, "linear1.weight", kCpu, at::zeros({2, 2})); });
  // Accelerate: 'Trying to set a tensor of shape torch.Size([2, 2]) in "weight" (which has shape
  // torch.Size([4, 3])), this looks incorrect.' ferry prints shapes as [2, 2] and the full name.
  EXPECT_EQ(msg,
            "[set_module_tensor_to_device] Trying to set a tensor of shape [2, 2] in \"linear1.weight\" (which has "
            "shape [4, 3]), this looks incorrect.");
  std::string short_name =
      error_of([&] { ferry::set_module_tensor_to_device(*model.linear1, "weight", kCpu, at::zeros({2, 2})); });
  EXPECT_EQ(short_name,
            "[set_module_tensor_to_device] Trying to set a tensor of shape [2, 2] in \"weight\" (which has shape "
            "[4, 3]), this looks incorrect.");
  EXPECT_EQ(model.linear1->weight->sizes(), (std::vector<int64_t>{4, 3}));  // untouched
}

TEST(ModuleTensorsTest, SetModuleTensorRejectsUnknownNames) {
  ModelForTest model;
  std::string leaf = error_of([&] { ferry::set_module_tensor_to_device(model, "linear1.weights", kMeta); });
  EXPECT_EQ(leaf, "[resolve_tensor_owner] 'linear1.weights': the Linear at 'linear1' has no parameter or buffer named "
                  "'weights'");
  std::string root = error_of([&] { ferry::set_module_tensor_to_device(model, "weight", kMeta); });
  EXPECT_EQ(root, "[resolve_tensor_owner] 'weight': the ModelForTest has no parameter or buffer named 'weight'");
  std::string path = error_of([&] { ferry::set_module_tensor_to_device(model, "linear3.weight", kMeta); });
  EXPECT_EQ(path,
            "[submodule] module '<root>' (ModelForTest) has no submodule named 'linear3' (looking up 'linear3')");
  std::string none = error_of([] {
    ferry::Linear l(2, 2, /*bias=*/false);
    ferry::set_module_tensor_to_device(l, "bias", kMeta);
  });
  EXPECT_EQ(none, "[set_module_tensor_to_device] 'bias' is registered as None; give a value to set it");
}

TEST(ModuleTensorsTest, SetModuleTensorKeepsRequiresGradAndReplacesTheSlot) {
  ModelForTest model;
  model.linear1->weight->set_requires_grad(true);
  at::Tensor before = model.linear1->weight.get();
  ferry::set_module_tensor_to_device(model, "linear1.weight", kMeta);
  EXPECT_TRUE(model.linear1->weight->requires_grad());
  ferry::set_module_tensor_to_device(model, "linear1.weight", kCpu, at::randn({4, 3}, at::kDouble));
  EXPECT_TRUE(model.linear1->weight->requires_grad());
  EXPECT_TRUE(model.linear1->weight->is_leaf());
  EXPECT_FALSE(model.linear1->weight->is_same(before));
  // A value that requires grad does not make a frozen slot trainable.
  ferry::set_module_tensor_to_device(model, "linear2.weight", kCpu, at::randn({5, 4}).requires_grad_());
  EXPECT_FALSE(model.linear2->weight->requires_grad());
  // Already on the device and no value: the object (and any tie through it) is kept.
  at::Tensor b = model.linear2->bias.get();
  ferry::set_module_tensor_to_device(model, "linear2.bias", kCpu);
  EXPECT_TRUE(model.linear2->bias->is_same(b));
  // A CPU value of the right dtype goes in as is, without a copy.
  at::Tensor v = at::randn({5});
  ferry::set_module_tensor_to_device(model, "linear2.bias", kCpu, v);
  EXPECT_TRUE(model.linear2->bias->is_same(v));
}

TEST(ModuleTensorsTest, SetModuleTensorFillsAnEmptyModel) {
  ModelForTest twin;
  std::shared_ptr<ModelForTest> model;
  {
    auto guard = ferry::init_empty_weights();
    model = std::make_shared<ModelForTest>();
  }
  for (const auto& [name, t] : twin.state_dict()) ferry::set_module_tensor_to_device(*model, name, kCpu, t);
  for (const auto& [name, t] : model->state_dict()) EXPECT_FALSE(t.is_meta()) << name;
  at::Tensor x = at::randn({2, 3});
  EXPECT_TRUE(at::allclose((*model)(x), twin(x)));
}

// ---- named_module_tensors / get_non_persistent_buffers ----------------------------------------

TEST(ModuleTensorsTest, NamedTensors) {
  ferry::BatchNorm1d bn(4);
  EXPECT_EQ(names_of(ferry::named_module_tensors(bn)),
            (Names{"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}));
  EXPECT_EQ(names_of(ferry::named_module_tensors(bn, /*include_buffers=*/false)), (Names{"weight", "bias"}));

  ModelForTest model;
  EXPECT_EQ(names_of(ferry::named_module_tensors(model)), Names{});
  EXPECT_EQ(names_of(ferry::named_module_tensors(model, true, /*recurse=*/true)),
            (Names{"linear1.weight", "linear1.bias", "batchnorm.weight", "batchnorm.bias", "linear2.weight",
                   "linear2.bias", "batchnorm.running_mean", "batchnorm.running_var",
                   "batchnorm.num_batches_tracked"}));

  LinearWithNonPersistentBuffers np(10, 10);
  EXPECT_EQ(names_of(ferry::named_module_tensors(np)), (Names{"weight", "bias"}));
  EXPECT_EQ(names_of(ferry::named_module_tensors(np, true, false, /*remove_non_persistent=*/true)), (Names{"weight"}));
}

TEST(ModuleTensorsTest, GetNonPersistentBuffersDoesNotMutateModule) {
  ferry::Module root("Root");
  root.register_buffer("buf", at::zeros({1}));
  auto child = std::make_shared<ferry::Module>("Child");
  child->register_buffer("np_buf", at::zeros({1}), /*persistent=*/false);
  root.register_child("child", child);

  auto names = ferry::get_non_persistent_buffers(root, /*recurse=*/true);
  EXPECT_EQ(names, (std::set<std::string>{"np_buf"}));
  names.insert("buf");  // a copy: changing it changes nothing
  EXPECT_EQ(ferry::get_non_persistent_buffers(root, true), (std::set<std::string>{"np_buf"}));
  EXPECT_EQ(ferry::get_non_persistent_buffers(root, false), std::set<std::string>{});
  EXPECT_EQ(ferry::get_non_persistent_buffers(root, true, /*fqns=*/true), (std::set<std::string>{"child.np_buf"}));
  EXPECT_EQ(root.non_persistent_buffer_names(), Names{});
  EXPECT_EQ(child->non_persistent_buffer_names(), (Names{"np_buf"}));
  EXPECT_EQ(names_of(root.state_dict()), (Names{"buf"}));
}

TEST(ModuleTensorsTest, NamedModuleTensorsDoesNotCorruptStateDict) {
  ferry::Module root("Root");
  root.register_buffer("mask", at::ones({2}));
  auto child = std::make_shared<ferry::Module>("Child");
  child->register_buffer("mask", at::zeros({2}), /*persistent=*/false);
  root.register_child("child", child);

  auto tensors = ferry::named_module_tensors(root, true, /*recurse=*/true, /*remove_non_persistent=*/true);
  // ferry judges persistence per slot: the root's persistent mask stays, the child's goes.
  EXPECT_EQ(names_of(tensors), (Names{"mask"}));
  EXPECT_FALSE(root.is_non_persistent_buffer("mask"));
  EXPECT_TRUE(child->is_non_persistent_buffer("mask"));
  EXPECT_EQ(names_of(root.state_dict()), (Names{"mask"}));
  EXPECT_EQ(names_of(ferry::named_module_tensors(root, true, true)), (Names{"mask", "child.mask"}));
}

// ---- find_tied_parameters / retie_parameters ---------------------------------------------------

Groups sorted_groups(Groups groups) {
  std::sort(groups.begin(), groups.end());
  return groups;
}

TEST(ModuleTensorsTest, FindTiedParametersConformanceCases) {
  // FTP-1..7 from Accelerate's test_find_tied_parameters, with the answers Accelerate 1.15 gave.
  std::ifstream in(std::string(FERRY_TEST_DATA_DIR) + "/device_map_cases.json");
  ASSERT_TRUE(in) << "missing tests/data/device_map_cases.json";
  nlohmann::json cases = nlohmann::json::parse(in).at("cases");
  int checked = 0;
  for (const auto& c : cases) {
    if (c.at("api") != "find_tied_parameters") continue;
    auto model = ferry_test::build_tree(c.at("model"));
    Groups expected = c.at("accelerate").get<Groups>();
    Groups actual = ferry::find_tied_parameters(*model);
    for (const auto& group : actual) EXPECT_TRUE(std::is_sorted(group.begin(), group.end()));
    EXPECT_EQ(sorted_groups(actual), sorted_groups(expected)) << c.at("id");
    ++checked;
  }
  EXPECT_GE(checked, 7);
}

TEST(ModuleTensorsTest, FindTiedParametersSharedModuleAndNested) {
  auto layer = std::make_shared<ferry::Linear>(10, 10);
  ferry::Sequential twice({layer, layer});
  EXPECT_EQ(ferry::find_tied_parameters(twice), (Groups{{"0.weight", "1.weight"}, {"0.bias", "1.bias"}}));

  // Nested: block2.linear1.weight tied to block1.linear1.weight; lexicographic order in a group.
  ferry::Sequential model;
  auto block1 = std::make_shared<ferry::Sequential>();
  auto block2 = std::make_shared<ferry::Sequential>();
  for (int i = 0; i < 12; ++i) {
    block1->push_back(std::make_shared<ferry::Linear>(2, 2));
    block2->push_back(std::make_shared<ferry::Linear>(2, 2));
  }
  model.push_back(block1);
  model.push_back(block2);
  block2->submodule("10").set_parameter("weight", block1->submodule("2").parameter("weight"));
  EXPECT_EQ(ferry::find_tied_parameters(model), (Groups{{"0.2.weight", "1.10.weight"}}));
  // Lexicographic, as Accelerate sorts: "1.10.weight" < "1.2.weight".
  block2->submodule("2").set_parameter("weight", block1->submodule("2").parameter("weight"));
  EXPECT_EQ(ferry::find_tied_parameters(model), (Groups{{"0.2.weight", "1.10.weight", "1.2.weight"}}));

  // Buffers are never reported; equal values are not ties.
  ferry::Module m("M");
  at::Tensor b = at::zeros({2});
  m.register_buffer("b1", b);
  m.register_buffer("b2", b);
  m.register_parameter("p1", at::zeros({2}));
  m.register_parameter("p2", at::zeros({2}));
  EXPECT_EQ(ferry::find_tied_parameters(m), Groups{});
}

TEST(ModuleTensorsTest, FindTiedParametersOnMetaUsesIdentityNotDataPtr) {
  // Every meta tensor has data_ptr 0: a data_ptr-keyed table would tie everything.
  auto guard = ferry::init_empty_weights();
  ferry::Sequential model({std::make_shared<ferry::Linear>(4, 4), std::make_shared<ferry::Linear>(4, 4)});
  EXPECT_EQ(ferry::find_tied_parameters(model), Groups{});
  model.submodule("1").set_parameter("weight", model.submodule("0").parameter("weight"));
  EXPECT_EQ(ferry::find_tied_parameters(model), (Groups{{"0.weight", "1.weight"}}));
}

TEST(ModuleTensorsTest, RetieParameters) {
  ferry::Sequential model;
  for (int i = 0; i < 5; ++i) model.push_back(std::make_shared<ferry::Linear>(3, 3));
  auto p = [&](const std::string& name) {
    auto [owner, leaf] = ferry::resolve_tensor_owner(model, name);
    return owner->parameter(leaf);
  };
  // Two groups, one 3-way.
  model.submodule("1").set_parameter("weight", p("0.weight"));
  model.submodule("3").set_parameter("weight", p("0.weight"));
  model.submodule("4").set_parameter("bias", p("2.bias"));
  Groups groups = ferry::find_tied_parameters(model);
  ASSERT_EQ(groups, (Groups{{"0.weight", "1.weight", "3.weight"}, {"2.bias", "4.bias"}}));

  // Moving one name breaks the tie (the slot is replaced) ...
  ferry::set_module_tensor_to_device(model, "1.weight", kMeta);
  ferry::set_module_tensor_to_device(model, "4.bias", kCpu, at::ones({3}));
  EXPECT_FALSE(p("1.weight").is_same(p("0.weight")));
  EXPECT_FALSE(p("4.bias").is_same(p("2.bias")));
  // ... retie_parameters restores one object per group, the first non-meta one.
  ferry::retie_parameters(model, groups);
  EXPECT_TRUE(p("1.weight").is_same(p("0.weight")));
  EXPECT_TRUE(p("3.weight").is_same(p("0.weight")));
  EXPECT_TRUE(p("4.bias").is_same(p("2.bias")));
  EXPECT_FALSE(p("0.weight").is_meta());
  EXPECT_EQ(ferry::find_tied_parameters(model), groups);

  // The first name on meta: the next real one is the source.
  ferry::set_module_tensor_to_device(model, "0.weight", kMeta);
  at::Tensor source = p("1.weight");
  ferry::retie_parameters(model, groups);
  EXPECT_TRUE(p("0.weight").is_same(source));
  EXPECT_TRUE(p("3.weight").is_same(source));

  // All on meta: nothing happens.
  for (const auto& name : {"2.bias", "4.bias"}) ferry::set_module_tensor_to_device(model, name, kMeta);
  at::Tensor b2 = p("2.bias"), b4 = p("4.bias");
  ferry::retie_parameters(model, {{"2.bias", "4.bias"}});
  EXPECT_TRUE(p("2.bias").is_same(b2));
  EXPECT_TRUE(p("4.bias").is_same(b4));

  std::string unknown = error_of([&] { ferry::retie_parameters(model, {{"0.weight", "9.weight"}}); });
  EXPECT_EQ(unknown, "[submodule] module '<root>' (Sequential) has no submodule named '9' (looking up '9')");
}

TEST(ModuleTensorsTest, RetieNestedSubModuleTie) {
  // FTP-7's shape: a module's own weight tied to a parameter of its child.
  ferry::Module model("Model");
  auto compute = std::make_shared<ferry::Module>("LinearModuleAndSubModule");
  at::Tensor w = at::randn({8, 3});
  compute->register_parameter("weight", w);
  auto sub = std::make_shared<ferry::Module>("SubModule");
  sub->register_parameter("parameter", w);
  compute->register_child("weight_submodule", sub);
  model.register_child("compute", compute);
  Groups groups = ferry::find_tied_parameters(model);
  ASSERT_EQ(groups, (Groups{{"compute.weight", "compute.weight_submodule.parameter"}}));
  ferry::set_module_tensor_to_device(model, "compute.weight_submodule.parameter", kMeta);
  ferry::retie_parameters(model, groups);
  EXPECT_TRUE(sub->parameter("parameter").is_same(w));
}

TEST(ModuleTensorsTest, ShapeStr) {
  EXPECT_EQ(ferry::shape_str({}), "[]");
  EXPECT_EQ(ferry::shape_str({4, 3}), "[4, 3]");
}

}  // namespace
