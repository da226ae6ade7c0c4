// The big-model API on real modules, real files and real tensors: every way of running a model
// gives the resident model's output, and removing the hooks gives the resident model back.

#include "ferry/core/error.h"
#include "ferry/core/log.h"
#include "ferry/dispatch/big_modeling.h"
#include "ferry/hooks/align_devices_hook.h"
#include "ferry/hooks/attach.h"
#include "ferry/hooks/cpu_offload_hook.h"
#include "ferry/hooks/layerwise_casting_hook.h"
#include "ferry/hooks/model_hook.h"
#include "ferry/io/offload.h"
#include "ferry/nn/module_tensors.h"
#include "ferry/plan/tied_parameters.h"
#include "dispatch_models.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>

using namespace ferry;
using ferry::testing::ModelForTest;
using ferry::testing::ModelWithUnusedSubModulesForTest;
using ferry::testing::TempDir;
using ferry::testing::TiedModel;

namespace {

at::Tensor run(Module& model, const at::Tensor& x) { return model(x); }

// Every parameter and buffer of the module, by name, cloned (the reference before dispatch).
std::map<std::string, at::Tensor> snapshot(Module& model) {
  std::map<std::string, at::Tensor> out;
  for (auto& [name, t] : model.named_parameters()) out[name] = t.clone();
  for (auto& [name, t] : model.named_buffers()) out[name] = t.clone();
  return out;
}

void expect_same_tensors(Module& model, const std::map<std::string, at::Tensor>& expected) {
  auto now = snapshot(model);
  ASSERT_EQ(now.size(), expected.size());
  for (const auto& [name, t] : expected) {
    ASSERT_TRUE(now.count(name)) << name;
    EXPECT_FALSE(now[name].is_meta()) << name;
    EXPECT_TRUE(at::equal(now[name], t)) << name;
  }
}

bool all_parameters_meta(Module& module) {
  for (auto& [name, t] : module.named_parameters())
    if (!t.is_meta()) return false;
  return true;
}

}  // namespace

TEST(DispatchTest, CpuOffloadMatchesResidentAndRemovesCleanly) {
  for (bool offload_buffers : {false, true}) {
    at::manual_seed(0);
    ModelForTest model;
    at::Tensor x = at::randn({2, 3});
    at::Tensor expected = run(model, x);
    auto before = snapshot(model);

    OffloadOptions options;
    options.offload_buffers = offload_buffers;
    cpu_offload(model, options);
    EXPECT_TRUE(all_parameters_meta(model));
    EXPECT_EQ(model.linear1->weight->is_meta(), true);
    EXPECT_EQ(model.batchnorm->running_mean->is_meta(), offload_buffers);
    EXPECT_TRUE(at::equal(run(model, x), expected));
    EXPECT_TRUE(all_parameters_meta(model)) << "weights must leave the module after forward";

    remove_hook_from_submodules(model);
    expect_same_tensors(model, before);
    EXPECT_TRUE(at::equal(run(model, x), expected));
  }
}

TEST(DispatchTest, DiskOffloadWritesAnAccelerateFolderAndMatches) {
  for (bool offload_buffers : {false, true}) {
    at::manual_seed(1);
    ModelForTest model;
    at::Tensor x = at::randn({2, 3});
    at::Tensor expected = run(model, x);
    TempDir dir;
    OffloadOptions options;
    options.offload_buffers = offload_buffers;
    disk_offload(model, dir.path(), options);
    EXPECT_TRUE(std::filesystem::exists(dir / "index.json"));
    EXPECT_TRUE(std::filesystem::exists(dir / "linear1.weight.dat"));
    EXPECT_TRUE(all_parameters_meta(model));
    EXPECT_TRUE(at::equal(run(model, x), expected));
    remove_hook_from_submodules(model);
    EXPECT_TRUE(at::equal(run(model, x), expected));
  }
}

TEST(DispatchTest, DiskOffloadReusesACompleteFolder) {
  at::manual_seed(2);
  ModelForTest source;
  TempDir dir;
  io::offload_state_dict(dir.path(), source.state_dict());
  at::Tensor x = at::randn({2, 3});
  at::Tensor expected = run(source, x);
  ModelForTest other;  // different random weights: the folder's must win
  disk_offload(other, dir.path());
  EXPECT_TRUE(at::equal(run(other, x), expected));
}

TEST(DispatchTest, PreloadModuleClassesLoadUnusedSubmodules) {
  for (bool disk : {false, true}) {
    for (bool offload_buffers : {false, true}) {
      at::manual_seed(3);
      ModelWithUnusedSubModulesForTest model;
      at::Tensor x = at::randn({2, 3});
      at::Tensor expected = run(model, x);
      TempDir dir;
      OffloadOptions options;
      options.offload_buffers = offload_buffers;
      options.preload_module_classes = {"ModuleWithUnusedSubModules"};
      if (disk) disk_offload(model, dir.path(), options);
      else cpu_offload(model, options);
      EXPECT_TRUE(at::equal(run(model, x), expected)) << "disk=" << disk << " offload_buffers=" << offload_buffers;
      remove_hook_from_submodules(model);
      EXPECT_TRUE(at::equal(run(model, x), expected));
    }
  }
}

TEST(DispatchTest, WithoutPreloadAnUnusedSubmoduleFailsClearly) {
  ModelWithUnusedSubModulesForTest model;
  cpu_offload(model);
  EXPECT_ANY_THROW(run(model, at::randn({2, 3})));  // the block reads a meta weight: ATen refuses
}

TEST(DispatchTest, DispatchModelDiskOnly) {
  at::manual_seed(4);
  ModelForTest model;
  at::Tensor x = at::randn({2, 3});
  at::Tensor expected = run(model, x);
  TempDir dir;
  DispatchOptions options;
  options.offload_dir = dir.path();
  auto state = dispatch_model(
      model, DeviceMap{{"linear1", Placement::disk()}, {"batchnorm", Placement::disk()}, {"linear2", Placement::disk()}},
      options);
  EXPECT_EQ(state->main_device, c10::Device(c10::kCPU));
  EXPECT_TRUE(all_parameters_meta(model));
  EXPECT_TRUE(at::equal(run(model, x), expected));
}

TEST(DispatchTest, DispatchModelMixedCpuAndDiskKeepsCpuModulesResident) {
  at::manual_seed(5);
  ModelForTest model;
  at::Tensor x = at::randn({2, 3});
  at::Tensor expected = run(model, x);
  auto before = snapshot(model);
  TempDir dir;
  DispatchOptions options;
  options.offload_dir = dir.path();
  dispatch_model(model,
                 DeviceMap{{"linear1", Placement::cpu()}, {"batchnorm", Placement::disk()},
                           {"linear2", Placement::cpu()}},
                 options);
  EXPECT_FALSE(model.linear1->weight->is_meta());  // main device is the CPU: cpu modules stay resident
  EXPECT_TRUE(model.batchnorm->weight->is_meta());
  EXPECT_FALSE(has_offloaded_params(*model.linear1));
  EXPECT_TRUE(has_offloaded_params(*model.batchnorm));
  EXPECT_TRUE(at::equal(run(model, x), expected));
  remove_hook_from_submodules(model);
  expect_same_tensors(model, before);
}

TEST(DispatchTest, ForceHooksOnASingleDevice) {
  at::manual_seed(6);
  ModelForTest model;
  at::Tensor x = at::randn({2, 3});
  at::Tensor expected = run(model, x);
  DispatchOptions options;
  options.force_hooks = true;
  dispatch_model(model, DeviceMap{{"", Placement::cpu()}}, options);
  EXPECT_TRUE(model.hook() != nullptr);
  EXPECT_TRUE(at::equal(run(model, x), expected));
}

TEST(DispatchTest, ADeviceMapMissingATensorIsRejectedBeforeAnythingMoves) {
  ModelForTest model;
  auto before = snapshot(model);
  try {
    dispatch_model(model, DeviceMap{{"linear1", Placement::cpu()}, {"linear2", Placement::disk()}});
    FAIL() << "expected an error";
  } catch (const ferry::Error& e) {
    std::string message = e.what();
    EXPECT_NE(message.find("[validate_device_map]"), std::string::npos) << message;
    EXPECT_NE(message.find("batchnorm.weight"), std::string::npos) << message;
    EXPECT_NE(message.find("(and 4 more tensors)"), std::string::npos) << message;
  }
  EXPECT_EQ(model.hook(), nullptr);
  expect_same_tensors(model, before);
}

TEST(DispatchTest, UnknownModulesAndMissingOffloadFolderAreErrors) {
  ModelForTest model;
  try {
    dispatch_model(model, DeviceMap{{"", Placement::cpu()}, {"linear9", Placement::disk()}});
    FAIL();
  } catch (const ferry::Error& e) {
    EXPECT_NE(std::string(e.what()).find("'linear9'"), std::string::npos) << e.what();
  }
  try {
    dispatch_model(model, DeviceMap{{"linear1", Placement::cpu()}, {"batchnorm", Placement::cpu()},
                                    {"linear2", Placement::disk()}});
    FAIL();
  } catch (const ferry::Error& e) {
    EXPECT_NE(std::string(e.what()).find("no offload folder"), std::string::npos) << e.what();
  }
}

TEST(DispatchTest, MovingAnOffloadedModelIsRefusedUntilHooksAreRemoved) {
  ModelForTest model;
  TempDir dir;
  DispatchOptions options;
  options.offload_dir = dir.path();
  dispatch_model(model, DeviceMap{{"linear1", Placement::disk()}, {"batchnorm", Placement::cpu()},
                                  {"linear2", Placement::cpu()}},
                 options);
  try {
    model.to(c10::Device(c10::kCPU));
    FAIL();
  } catch (const ferry::Error& e) {
    std::string message = e.what();
    EXPECT_NE(message.find("cannot move a dispatched model"), std::string::npos) << message;
    EXPECT_NE(message.find("'linear1'"), std::string::npos) << message;
    EXPECT_NE(message.find("remove_hook_from_submodules"), std::string::npos) << message;
  }
  remove_hook_from_submodules(model);
  remove_hook_from_submodules(model);  // twice is safe
  model.to(c10::Device(c10::kCPU));
  model.to(at::kDouble);
  EXPECT_EQ(model.linear1->weight->scalar_type(), at::kDouble);
}

TEST(DispatchTest, TiedWeightsStayTiedAndEveryPlacementMatches) {
  at::manual_seed(7);
  TiedModel model;
  at::Tensor ids = at::randint(0, 32, {2, 5});
  at::Tensor expected = run(model, ids);
  auto groups = find_tied_parameters(model);
  ASSERT_EQ(groups, (std::vector<std::vector<std::string>>{{"embed.weight", "head.weight"}}));

  std::vector<DeviceMap> maps = {
      DeviceMap{{"", Placement::disk()}},
      DeviceMap{{"embed", Placement::cpu()}, {"blocks.0", Placement::disk()}, {"blocks.1", Placement::cpu()},
                {"blocks.2", Placement::disk()}, {"gain", Placement::cpu()}, {"head", Placement::disk()}},
      DeviceMap{{"embed", Placement::disk()}, {"blocks", Placement::cpu()}, {"gain", Placement::disk()},
                {"head", Placement::cpu()}},
  };
  for (const auto& map : maps) {
    for (int64_t prefetch : {int64_t{0}, int64_t{1} << 20}) {
      TempDir dir;
      DispatchOptions options;
      options.offload_dir = dir.path();
      options.streamer.prefetch_bytes = prefetch;
      dispatch_model(model, map, options);
      EXPECT_TRUE(at::equal(run(model, ids), expected)) << map.to_json();
      EXPECT_TRUE(at::equal(run(model, ids), expected)) << map.to_json() << " (second call)";
      remove_hook_from_submodules(model);
      EXPECT_TRUE(model.embed->weight->is_same(*model.head->weight)) << "tie broken by " << map.to_json();
      EXPECT_TRUE(at::equal(run(model, ids), expected));
    }
  }
}

TEST(DispatchTest, AlignDevicesHookAsCpuOffload) {
  // test_hooks.py test_align_devices_as_cpu_offload
  for (bool offload_buffers : {false, true}) {
    at::manual_seed(8);
    ModelForTest model;
    at::Tensor x = at::randn({2, 3});
    at::Tensor expected = run(model, x);
    AlignDevicesOptions o;
    o.execution_device = c10::Device(c10::kCPU);
    o.offload = true;
    o.offload_buffers = offload_buffers;
    add_hook_to_module(*model.linear1, std::make_shared<AlignDevicesHook>(o));
    add_hook_to_module(*model.batchnorm, std::make_shared<AlignDevicesHook>(o));
    add_hook_to_module(*model.linear2, std::make_shared<AlignDevicesHook>(o));
    EXPECT_TRUE(model.linear1->weight->is_meta());
    EXPECT_TRUE(model.batchnorm->weight->is_meta());
    EXPECT_EQ(model.batchnorm->running_mean->is_meta(), offload_buffers);
    EXPECT_TRUE(at::equal(run(model, x), expected));
    remove_hook_from_submodules(model);
    EXPECT_FALSE(model.linear1->weight->is_meta());
    EXPECT_FALSE(model.batchnorm->running_mean->is_meta());
    EXPECT_TRUE(at::equal(run(model, x), expected));
  }
}

TEST(DispatchTest, AttachAlignDeviceHookWithAWeightsMap) {
  // test_attach_align_device_hook_as_cpu_offload(_with_weight_map)
  for (bool with_map : {false, true}) {
    at::manual_seed(9);
    ModelForTest model;
    at::Tensor x = at::randn({2, 3});
    at::Tensor expected = run(model, x);
    io::WeightsMapPtr weights = with_map ? io::make_state_dict_weights_map(model.state_dict()) : nullptr;
    attach_align_device_hook(model, c10::Device(c10::kCPU), true, weights);
    EXPECT_TRUE(all_parameters_meta(model));
    EXPECT_FALSE(model.batchnorm->running_mean->is_meta());
    EXPECT_TRUE(at::equal(run(model, x), expected));
    remove_hook_from_submodules(model);
    EXPECT_FALSE(all_parameters_meta(model));
    EXPECT_TRUE(at::equal(run(model, x), expected));
  }
}

// ---- attach_align_device_hook_on_blocks in every form Accelerate takes ---------------------------------

namespace {

// The AlignDevicesHook on `module` (directly, or the first of a SequentialHook), or null.
const AlignDevicesHook* align_hook(const Module& module) {
  if (auto* h = dynamic_cast<const AlignDevicesHook*>(module.hook().get())) return h;
  if (auto* seq = dynamic_cast<const SequentialHook*>(module.hook().get()))
    for (const auto& h : seq->hooks)
      if (auto* a = dynamic_cast<const AlignDevicesHook*>(h.get())) return a;
  return nullptr;
}

// Runs `attach` on a fresh ModelForTest and checks the output equals the resident model's, before and
// after remove_hook_from_submodules; returns the model, hooks still attached, for more checks.
struct BlocksCase {
  std::unique_ptr<ModelForTest> model = std::make_unique<ModelForTest>();
  at::Tensor x, expected;
};
BlocksCase run_blocks_case(const std::function<void(ModelForTest&, io::WeightsMapPtr)>& attach) {
  at::manual_seed(21);
  BlocksCase c;
  c.x = at::randn({2, 3});
  c.expected = run(*c.model, c.x);
  attach(*c.model, io::make_state_dict_weights_map(c.model->state_dict()));
  EXPECT_TRUE(at::equal(run(*c.model, c.x), c.expected));
  return c;
}

}  // namespace

TEST(AttachOnBlocksTest, OneDeviceAndOneFlag) {
  const c10::Device cpu(c10::kCPU);
  // (device, False): one hook on the root, placing the whole model, outputs on the input's device.
  auto c = run_blocks_case([&](ModelForTest& m, io::WeightsMapPtr) { attach_align_device_hook_on_blocks(m, cpu, false, nullptr); });
  ASSERT_NE(align_hook(*c.model), nullptr);
  EXPECT_TRUE(align_hook(*c.model)->options().place_submodules);
  EXPECT_TRUE(align_hook(*c.model)->options().io_same_device);
  EXPECT_EQ(c.model->linear1->hook(), nullptr);
  EXPECT_FALSE(c.model->linear1->weight->is_meta());
  // (device, True): per-module offloading hooks (attach_align_device_hook), weights from the map.
  c = run_blocks_case([&](ModelForTest& m, io::WeightsMapPtr w) { attach_align_device_hook_on_blocks(m, c10::kCPU, true, w); });
  EXPECT_TRUE(all_parameters_meta(*c.model));
  EXPECT_FALSE(c.model->batchnorm->running_mean->is_meta());
  remove_hook_from_submodules(*c.model);
  EXPECT_TRUE(at::equal(run(*c.model, c.x), c.expected));
  // (None, False): a hook that moves nothing.
  c = run_blocks_case([&](ModelForTest& m, io::WeightsMapPtr) { attach_align_device_hook_on_blocks(m, std::nullopt, false, nullptr); });
  ASSERT_NE(align_hook(*c.model), nullptr);
  EXPECT_FALSE(align_hook(*c.model)->options().execution_device.has_value());
}

TEST(AttachOnBlocksTest, MapsOfDevicesAndFlagsAsDispatchModelPassesThem) {
  const c10::Device cpu(c10::kCPU);
  // (map, map), as dispatch_model builds them: "" only in the device map.
  auto c = run_blocks_case([&](ModelForTest& m, io::WeightsMapPtr w) {
    attach_align_device_hook_on_blocks(m, {{"", cpu}, {"linear1", cpu}, {"batchnorm", cpu}, {"linear2", cpu}},
                                       {{"linear1", true}, {"batchnorm", false}, {"linear2", true}}, w);
  });
  EXPECT_TRUE(c.model->linear1->weight->is_meta());
  EXPECT_TRUE(c.model->linear2->bias->is_meta());
  EXPECT_FALSE(c.model->batchnorm->weight->is_meta());
  ASSERT_NE(align_hook(*c.model->batchnorm), nullptr);
  EXPECT_TRUE(align_hook(*c.model->batchnorm)->options().place_submodules);
  EXPECT_FALSE(align_hook(*c.model->batchnorm)->options().io_same_device);
  ASSERT_NE(align_hook(*c.model), nullptr);
  EXPECT_TRUE(align_hook(*c.model)->options().io_same_device);
  remove_hook_from_submodules(*c.model);
  EXPECT_TRUE(at::equal(run(*c.model, c.x), c.expected));
  // std::map values convert too (dispatch_model's call).
  std::map<std::string, c10::Device> devices{{"", cpu}, {"linear2", cpu}};
  std::map<std::string, bool> flags{{"linear2", true}};
  c = run_blocks_case([&](ModelForTest& m, io::WeightsMapPtr w) { attach_align_device_hook_on_blocks(m, devices, flags, w); });
  EXPECT_TRUE(c.model->linear2->weight->is_meta());
  EXPECT_FALSE(c.model->linear1->weight->is_meta());
  EXPECT_EQ(c.model->linear1->hook(), nullptr);  // in neither map: no hook
}

TEST(AttachOnBlocksTest, MixedFormsBroadcastTheSingleOneOverTheOthersKeys) {
  const c10::Device cpu(c10::kCPU);
  // (map, True): the flag is broadcast over the device map's blocks; batchnorm, in no map, is left alone.
  auto c = run_blocks_case([&](ModelForTest& m, io::WeightsMapPtr w) {
    attach_align_device_hook_on_blocks(m, {{"linear1", cpu}, {"linear2", cpu}}, true, w);
  });
  EXPECT_TRUE(c.model->linear1->weight->is_meta());
  EXPECT_TRUE(c.model->linear2->weight->is_meta());
  EXPECT_FALSE(c.model->batchnorm->weight->is_meta());
  EXPECT_EQ(c.model->batchnorm->hook(), nullptr);
  ASSERT_NE(align_hook(*c.model), nullptr);  // the root, in neither map: a hook without a device
  EXPECT_FALSE(align_hook(*c.model)->options().execution_device.has_value());
  EXPECT_TRUE(align_hook(*c.model)->options().io_same_device);
  // (map, False): every mapped block placed by one hook, nothing offloaded.
  c = run_blocks_case([&](ModelForTest& m, io::WeightsMapPtr w) {
    attach_align_device_hook_on_blocks(m, {{"linear1", cpu}, {"linear2", cpu}}, false, w);
  });
  EXPECT_FALSE(c.model->linear1->weight->is_meta());
  ASSERT_NE(align_hook(*c.model->linear1), nullptr);
  EXPECT_TRUE(align_hook(*c.model->linear1)->options().place_submodules);
  // (device, map): the device is broadcast over the offload map's blocks.
  c = run_blocks_case([&](ModelForTest& m, io::WeightsMapPtr w) {
    attach_align_device_hook_on_blocks(m, cpu, {{"linear1", true}, {"batchnorm", false}}, w);
  });
  EXPECT_TRUE(c.model->linear1->weight->is_meta());
  EXPECT_FALSE(c.model->batchnorm->weight->is_meta());
  ASSERT_NE(align_hook(*c.model->batchnorm), nullptr);
  EXPECT_EQ(align_hook(*c.model->batchnorm)->options().execution_device, cpu);
  EXPECT_EQ(c.model->linear2->hook(), nullptr);
  // (None, map): hooks without a device; offloaded weights are loaded to the CPU (where Accelerate's
  // hook, asked to load to None, fails at the first forward).
  c = run_blocks_case([&](ModelForTest& m, io::WeightsMapPtr w) {
    attach_align_device_hook_on_blocks(m, std::nullopt, {{"linear1", true}, {"linear2", false}}, w);
  });
  EXPECT_TRUE(c.model->linear1->weight->is_meta());
  EXPECT_FALSE(c.model->linear2->weight->is_meta());
  ASSERT_NE(align_hook(*c.model->linear2), nullptr);
  EXPECT_FALSE(align_hook(*c.model->linear2)->options().execution_device.has_value());
  remove_hook_from_submodules(*c.model);
  EXPECT_TRUE(at::equal(run(*c.model, c.x), c.expected));
}

TEST(DispatchTest, AStoredTensorOfTheWrongShapeIsRejectedAtAttach) {
  ModelForTest model;
  io::NamedTensors sd = model.state_dict();
  for (auto& [name, t] : sd)
    if (name == "linear2.weight") t = at::zeros({2, 2});
  try {
    attach_align_device_hook(model, c10::Device(c10::kCPU), true, io::make_state_dict_weights_map(sd));
    FAIL();
  } catch (const ferry::Error& e) {
    std::string message = e.what();
    EXPECT_NE(message.find("'weight' has shape [2, 2]"), std::string::npos) << message;
    EXPECT_NE(message.find("expects [5, 4]"), std::string::npos) << message;
  }
}

TEST(DispatchTest, HasOffloadedParamsAndAlignModuleDevice) {
  at::manual_seed(10);
  ModelForTest model;
  auto before = snapshot(model);
  EXPECT_FALSE(has_offloaded_params(*model.linear1));
  {
    AlignModuleDevice aligned(*model.batchnorm);  // un-hooked: nothing moves
    EXPECT_FALSE(model.batchnorm->weight->is_meta());
  }
  cpu_offload(model);
  EXPECT_TRUE(has_offloaded_params(*model.linear1));
  EXPECT_FALSE(has_offloaded_params(model)) << "a SequentialHook on the root does not count";
  {
    AlignModuleDevice aligned(*model.batchnorm);
    EXPECT_FALSE(model.batchnorm->weight->is_meta());
    EXPECT_TRUE(at::equal(*model.batchnorm->weight, before["batchnorm.weight"]));
    EXPECT_TRUE(model.linear1->weight->is_meta());
  }
  EXPECT_TRUE(model.batchnorm->weight->is_meta());
  {
    AlignModuleDevice aligned(*model.linear2, c10::Device(c10::kCPU));
    EXPECT_TRUE(model.linear2->weight->device().is_cpu());
  }
  EXPECT_TRUE(model.linear2->weight->is_meta());
}

TEST(DispatchTest, StateDictOfAnOffloadedModelEqualsTheOriginal) {
  at::manual_seed(11);
  TiedModel model;
  auto original = model.state_dict();
  TempDir dir;
  disk_offload(model, dir.path());
  auto offloaded = get_state_dict_offloaded_model(model);
  ASSERT_EQ(offloaded.size(), original.size());
  for (size_t i = 0; i < original.size(); ++i) {
    EXPECT_EQ(offloaded[i].first, original[i].first);
    EXPECT_TRUE(at::equal(offloaded[i].second, original[i].second)) << original[i].first;
  }
}

TEST(DispatchTest, ExtractSubmodulesStateDict) {
  io::NamedTensors sd = {{"a.1", at::zeros({1})}, {"a.10", at::ones({1})}, {"a.2", at::full({1}, 2.0)}};
  auto out = extract_submodules_state_dict(sd, {"a.1", "a.2"});
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].first, "a.1");
  EXPECT_EQ(out[1].first, "a.2");
  io::NamedTensors sd2 = {{"a.1.a", at::zeros({1})}, {"a.10.a", at::ones({1})}, {"a.2.a", at::full({1}, 2.0)}};
  auto out2 = extract_submodules_state_dict(sd2, {"a.1", "a.2"});
  ASSERT_EQ(out2.size(), 2u);
  EXPECT_EQ(out2[1].first, "a.2.a");
}

TEST(DispatchTest, CpuOffloadWithHookChainsModels) {
  at::manual_seed(12);
  Linear model1(4, 5), model2(5, 5);
  at::Tensor x = at::randn({2, 4});
  at::Tensor expected = model2(model1(x));
  auto [m1, hook1] = cpu_offload_with_hook(model1, c10::Device(c10::kCPU));  // Accelerate's (model, hook)
  auto [m2, hook2] = cpu_offload_with_hook(model2, c10::Device(c10::kCPU), hook1);
  EXPECT_EQ(&m1, &model1);
  EXPECT_TRUE(at::equal(m2(m1(x)), expected));
  hook1->offload();
  hook2->offload();
  EXPECT_TRUE(model1.weight->device().is_cpu());
  hook2->remove();
  EXPECT_EQ(model2.hook(), nullptr);
}

TEST(DispatchTest, LayerwiseCastingStoresSmallAndComputesInFloat32) {
  for (auto storage : {at::kHalf, at::kBFloat16}) {
    at::manual_seed(13);
    ModelForTest model;
    at::Tensor x = at::randn({2, 3});
    attach_layerwise_casting_hooks(model, storage, at::kFloat, {"batchnorm"});
    EXPECT_EQ(model.linear1->weight->scalar_type(), storage);
    EXPECT_EQ(model.linear2->bias->scalar_type(), storage);
    EXPECT_EQ(model.batchnorm->weight->scalar_type(), at::kFloat) << "skipped by pattern";
    EXPECT_EQ(model.batchnorm->num_batches_tracked->scalar_type(), at::kLong);
    at::Tensor stored = *model.linear1->weight;

    // Reference: the same math with the weights rounded to the storage dtype.
    ModelForTest reference;
    for (auto& [name, t] : model.state_dict()) set_module_tensor_to_device(reference, name, at::kCPU, t.to(at::kFloat));
    at::Tensor out = model(x);
    EXPECT_EQ(out.scalar_type(), at::kFloat);
    EXPECT_TRUE(at::allclose(out, reference(x), 1e-6, 1e-6));
    EXPECT_TRUE(model.linear1->weight->is_same(stored)) << "storage tensors are put back after forward";
  }
}

TEST(DispatchTest, LayerwiseCastingSavesMemory) {
  ModelForTest model;
  auto bytes = [&] {
    int64_t n = 0;
    for (auto& [name, t] : model.named_parameters()) n += t.numel() * t.element_size();
    return n;
  };
  int64_t before = bytes();
  attach_layerwise_casting_hooks(model, at::kHalf, at::kFloat);
  int64_t linear_bytes = (4 * 3 + 4 + 5 * 4 + 5) * 4;
  EXPECT_EQ(bytes(), before - linear_bytes / 2);
}

TEST(DispatchTest, AnExceptionInForwardReleasesOffloadedWeights) {
  ModelForTest model;
  cpu_offload(model);
  EXPECT_ANY_THROW(model(at::randn({2, 7})));  // wrong input width: linear1 throws
  EXPECT_TRUE(all_parameters_meta(model)) << "weights loaded before the exception must be dropped";
  at::Tensor ok = model(at::randn({2, 3}));
  EXPECT_EQ(ok.sizes(), (std::vector<int64_t>{2, 5}));
}

TEST(DispatchTest, DispatchingADispatchedModelStartsFromTheResidentModel) {
  at::manual_seed(14);
  TiedModel model;
  at::Tensor ids = at::randint(0, 32, {1, 4});
  at::Tensor expected = run(model, ids);
  TempDir dir1, dir2;
  DispatchOptions options;
  options.offload_dir = dir1.path();
  dispatch_model(model, DeviceMap{{"embed", Placement::cpu()}, {"blocks", Placement::disk()},
                                  {"gain", Placement::cpu()}, {"head", Placement::cpu()}}, options);
  EXPECT_TRUE(at::equal(run(model, ids), expected));
  options.offload_dir = dir2.path();
  dispatch_model(model, DeviceMap{{"", Placement::disk()}}, options);
  EXPECT_TRUE(at::equal(run(model, ids), expected));
  cpu_offload(model);
  EXPECT_TRUE(at::equal(run(model, ids), expected));
  remove_hook_from_submodules(model);
  EXPECT_TRUE(model.embed->weight->is_same(*model.head->weight));
}

// ---- load_checkpoint_and_dispatch on real safetensors files ------------------------------------

#include "ferry/dispatch/load_checkpoint_and_dispatch.h"
#include "ferry/io/safetensors.h"
#include "ferry/nn/init_on_device.h"
#include "ferry/plan/max_memory.h"

namespace {

std::shared_ptr<TiedModel> empty_tied_model() {
  auto guard = init_empty_weights();
  return std::make_shared<TiedModel>();
}

// The checkpoint as transformers saves it: a tied weight once.
void save_checkpoint(Module& model, const std::string& path) {
  io::NamedTensors tensors;
  for (auto& [name, t] : model.state_dict())
    if (name != "head.weight") tensors.emplace_back(name, t);
  io::save_safetensors(path, tensors, {{"format", "pt"}});
}

}  // namespace

TEST(DispatchTest, LoadCheckpointAndDispatchEveryStrategyMatchesResident) {
  at::manual_seed(15);
  TiedModel reference;
  at::Tensor ids = at::randint(0, 32, {2, 7});
  at::Tensor expected = run(reference, ids);
  TempDir dir;
  save_checkpoint(reference, dir / "model.safetensors");

  // CPU budget below the model (about 11 KiB): part of it must go to disk.
  for (const char* strategy : {"auto", "balanced", "balanced_low_0", "sequential"}) {
    auto model = empty_tied_model();
    LoadAndDispatchOptions options;
    options.strategy = strategy;
    options.plan.max_memory = parse_max_memory("cpu=6000");
    options.plan.no_split.classes = {"Block"};
    DispatchResult result = load_checkpoint_and_dispatch(*model, dir / "model.safetensors", options);
    bool has_disk = false;
    for (const auto& [name, p] : result.device_map) has_disk |= p.is_disk();
    EXPECT_TRUE(has_disk) << strategy << ": " << result.device_map.to_json();
    EXPECT_TRUE(result.load.unexpected_keys.empty());
    EXPECT_TRUE(at::equal(run(*model, ids), expected)) << strategy << ": " << result.device_map.to_json();
    EXPECT_TRUE(at::equal(run(*model, ids), expected)) << strategy << " (second call)";
  }
}

TEST(DispatchTest, LoadCheckpointAndDispatchWithAGivenMapCastsAndOffloads) {
  at::manual_seed(16);
  TiedModel reference;
  at::Tensor ids = at::randint(0, 32, {1, 5});
  TempDir dir;
  save_checkpoint(reference, dir / "model.safetensors");
  auto model = empty_tied_model();
  LoadAndDispatchOptions options;
  options.device_map = DeviceMap{{"embed", Placement::cpu()}, {"blocks.0", Placement::cpu()},
                                 {"blocks.1", Placement::disk()}, {"blocks.2", Placement::disk()},
                                 {"gain", Placement::cpu()}, {"head", Placement::disk()}};
  options.dtype = at::kDouble;
  DispatchResult result = load_checkpoint_and_dispatch(*model, dir / "model.safetensors", options);
  EXPECT_EQ(model->embed->weight->scalar_type(), at::kDouble);
  EXPECT_TRUE(model->blocks->at(1)->child("up")->parameter("weight").is_meta());
  reference.to(at::kDouble);
  EXPECT_TRUE(at::allclose(run(*model, ids), run(reference, ids), 1e-12, 1e-12));
  EXPECT_GT(result.state->offloaded_bytes_per_forward, 0);
}

TEST(DispatchTest, LoadCheckpointAndDispatchRefusesABadStrategy) {
  auto model = empty_tied_model();
  LoadAndDispatchOptions options;
  options.strategy = "fastest";
  try {
    load_checkpoint_and_dispatch(*model, "/nonexistent", options);
    FAIL();
  } catch (const ferry::Error& e) {
    EXPECT_NE(std::string(e.what()).find("fastest"), std::string::npos) << e.what();
  }
}

// Issue 18: the layers Accelerate casts (Linear and the convolutions), matched as isinstance does:
// a user's subclass of ferry::Linear is cast; an Embedding or a norm keeps its dtype.
TEST(DispatchTest, LayerwiseCastingCastsWhatAccelerateCasts) {
  class MyProjection : public Linear {
   public:
    MyProjection() : Linear(4, 4) { set_class_name("MyProjection"); }
  };
  class Block : public Module {
   public:
    Block() : Module("Block") {
      embed = register_module("embed", std::make_shared<Embedding>(10, 4));
      proj = register_module("proj", std::make_shared<MyProjection>());
      norm = register_module("norm", std::make_shared<LayerNorm>(4));
    }
    c10::IValue forward(Args& args) override { return (*norm)((*proj)((*embed)(args.tensor(0)))); }
    std::shared_ptr<Embedding> embed;
    std::shared_ptr<MyProjection> proj;
    std::shared_ptr<LayerNorm> norm;
  };
  Block block;
  attach_layerwise_casting_hooks(block, at::kBFloat16, at::kFloat);
  EXPECT_EQ(block.proj->weight->scalar_type(), at::kBFloat16) << "a subclass of Linear is a Linear";
  EXPECT_EQ(block.embed->weight->scalar_type(), at::kFloat) << "Accelerate does not cast embeddings";
  EXPECT_EQ(block.norm->weight->scalar_type(), at::kFloat);
  at::Tensor out = block(at::tensor({1, 2, 3}, at::kLong));
  EXPECT_EQ(out.scalar_type(), at::kFloat);
}

// Issue 18: a device-map key that names no module is a warning, as in Accelerate (the model is
// dispatched by its other entries); with strict it is an error.
TEST(DispatchTest, UnknownDeviceMapKeysWarnOrFailWhenStrict) {
  ModelForTest model;
  const DeviceMap map{{"linear1", Placement::cpu()}, {"batchnorm", Placement::cpu()}, {"linear2", Placement::cpu()},
                      {"linear3", Placement::cpu()}};
  {
    ScopedLogCapture capture;
    dispatch_model(model, map);
    EXPECT_TRUE(capture.contains(LogLevel::Warning,
                                 "the device map names 'linear3', which is not a module or tensor of this ModelForTest"));
    EXPECT_TRUE(capture.contains(LogLevel::Warning, "the entry is ignored"));
  }
  remove_hook_from_submodules(model);
  DispatchOptions strict;
  strict.strict = true;
  const std::string msg = ferry_test::error_of([&] { dispatch_model(model, map, strict); });
  EXPECT_NE(msg.find("the device map names 'linear3'"), std::string::npos) << msg;
}

// Issue 18: Accelerate's get_state_dict_from_offload and check_tied_parameters_on_same_device.
TEST(DispatchTest, StateDictFromOffloadAndTiedParametersOnDifferentDevices) {
  at::manual_seed(15);
  ModelForTest model;
  const at::Tensor w1 = model.linear1->weight->clone();
  cpu_offload(model);
  ASSERT_TRUE(model.linear1->weight->is_meta());
  NamedTensors sd = {{"linear1.weight", at::Tensor()}, {"linear1.bias", at::Tensor()}, {"linear2.weight", at::Tensor()}};
  get_state_dict_from_offload(*model.linear1, "linear1.weight", sd);
  EXPECT_TRUE(at::equal(sd[0].second, w1)) << "loaded from the offloaded weights";
  EXPECT_TRUE(sd[1].second.defined());
  EXPECT_FALSE(sd[2].second.defined()) << "another module's entry is left alone";
  EXPECT_TRUE(model.linear1->weight->is_meta()) << "offloaded again afterwards";
  remove_hook_from_submodules(model);

  ScopedLogCapture capture;
  const std::vector<std::vector<std::string>> tied = {{"lm_head.weight", "embed.weight"}};
  check_tied_parameters_on_same_device(tied, DeviceMap{{"embed", Placement::cpu()}, {"lm_head", Placement::cpu()}});
  EXPECT_FALSE(capture.contains("Tied parameters"));
  check_tied_parameters_on_same_device(tied, DeviceMap{{"embed", Placement::cpu()}, {"lm_head", Placement::disk()}});
  EXPECT_TRUE(capture.contains(LogLevel::Warning, "Tied parameters are on different devices (lm_head.weight: disk, embed.weight: cpu)"));
}

// Issue 18: dispatch_model's offload_index, as Accelerate's: the folder's entries come from the
// index given (here the folder has no index.json at all), not from the folder's own index.
TEST(DispatchTest, DispatchModelWithAnOffloadIndex) {
  at::manual_seed(16);
  ModelForTest model;
  at::Tensor x = at::randn({2, 3});
  at::Tensor expected = run(model, x);
  TempDir dir;
  io::OffloadIndex index;
  for (const auto& [name, t] : model.state_dict()) io::offload_weight(t, name, dir.str(), &index);
  ASSERT_FALSE(io::has_offload_index(dir.str()));
  DispatchOptions options;
  options.offload_dir = dir.str();
  options.offload_index = index;
  dispatch_model(model, DeviceMap{{"", Placement::disk()}}, options);
  EXPECT_TRUE(all_parameters_meta(model));
  EXPECT_TRUE(at::equal(run(model, x), expected));
  EXPECT_FALSE(io::has_offload_index(dir.str())) << "nothing written: the index given was used";
}
