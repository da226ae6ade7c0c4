// hooks/model_hook.h and hooks/send_to_device.h: Accelerate's test_hooks.py (CPU-portable part)
// and send_to_device over nested values.
#include "ferry/hooks/model_hook.h"
#include "ferry/hooks/send_to_device.h"
#include "ferry/nn/layers.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include "test_models.h"
#include "test_util.h"

namespace {

using ferry_test::error_of;
using ferry_test::has;
using ferry_test::ModelForTest;

// Accelerate's PreForwardHook: adds one to the first argument.
struct PreForwardHook : ferry::ModelHook {
  void pre_forward(ferry::Module&, ferry::Args& args) override { args.positional[0] = args.tensor(0) + 1; }
};

// Accelerate's PostForwardHook: adds one to the output.
struct PostForwardHook : ferry::ModelHook {
  c10::IValue post_forward(ferry::Module&, c10::IValue output) override { return output.toTensor() + 1; }
};

// Counts every call and records the order of events in a shared log.
struct RecordingHook : ferry::ModelHook {
  RecordingHook(std::string name, std::vector<std::string>* log) : name(std::move(name)), log(log) {}
  void init_hook(ferry::Module& m) override { log->push_back(name + ".init(" + m.class_name() + ")"); }
  void pre_forward(ferry::Module&, ferry::Args&) override { log->push_back(name + ".pre"); }
  c10::IValue post_forward(ferry::Module&, c10::IValue output) override {
    log->push_back(name + ".post");
    return output;
  }
  void detach_hook(ferry::Module& m) override { log->push_back(name + ".detach(" + m.class_name() + ")"); }
  std::string name;
  std::vector<std::string>* log;
};

using Log = std::vector<std::string>;

TEST(HooksTest, AddAndRemoveHooks) {
  at::manual_seed(0);
  ModelForTest model;
  at::Tensor x = at::randn({2, 3});
  at::Tensor expected = model(x);
  auto hook = std::make_shared<ferry::ModelHook>();
  ferry::add_hook_to_module(model, hook);
  EXPECT_EQ(model.hook(), hook);
  EXPECT_TRUE(at::equal(model(x), expected));  // a do-nothing hook changes nothing
  ferry::remove_hook_from_module(model);
  EXPECT_EQ(model.hook(), nullptr);
  EXPECT_TRUE(at::equal(model(x), expected));
  // Removing again is a no-op, with or without recursion.
  ferry::remove_hook_from_module(model);
  ferry::remove_hook_from_module(model, /*recurse=*/true);
  ferry::remove_hook_from_submodules(model);
  EXPECT_EQ(model.hook(), nullptr);
  EXPECT_TRUE(at::equal(model(x), expected));
}

TEST(HooksTest, AppendAndRemoveHooks) {
  ModelForTest model;
  auto first = std::make_shared<ferry::ModelHook>();
  auto second = std::make_shared<ferry::ModelHook>();
  ferry::add_hook_to_module(model, first);
  ferry::add_hook_to_module(model, second, /*append=*/true);
  auto sequential = ferry::hook_as<ferry::SequentialHook>(model);
  ASSERT_NE(sequential, nullptr);
  ASSERT_EQ(sequential->hooks.size(), 2u);
  EXPECT_EQ(sequential->hooks[0], first);
  EXPECT_EQ(sequential->hooks[1], second);
  ferry::remove_hook_from_module(model);
  EXPECT_EQ(model.hook(), nullptr);
  // append on a module without a hook just adds it.
  ferry::add_hook_to_module(model, first, /*append=*/true);
  EXPECT_EQ(model.hook(), first);
}

TEST(HooksTest, PreForwardHookIsExecuted) {
  at::manual_seed(1);
  ModelForTest model;
  at::Tensor x = at::randn({2, 3});
  at::Tensor expected = model(x + 1);
  at::Tensor expected2 = model(x + 2);

  ferry::add_hook_to_module(model, std::make_shared<PreForwardHook>());
  EXPECT_TRUE(at::allclose(model(x), expected, 1e-5, 1e-5));
  // Attaching again replaces: still x + 1, not x + 2.
  ferry::add_hook_to_module(model, std::make_shared<PreForwardHook>());
  EXPECT_TRUE(at::allclose(model(x), expected, 1e-5, 1e-5));
  // A SequentialHook runs both.
  auto both = std::make_shared<ferry::SequentialHook>(
      std::vector<std::shared_ptr<ferry::ModelHook>>{std::make_shared<PreForwardHook>(), std::make_shared<PreForwardHook>()});
  ferry::add_hook_to_module(model, both);
  EXPECT_TRUE(at::allclose(model(x), expected2, 1e-4, 1e-5));
  // Appending a third: x + 3.
  ferry::add_hook_to_module(model, std::make_shared<PreForwardHook>(), /*append=*/true);
  ferry::remove_hook_from_module(model);
  at::Tensor expected3 = model(x + 3);
  ferry::add_hook_to_module(model, both);
  ferry::add_hook_to_module(model, std::make_shared<PreForwardHook>(), true);
  EXPECT_TRUE(at::allclose(model(x), expected3, 1e-4, 1e-5));
}

TEST(HooksTest, PostForwardHookIsExecuted) {
  at::manual_seed(2);
  ModelForTest model;
  at::Tensor x = at::randn({2, 3});
  at::Tensor expected = model(x);

  ferry::add_hook_to_module(model, std::make_shared<PostForwardHook>());
  EXPECT_TRUE(at::allclose(model(x), expected + 1, 1e-5, 1e-5));
  ferry::add_hook_to_module(model, std::make_shared<PostForwardHook>());
  EXPECT_TRUE(at::allclose(model(x), expected + 1, 1e-5, 1e-5));
  ferry::add_hook_to_module(model, std::make_shared<ferry::SequentialHook>(std::vector<std::shared_ptr<ferry::ModelHook>>{
                                       std::make_shared<PostForwardHook>(), std::make_shared<PostForwardHook>()}));
  EXPECT_TRUE(at::allclose(model(x), expected + 2, 1e-5, 1e-5));
  ferry::add_hook_to_module(model, std::make_shared<PostForwardHook>(), /*append=*/true);
  EXPECT_TRUE(at::allclose(model(x), expected + 3, 1e-5, 1e-5));
  ferry::remove_hook_from_module(model);
  EXPECT_TRUE(at::equal(model(x), expected));
}

TEST(HooksTest, NoGradInHook) {
  ModelForTest model;
  // ferry's layers create parameters that do not require grad; make one trainable as PyTorch's would be.
  model.linear1->weight->set_requires_grad(true);
  at::Tensor x = at::randn({2, 3});
  auto hook = std::make_shared<ferry::ModelHook>();
  ferry::add_hook_to_module(model, hook);
  EXPECT_TRUE(model(x).requires_grad());
  hook->no_grad = true;
  EXPECT_FALSE(model(x).requires_grad());
  EXPECT_TRUE(c10::GradMode::is_enabled());  // the guard ends with the call
  hook->no_grad = false;
  EXPECT_TRUE(model(x).requires_grad());
  // no_grad of a SequentialHook itself is what counts.
  ferry::add_hook_to_module(model, std::make_shared<ferry::ModelHook>(), /*append=*/true);
  EXPECT_TRUE(model(x).requires_grad());
  model.hook()->no_grad = true;
  EXPECT_FALSE(model(x).requires_grad());
}

TEST(HooksTest, LifecycleCallsAndOrderMatchAccelerate) {
  ModelForTest model;
  Log log;
  auto a = std::make_shared<RecordingHook>("a", &log);
  auto b = std::make_shared<RecordingHook>("b", &log);
  auto c = std::make_shared<RecordingHook>("c", &log);
  ferry::add_hook_to_module(model, a);
  EXPECT_EQ(log, (Log{"a.init(ModelForTest)"}));
  log.clear();
  // Append: the old hook is detached, then both are (re-)initialised in order.
  ferry::add_hook_to_module(model, b, /*append=*/true);
  EXPECT_EQ(log, (Log{"a.detach(ModelForTest)", "a.init(ModelForTest)", "b.init(ModelForTest)"}));
  log.clear();
  model(at::randn({2, 3}));
  EXPECT_EQ(log, (Log{"a.pre", "b.pre", "a.post", "b.post"}));
  log.clear();
  // Replacing without append does not detach the old hook.
  ferry::add_hook_to_module(model, c);
  EXPECT_EQ(log, (Log{"c.init(ModelForTest)"}));
  log.clear();
  ferry::remove_hook_from_module(model);
  ferry::remove_hook_from_module(model);
  EXPECT_EQ(log, (Log{"c.detach(ModelForTest)"}));  // only once
}

TEST(HooksTest, AppendKeepsASequentialHookSubclassIntact) {
  // A user subclass of SequentialHook with its own behaviour must not be flattened away.
  struct DoublingSequential : ferry::SequentialHook {
    using SequentialHook::SequentialHook;
    c10::IValue post_forward(ferry::Module& m, c10::IValue output) override {
      return SequentialHook::post_forward(m, std::move(output)).toTensor() * 2;
    }
  };
  ferry::Linear id(2, 2, false);
  id.set_parameter("weight", at::eye(2));
  auto doubling = std::make_shared<DoublingSequential>(std::vector<std::shared_ptr<ferry::ModelHook>>{});
  ferry::add_hook_to_module(id, doubling);
  at::Tensor x = at::ones({1, 2});
  EXPECT_TRUE(at::equal(id(x), x * 2));
  ferry::add_hook_to_module(id, std::make_shared<PostForwardHook>(), /*append=*/true);
  EXPECT_TRUE(at::equal(id(x), x * 2 + 1));
}

TEST(HooksTest, NullHooksAreRefused) {
  ModelForTest model;
  EXPECT_EQ(error_of([&] { ferry::add_hook_to_module(model, nullptr); }),
            "[add_hook_to_module] no hook given for the ModelForTest; to take a hook off, call "
            "remove_hook_from_module");
  EXPECT_EQ(model.hook(), nullptr);
  auto broken = std::make_shared<ferry::SequentialHook>(
      std::vector<std::shared_ptr<ferry::ModelHook>>{std::make_shared<ferry::ModelHook>(), nullptr});
  EXPECT_EQ(error_of([&] { ferry::add_hook_to_module(model, broken); }),
            "[init_hook] the SequentialHook attached to a ModelForTest holds no hook at position 1");
  EXPECT_EQ(model.hook(), nullptr);
}

TEST(HooksTest, RemoveRecursesAndRestoresEveryModule) {
  at::manual_seed(3);
  ModelForTest model;
  at::Tensor x = at::randn({2, 3});
  at::Tensor expected = model(x);
  ferry::add_hook_to_module(model, std::make_shared<PostForwardHook>());
  ferry::add_hook_to_module(*model.linear1, std::make_shared<PreForwardHook>());
  ferry::add_hook_to_module(*model.linear2, std::make_shared<PostForwardHook>());
  EXPECT_FALSE(at::allclose(model(x), expected));
  ferry::remove_hook_from_module(model);  // not recursive: children keep theirs
  EXPECT_EQ(model.hook(), nullptr);
  EXPECT_NE(model.linear1->hook(), nullptr);
  ferry::remove_hook_from_module(model, /*recurse=*/true);
  EXPECT_EQ(model.linear1->hook(), nullptr);
  EXPECT_EQ(model.linear2->hook(), nullptr);
  EXPECT_TRUE(at::equal(model(x), expected));

  ferry::add_hook_to_module(*model.batchnorm, std::make_shared<PostForwardHook>());
  ferry::add_hook_to_module(model, std::make_shared<PostForwardHook>());
  ferry::remove_hook_from_submodules(model);
  EXPECT_EQ(model.batchnorm->hook(), nullptr);
  EXPECT_EQ(model.hook(), nullptr);
  EXPECT_TRUE(at::equal(model(x), expected));

  model.set_move_guard([](ferry::Module&, const std::string&) {});
  ferry::remove_hook_from_module(model);
  EXPECT_FALSE(model.has_move_guard());
}

TEST(HooksTest, HookSeesKeywordArgumentsAndCanRewriteThem) {
  class Scaled : public ferry::Module {
   public:
    Scaled() : Module("Scaled") {}
    c10::IValue forward(ferry::Args& args) override {
      at::Tensor scale = args.optional_tensor("scale");
      return scale.defined() ? args.tensor(0) * scale : args.tensor(0);
    }
  } m;
  struct SetScale : ferry::ModelHook {
    void pre_forward(ferry::Module&, ferry::Args& args) override { args.set("scale", at::full({1}, 3.0)); }
  };
  ferry::add_hook_to_module(m, std::make_shared<SetScale>());
  ferry::Args args{at::ones({2})};
  args.set("scale", at::full({1}, 2.0));
  EXPECT_TRUE(at::equal(m(args).toTensor(), at::full({2}, 3.0)));
  ferry::remove_hook_from_module(m);
  EXPECT_TRUE(at::equal(m(args).toTensor(), at::full({2}, 2.0)));
}

// ---- Args ------------------------------------------------------------------------------------

TEST(HooksTest, ArgsAccessorsAndErrors) {
  ferry::Args args{at::ones({1}), c10::IValue(int64_t{3})};
  args.set("mask", at::zeros({1})).set("flag", true);
  EXPECT_EQ(args.keyword.size(), 2u);
  args.set("mask", at::ones({1}));
  EXPECT_EQ(args.keyword.size(), 2u);
  EXPECT_TRUE(at::equal(args.optional_tensor("mask"), at::ones({1})));
  EXPECT_FALSE(args.optional_tensor("flag").defined());
  EXPECT_FALSE(args.optional_tensor("absent").defined());
  EXPECT_EQ(args.find("absent"), nullptr);
  EXPECT_EQ(error_of([&] { args.tensor(2); }),
            "[tensor] expected a tensor as positional argument 2 but only 2 positional arguments were given");
  EXPECT_EQ(error_of([&] { args.tensor(1); }), "[tensor] positional argument 1 is a Int, not a tensor");
}

// ---- send_to_device --------------------------------------------------------------------------

bool all_on(const c10::IValue& v, c10::Device device) {
  if (v.isTensor()) return !v.toTensor().defined() || v.toTensor().device() == device;
  if (v.isTuple()) {
    for (const auto& e : v.toTupleRef().elements())
      if (!all_on(e, device)) return false;
    return true;
  }
  if (v.isList()) {
    for (const auto& e : v.toList())
      if (!all_on(e, device)) return false;
    return true;
  }
  if (v.isGenericDict()) {
    for (const auto& e : v.toGenericDict())
      if (!all_on(e.value(), device)) return false;
    return true;
  }
  return true;
}

TEST(HooksTest, SendToDeviceMovesNestedValues) {
  const c10::Device meta(c10::kMeta), cpu(c10::kCPU);
  c10::impl::GenericDict dict(c10::StringType::get(), c10::AnyType::get());
  dict.insert("a", at::ones({2}));
  dict.insert("past", at::ones({3}));
  c10::impl::GenericList inner(c10::AnyType::get());
  inner.push_back(at::ones({1}));
  inner.push_back(c10::IValue(int64_t{7}));
  dict.insert("list", inner);
  c10::List<at::Tensor> tensors({at::ones({1}), at::ones({2})});
  c10::IValue nested = c10::ivalue::Tuple::create(
      std::vector<c10::IValue>{at::ones({4}), dict, tensors, c10::IValue("text"), c10::IValue()});

  c10::IValue moved = ferry::send_to_device(nested, meta);
  EXPECT_TRUE(all_on(moved, meta));
  EXPECT_TRUE(all_on(nested, cpu));  // the input is not modified
  const auto& elements = moved.toTupleRef().elements();
  ASSERT_EQ(elements.size(), 5u);
  EXPECT_EQ(elements[0].toTensor().sizes(), (std::vector<int64_t>{4}));
  EXPECT_EQ(elements[3].toStringRef(), "text");
  EXPECT_TRUE(elements[4].isNone());
  auto moved_list = elements[1].toGenericDict().at("list").toList();
  EXPECT_EQ(moved_list.get(1).toInt(), 7);
  EXPECT_TRUE(elements[2].isTensorList());
  EXPECT_EQ(elements[2].toTensorList().size(), 2u);

  // skip_keys applies to dict keys at every level.
  c10::IValue skipped = ferry::send_to_device(nested, meta, {"past"});
  auto skipped_dict = skipped.toTupleRef().elements()[1].toGenericDict();
  EXPECT_TRUE(skipped_dict.at("past").toTensor().device().is_cpu());
  EXPECT_TRUE(skipped_dict.at("a").toTensor().is_meta());
  EXPECT_TRUE(skipped.toTupleRef().elements()[0].toTensor().is_meta());

  // A tensor already on the device is returned as is.
  at::Tensor t = at::ones({2});
  EXPECT_TRUE(ferry::send_to_device(t, cpu).toTensor().is_same(t));
}

TEST(HooksTest, SendArgsToDeviceSkipsKeywordNames) {
  const c10::Device meta(c10::kMeta);
  ferry::Args args{at::ones({1}), c10::ivalue::Tuple::create(std::vector<c10::IValue>{at::ones({2})})};
  args.set("attention_mask", at::ones({3}));
  args.set("past_key_values", at::ones({4}));
  ferry::send_to_device(args, meta, {"past_key_values"});
  EXPECT_TRUE(args.tensor(0).is_meta());
  EXPECT_TRUE(args.positional[1].toTupleRef().elements()[0].toTensor().is_meta());
  EXPECT_TRUE(args.optional_tensor("attention_mask").is_meta());
  EXPECT_TRUE(args.optional_tensor("past_key_values").device().is_cpu());

  EXPECT_EQ(ferry::find_device(args), meta);
  ferry::Args none{c10::IValue(int64_t{1})};
  EXPECT_FALSE(ferry::find_device(none).has_value());
  ferry::Args keyword_only;
  keyword_only.set("x", c10::ivalue::Tuple::create(std::vector<c10::IValue>{c10::IValue(), at::ones({1})}));
  EXPECT_EQ(ferry::find_device(keyword_only), c10::Device(c10::kCPU));
}

// A hook that moves the inputs to the module's weight device, as AlignDevicesHook will.
struct MoveInputsHook : ferry::ModelHook {
  explicit MoveInputsHook(c10::Device device) : device(device) {}
  void pre_forward(ferry::Module&, ferry::Args& args) override { ferry::send_to_device(args, device); }
  c10::Device device;
};

TEST(HooksTest, HookMovingInputsToTheWeightsDevice) {
  // CPU-only stand-in for the device tests: weights on meta, the hook moves the CPU input to
  // meta, the output is a meta tensor of the right shape. (BatchNorm has no meta kernel in
  // LibTorch 1.13, so this model is linear only.)
  ferry::Sequential model({std::make_shared<ferry::Linear>(3, 4), std::make_shared<ferry::Linear>(4, 5)});
  model.to(c10::Device(c10::kMeta));
  ferry::add_hook_to_module(model, std::make_shared<MoveInputsHook>(c10::Device(c10::kMeta)));
  at::Tensor y = model(at::randn({2, 3}));
  EXPECT_TRUE(y.is_meta());
  EXPECT_EQ(y.sizes(), (std::vector<int64_t>{2, 5}));
  ferry::remove_hook_from_module(model);
  ferry::add_hook_to_module(model, std::make_shared<MoveInputsHook>(c10::Device(c10::kCPU)));
  at::Tensor meta_input = at::empty({2, 3}, at::kMeta);
  model.to(c10::Device(c10::kMeta));
  // The hook moves a meta input to the CPU: a meta tensor has no data, so that is refused by LibTorch.
  EXPECT_THROW(model(meta_input), c10::Error);
}

}  // namespace
