// nn/module.h and nn/init_on_device.h: registries, walks with Python semantics, to(), empty weights.
#include "ferry/nn/init_on_device.h"
#include "ferry/nn/layers.h"
#include "ferry/nn/module.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "test_models.h"
#include "test_util.h"

#include <thread>

namespace {

using ferry_test::error_of;
using ferry_test::find_named;
using ferry_test::has;
using ferry_test::ModelForTest;
using ferry_test::names_of;
using Names = std::vector<std::string>;

// A module holding one layer object twice and a tensor tied across two slots.
class SharedModel : public ferry::Module {
 public:
  SharedModel() : Module("SharedModel") {
    shared = std::make_shared<ferry::Linear>(3, 3);
    register_child("first", shared);
    other = register_module("other", std::make_shared<ferry::Linear>(3, 3));
    register_child("again", shared);
    other->set_parameter("weight", shared->weight.get());  // tie other.weight to first.weight
  }
  std::shared_ptr<ferry::Linear> shared, other;
};

// ---- registries ------------------------------------------------------------------------------

TEST(ModuleTest, RegistriesKeepOrderClassNamesAndSlots) {
  ModelForTest model;
  EXPECT_EQ(model.class_name(), "ModelForTest");
  EXPECT_EQ(model.linear1->class_name(), "Linear");
  EXPECT_EQ(model.batchnorm->class_name(), "BatchNorm1d");
  EXPECT_EQ(names_of(model.named_children()), (Names{"linear1", "batchnorm", "linear2"}));
  EXPECT_TRUE(model.linear1->has_parameter("weight"));
  EXPECT_FALSE(model.linear1->has_buffer("weight"));
  EXPECT_TRUE(model.batchnorm->has_buffer("running_mean"));
  EXPECT_EQ(model.child("linear2").get(), model.linear2.get());
  EXPECT_EQ(model.child("nope"), nullptr);
  EXPECT_EQ(&model.submodule(""), &model);
  EXPECT_EQ(&model.submodule("batchnorm"), model.batchnorm.get());

  // A TensorRef reads the slot on every use: replacing the slot is seen by the layer.
  at::Tensor replacement = at::ones({4, 3});
  model.linear1->set_parameter("weight", replacement);
  EXPECT_TRUE(model.linear1->weight.get().is_same(replacement));
  EXPECT_TRUE(model.linear1->parameter("weight").is_same(replacement));
  at::Tensor y = (*model.linear1)(at::ones({1, 3}));
  EXPECT_TRUE(at::allclose(y, at::full({1, 4}, 3.0) + model.linear1->bias.get()));

  model.set_class_name("Renamed");
  EXPECT_EQ(model.class_name(), "Renamed");
}

TEST(ModuleTest, RegistrationErrorsNameTheModule) {
  ModelForTest model;
  std::string dup = error_of([&] { model.register_buffer("linear1", at::zeros({1})); });
  EXPECT_TRUE(has(dup, "[check_new_name] a ModelForTest already has an attribute named 'linear1'")) << dup;
  std::string dotted = error_of([&] { model.register_parameter("a.b", at::zeros({1})); });
  EXPECT_TRUE(has(dotted, "invalid name 'a.b' in a ModelForTest: names must be non-empty and contain no '.'"))
      << dotted;
  std::string empty = error_of([&] { model.register_child("", std::make_shared<ferry::Linear>(1, 1)); });
  EXPECT_TRUE(has(empty, "invalid name '' in a ModelForTest")) << empty;
  auto self = std::make_shared<ferry::Sequential>();
  std::string cycle = error_of([&] { self->register_child("me", self); });
  EXPECT_TRUE(has(cycle, "cannot register a Sequential as its own child 'me'")) << cycle;
}

TEST(ModuleTest, LookupErrorsNameTheMissingPart) {
  ModelForTest model;
  std::string param = error_of([&] { model.linear1->parameter("weights"); });
  EXPECT_EQ(param, "[parameter] a Linear has no parameter named 'weights'");
  std::string buffer = error_of([&] { model.batchnorm->buffer("running_men"); });
  EXPECT_EQ(buffer, "[buffer] a BatchNorm1d has no buffer named 'running_men'");
  std::string set = error_of([&] { model.linear1->set_buffer("weight", at::zeros({4, 3})); });
  EXPECT_EQ(set, "[set_buffer] a Linear has no buffer named 'weight'");
  std::string sub = error_of([&] { model.submodule("linear1.inner"); });
  EXPECT_EQ(sub, "[submodule] module 'linear1' (Linear) has no submodule named 'inner' (looking up 'linear1.inner')");
  std::string root = error_of([&] { model.submodule("linear3"); });
  EXPECT_EQ(root, "[submodule] module '<root>' (ModelForTest) has no submodule named 'linear3' (looking up 'linear3')");
}

TEST(ModuleTest, CallingContainersAndNonTensorOutputs) {
  ferry::ModuleList list;
  list.push_back(std::make_shared<ferry::Linear>(2, 2));
  std::string no_forward = error_of([&] { list(at::ones({1, 2})); });
  EXPECT_EQ(no_forward, "[forward] module of class ModuleList has no forward(); call its children instead");

  class PairOut : public ferry::Module {
   public:
    PairOut() : Module("PairOut") {}
    c10::IValue forward(ferry::Args& args) override {
      return c10::ivalue::Tuple::create(std::vector<c10::IValue>{args.tensor(0), args.tensor(0)});
    }
  } pair;
  std::string not_tensor = error_of([&] { pair(at::ones({1})); });
  EXPECT_TRUE(has(not_tensor, "module of class PairOut returned a Tuple, not a tensor")) << not_tensor;
  EXPECT_TRUE(pair(ferry::Args{at::ones({1})}).isTuple());
}

// ---- walks -----------------------------------------------------------------------------------

TEST(ModuleTest, WalksArePreOrderInRegistrationOrder) {
  ModelForTest model;
  EXPECT_EQ(names_of(model.named_modules()), (Names{"", "linear1", "batchnorm", "linear2"}));
  EXPECT_EQ(names_of(model.named_modules("model")), (Names{"model", "model.linear1", "model.batchnorm", "model.linear2"}));
  EXPECT_EQ(names_of(model.named_parameters()), (Names{"linear1.weight", "linear1.bias", "batchnorm.weight",
                                                       "batchnorm.bias", "linear2.weight", "linear2.bias"}));
  EXPECT_EQ(names_of(model.named_parameters(/*recurse=*/false)), Names{});
  EXPECT_EQ(names_of(model.named_buffers()),
            (Names{"batchnorm.running_mean", "batchnorm.running_var", "batchnorm.num_batches_tracked"}));
  EXPECT_EQ(names_of(model.state_dict()),
            (Names{"linear1.weight", "linear1.bias", "batchnorm.weight", "batchnorm.bias", "batchnorm.running_mean",
                   "batchnorm.running_var", "batchnorm.num_batches_tracked", "linear2.weight", "linear2.bias"}));
}

TEST(ModuleTest, WalksDeduplicateByIdentityButStateDictHasEveryName) {
  SharedModel model;
  // The shared layer appears once, under its first name.
  EXPECT_EQ(names_of(model.named_modules()), (Names{"", "first", "other"}));
  EXPECT_EQ(names_of(model.named_children()), (Names{"first", "other"}));
  EXPECT_EQ(names_of(model.named_modules("", /*remove_duplicate=*/false)), (Names{"", "first", "other", "again"}));
  // other.weight is the same tensor as first.weight: listed once, under the first name.
  EXPECT_EQ(names_of(model.named_parameters()), (Names{"first.weight", "first.bias", "other.bias"}));
  EXPECT_EQ(names_of(model.named_parameters(true, /*remove_duplicate=*/false)),
            (Names{"first.weight", "first.bias", "other.weight", "other.bias", "again.weight", "again.bias"}));
  // state_dict() walks without de-duplication, as Python's does.
  auto sd = model.state_dict();
  EXPECT_EQ(names_of(sd),
            (Names{"first.weight", "first.bias", "other.weight", "other.bias", "again.weight", "again.bias"}));
  EXPECT_TRUE(find_named(sd, "other.weight").is_same(find_named(sd, "first.weight")));
  EXPECT_TRUE(find_named(sd, "again.bias").is_same(find_named(sd, "first.bias")));
}

TEST(ModuleTest, EqualValuesAreNotTies) {
  // Identity, not equality or data_ptr: two meta tensors (data_ptr 0) are different tensors.
  ferry::Module m("M");
  m.register_parameter("a", at::empty({2}, at::kMeta));
  m.register_parameter("b", at::empty({2}, at::kMeta));
  at::Tensor shared = at::zeros({2});
  m.register_parameter("c", shared);
  m.register_parameter("d", shared.view({2}));  // a view is another tensor object
  EXPECT_EQ(names_of(m.named_parameters()), (Names{"a", "b", "c", "d"}));
}

TEST(ModuleTest, NoneSlotsAndNonPersistentBuffers) {
  ferry::Module m("M");
  m.register_parameter("none", at::Tensor());
  m.register_parameter("p", at::zeros({1}));
  m.register_buffer("kept", at::zeros({1}));
  m.register_buffer("scratch", at::zeros({1}), /*persistent=*/false);
  m.register_buffer("nothing", at::Tensor());
  EXPECT_TRUE(m.has_parameter("none"));
  EXPECT_FALSE(m.parameter("none").defined());
  EXPECT_EQ(m.parameter_slots().size(), 2u);
  EXPECT_EQ(names_of(m.named_parameters()), (Names{"p"}));
  EXPECT_EQ(names_of(m.named_buffers()), (Names{"kept", "scratch"}));
  EXPECT_EQ(names_of(m.state_dict()), (Names{"p", "kept"}));
  EXPECT_TRUE(m.is_non_persistent_buffer("scratch"));
  EXPECT_FALSE(m.is_non_persistent_buffer("kept"));
  EXPECT_FALSE(m.is_non_persistent_buffer("absent"));
  EXPECT_EQ(m.non_persistent_buffer_names(), (Names{"scratch"}));
}

// ---- to() ------------------------------------------------------------------------------------

TEST(ModuleTest, ToDtypeConvertsFloatingTensorsOnly) {
  ModelForTest model;
  model.to(at::kHalf);
  for (const auto& [name, t] : model.named_parameters()) EXPECT_EQ(t.scalar_type(), at::kHalf) << name;
  EXPECT_EQ(model.batchnorm->running_mean->scalar_type(), at::kHalf);
  EXPECT_EQ(model.batchnorm->num_batches_tracked->scalar_type(), at::kLong);
  // The layers read the converted slots.
  EXPECT_EQ(model.linear1->weight->scalar_type(), at::kHalf);
  model.to(at::kDouble);
  EXPECT_EQ(model.linear2->bias->scalar_type(), at::kDouble);
  EXPECT_EQ(model.batchnorm->num_batches_tracked->scalar_type(), at::kLong);
  at::Tensor y = model(at::randn({2, 3}, at::kDouble));
  EXPECT_EQ(y.scalar_type(), at::kDouble);
}

TEST(ModuleTest, ToKeepsTiesAndRequiresGrad) {
  SharedModel model;
  model.shared->weight->set_requires_grad(true);
  model.to(at::kDouble);
  EXPECT_TRUE(model.other->weight->is_same(model.shared->weight.get()));
  EXPECT_EQ(model.other->weight->scalar_type(), at::kDouble);
  // A parameter stays a leaf that requires grad, as Python's Module._apply keeps it.
  EXPECT_TRUE(model.shared->weight->requires_grad());
  EXPECT_TRUE(model.shared->weight->is_leaf());
  EXPECT_FALSE(model.shared->bias->requires_grad());

  model.to(c10::Device(c10::kMeta));
  EXPECT_TRUE(model.other->weight->is_meta());
  EXPECT_TRUE(model.other->weight->is_same(model.shared->weight.get()));
  EXPECT_TRUE(model.shared->weight->requires_grad());
  EXPECT_TRUE(model.shared->weight->is_leaf());
  for (const auto& [name, t] : model.state_dict()) EXPECT_TRUE(t.is_meta()) << name;
}

TEST(ModuleTest, ToSameDeviceKeepsTensorObjects) {
  ModelForTest model;
  at::Tensor w = model.linear1->weight.get();
  model.to(c10::Device(c10::kCPU));
  EXPECT_TRUE(model.linear1->weight->is_same(w));
}

TEST(ModuleTest, ToRefusesMetaTensorsWithAClearMessage) {
  std::shared_ptr<ModelForTest> model;
  {
    auto guard = ferry::init_empty_weights();
    model = std::make_shared<ModelForTest>();
  }
  std::string msg = error_of([&] { model->to(c10::Device(c10::kCPU)); });
  EXPECT_EQ(msg,
            "[to] cannot move a ModelForTest to cpu: 'linear1.weight' is on the meta device (offloaded or never "
            "loaded); load its weights first, e.g. with load_checkpoint_in_model, or keep it dispatched");
  // Nothing was moved.
  EXPECT_EQ(model->batchnorm->running_mean->device(), c10::Device(c10::kCPU));
  EXPECT_TRUE(model->linear2->weight->is_meta());
}

TEST(ModuleTest, MoveGuardRunsBeforeMoving) {
  ModelForTest model;
  std::vector<std::string> requests;
  model.set_move_guard([&](ferry::Module& m, const std::string& request) {
    requests.push_back(request);
    if (request == "meta") throw ferry::Error("[guard] refused");
  });
  EXPECT_TRUE(model.has_move_guard());
  model.to(at::kDouble);
  EXPECT_EQ(model.linear1->weight->scalar_type(), at::kDouble);
  EXPECT_EQ(error_of([&] { model.to(c10::Device(c10::kMeta)); }), "[guard] refused");
  EXPECT_FALSE(model.linear1->weight->is_meta());
  EXPECT_EQ(requests, (Names{"float64", "meta"}));
}

// ---- init_empty_weights / init_on_device ----------------------------------------------------

TEST(InitEmptyWeightsTest, ParametersOnMetaBuffersStayOnCpu) {
  {
    auto guard = ferry::init_empty_weights();
    ferry::Linear linear(4, 5);
    EXPECT_TRUE(linear.weight->is_meta());
    EXPECT_TRUE(linear.bias->is_meta());
    EXPECT_EQ(linear.weight->sizes(), (std::vector<int64_t>{5, 4}));
    ferry::BatchNorm1d bn(4);
    EXPECT_TRUE(bn.weight->is_meta());
    EXPECT_EQ(bn.running_mean->device(), c10::Device(c10::kCPU));
    EXPECT_TRUE(at::equal(bn.running_var.get(), at::ones({4})));  // real buffers keep their values
  }
  ferry::BatchNorm1d after(4);
  EXPECT_EQ(after.weight->device(), c10::Device(c10::kCPU));
  EXPECT_EQ(after.running_mean->device(), c10::Device(c10::kCPU));
  EXPECT_TRUE(at::equal(after.weight.get(), at::ones({4})));
}

TEST(InitEmptyWeightsTest, IncludeBuffersPutsBuffersOnMetaToo) {
  {
    auto guard = ferry::init_empty_weights(/*include_buffers=*/true);
    ferry::BatchNorm1d bn(4);
    EXPECT_TRUE(bn.weight->is_meta());
    EXPECT_TRUE(bn.running_mean->is_meta());
    EXPECT_TRUE(bn.num_batches_tracked->is_meta());
    EXPECT_EQ(bn.num_batches_tracked->scalar_type(), at::kLong);
  }
  ferry::BatchNorm1d after(4);
  EXPECT_EQ(after.running_mean->device(), c10::Device(c10::kCPU));
  EXPECT_FALSE(ferry::current_parameter_init_device().has_value());
  EXPECT_FALSE(ferry::current_buffer_init_device().has_value());
}

TEST(InitEmptyWeightsTest, UserModulesRegisteringRealTensorsAreMovedToo) {
  class Custom : public ferry::Module {
   public:
    Custom() : Module("Custom") {
      scale = register_parameter("scale", at::ones({3}), /*requires_grad=*/true);
      shift = register_parameter("shift", at::zeros({3}).requires_grad_());
      mask = register_buffer("mask", at::ones({3}));
    }
    ferry::TensorRef scale, shift, mask;
  };
  {
    auto guard = ferry::init_empty_weights();
    Custom c;
    EXPECT_TRUE(c.scale->is_meta());
    EXPECT_TRUE(c.scale->requires_grad());
    EXPECT_TRUE(c.scale->is_leaf());
    // A tensor that already requires grad keeps it and stays a leaf when moved to meta.
    EXPECT_TRUE(c.shift->is_meta());
    EXPECT_TRUE(c.shift->requires_grad());
    EXPECT_TRUE(c.shift->is_leaf());
    EXPECT_EQ(c.mask->device(), c10::Device(c10::kCPU));
  }
  {
    auto guard = ferry::init_empty_weights(true);
    Custom c;
    EXPECT_TRUE(c.mask->is_meta());
  }
}

TEST(InitEmptyWeightsTest, VeryLargeModelAllocatesNothing) {
  // Accelerate's test_init_empty_weights_very_large_model: 1000 x Linear(10000, 10000), 1e11 parameters.
  auto guard = ferry::init_empty_weights();
  ferry::Sequential model;
  for (int i = 0; i < 1000; ++i) model.push_back(std::make_shared<ferry::Linear>(10000, 10000));
  int64_t count = 0;
  for (const auto& [name, t] : model.named_parameters()) {
    ASSERT_TRUE(t.is_meta()) << name;
    count += t.numel();
  }
  EXPECT_EQ(count, 1000LL * (10000LL * 10000LL + 10000LL));
}

TEST(InitEmptyWeightsTest, GuardsNestInnermostWins) {
  auto outer = ferry::init_empty_weights(/*include_buffers=*/true);
  {
    auto inner = ferry::init_on_device(c10::Device(c10::kCPU));
    ferry::BatchNorm1d bn(2);
    EXPECT_EQ(bn.weight->device(), c10::Device(c10::kCPU));
    EXPECT_EQ(bn.running_mean->device(), c10::Device(c10::kCPU));
    EXPECT_TRUE(at::equal(bn.weight.get(), at::ones({2})));  // initialised on a real device
  }
  ferry::BatchNorm1d bn(2);
  EXPECT_TRUE(bn.weight->is_meta());
  EXPECT_TRUE(bn.running_mean->is_meta());
  {
    auto inner = ferry::init_on_device(c10::Device(c10::kMeta), /*include_buffers=*/false);
    ferry::BatchNorm1d bn2(2);
    EXPECT_TRUE(bn2.weight->is_meta());
    EXPECT_EQ(bn2.running_mean->device(), c10::Device(c10::kCPU));
  }
  EXPECT_EQ(ferry::current_buffer_init_device(), c10::Device(c10::kMeta));
}

TEST(InitEmptyWeightsTest, GuardIsThreadLocal) {
  auto guard = ferry::init_empty_weights(true);
  bool other_thread_on_cpu = false;
  std::thread([&] {
    ferry::BatchNorm1d bn(2);
    other_thread_on_cpu = bn.weight->device().is_cpu() && bn.running_mean->device().is_cpu();
  }).join();
  EXPECT_TRUE(other_thread_on_cpu);

  bool other_thread_on_meta = false;
  std::thread([&] {
    auto local = ferry::init_empty_weights();
    ferry::Linear l(2, 2);
    other_thread_on_meta = l.weight->is_meta();
  }).join();
  EXPECT_TRUE(other_thread_on_meta);
  ferry::Linear here(2, 2);
  EXPECT_TRUE(here.weight->is_meta());
}

TEST(InitEmptyWeightsTest, InitOnDeviceCpuBuildsARealModel) {
  auto guard = ferry::init_on_device(c10::Device(c10::kCPU), /*include_buffers=*/true);
  ModelForTest model;
  for (const auto& [name, t] : model.state_dict()) EXPECT_TRUE(t.device().is_cpu()) << name;
  at::Tensor y = model(at::randn({2, 3}));
  EXPECT_EQ(y.sizes(), (std::vector<int64_t>{2, 5}));
}

}  // namespace
