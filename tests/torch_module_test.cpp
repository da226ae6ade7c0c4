// LibTorch's own modules (nn/torch_module.h): a torch::nn::Module tree wrapped into ferry's, then
// offloaded to the CPU and to disk and dispatched, with outputs equal to the resident torch model's.

#include "ferry/core/error.h"
#include "ferry/dispatch/big_modeling.h"
#include "ferry/nn/module_tensors.h"
#include "ferry/nn/torch_module.h"
#include "ferry/plan/tied_parameters.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>
#include <torch/nn.h>

#include "test_util.h"

#include <filesystem>

using namespace ferry;
using ferry_test::error_of;
using ferry_test::has;

namespace {

torch::nn::Sequential make_sequential() {
  torch::manual_seed(3);
  return torch::nn::Sequential(torch::nn::Linear(3, 8), torch::nn::ReLU(), torch::nn::LayerNorm(torch::nn::LayerNormOptions({8})),
                               torch::nn::Linear(8, 5));
}

// A layer of one's own computing with a weight it is given (registered, so the same TensorImpl).
struct SharedLinearImpl : torch::nn::Module {
  explicit SharedLinearImpl(const at::Tensor& w) { weight = register_parameter("weight", w); }
  at::Tensor forward(const at::Tensor& x) { return torch::linear(x, weight); }
  at::Tensor weight;
};
TORCH_MODULE(SharedLinear);

// A module of one's own, with a weight shared by two layers (as tied embeddings are).
struct TiedNetImpl : torch::nn::Module {
  TiedNetImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(4, 4));
    fc2 = register_module("fc2", SharedLinear(fc1->weight));
    scale = register_parameter("scale", torch::full({4}, 0.5));
  }
  at::Tensor forward(const at::Tensor& x) { return fc2->forward(torch::relu(fc1->forward(x))) * scale; }
  torch::nn::Linear fc1{nullptr};
  SharedLinear fc2{nullptr};
  at::Tensor scale;
};
TORCH_MODULE(TiedNet);

// SharedLinear's computation: its own forward (a class LibTorch does not define has none by default).
TorchModule::Forward shared_linear_forward() {
  return [](TorchModule& self, Args& args) -> c10::IValue { return self.wrapped_as<SharedLinearImpl>().forward(args.tensor(0)); };
}

// TiedNet's computation through the adapter: children called as (*self.child(name))(...).
TorchModule::Forward tied_net_forward() {
  return [](TorchModule& self, Args& args) -> c10::IValue {
    at::Tensor h = (*self.child("fc1"))(args.tensor(0));
    return (*self.child("fc2"))(at::relu(h)) * self.parameter("scale");
  };
}

}  // namespace

TEST(TorchModuleTest, WrapsTheTreeWithPythonNamesOverTheSameWeights) {
  c10::NoGradGuard no_grad;
  torch::nn::Sequential net = make_sequential();
  const at::Tensor x = torch::randn({2, 3});
  const at::Tensor expected = net->forward(x);
  const void* weight_memory = net[0]->as<torch::nn::Linear>()->weight.data_ptr();

  auto model = wrap_torch_module(net.ptr());
  EXPECT_EQ(model->class_name(), "Sequential");
  EXPECT_EQ(model->child("0")->class_name(), "Linear");
  EXPECT_EQ(model->child("2")->class_name(), "LayerNorm");
  std::vector<std::string> names;
  for (const auto& [name, t] : model->named_parameters()) names.push_back(name);
  EXPECT_EQ(names, (std::vector<std::string>{"0.weight", "0.bias", "2.weight", "2.bias", "3.weight", "3.bias"}));
  // The same memory, now owned by the ferry tree; the torch tensors are empty placeholders.
  EXPECT_EQ(model->child("0")->parameter("weight").data_ptr(), weight_memory);
  EXPECT_EQ(net[0]->as<torch::nn::Linear>()->weight.numel(), 0);
  EXPECT_TRUE(at::equal((*model)(x), expected));
  EXPECT_EQ(net[0]->as<torch::nn::Linear>()->weight.numel(), 0);  // emptied again after the call
  // Calling the torch model itself, bypassing the adapter, fails loudly rather than computing garbage.
  EXPECT_THROW(net->forward(x), c10::Error);
}

TEST(TorchModuleTest, CpuAndDiskOffloadGiveTheResidentOutputs) {
  c10::NoGradGuard no_grad;
  const at::Tensor x = (torch::manual_seed(1), torch::randn({4, 3}));
  for (const bool disk : {false, true}) {
    torch::nn::Sequential net = make_sequential();
    const at::Tensor expected = net->forward(x);
    auto model = wrap_torch_module(net.ptr());
    ferry_test::TempDir folder("torch-offload");
    std::shared_ptr<DispatchState> state =
        disk ? disk_offload(*model, folder.str()) : cpu_offload(*model);  // execution on the CPU
    for (const auto& [name, t] : model->named_parameters()) EXPECT_TRUE(t.is_meta()) << name;
    EXPECT_TRUE(at::equal((*model)(x), expected)) << (disk ? "disk" : "cpu");
    EXPECT_TRUE(at::equal((*model)(x), expected)) << "second call";
    EXPECT_EQ(net[3]->as<torch::nn::Linear>()->weight.numel(), 0);  // nothing left loaded
    remove_hook_from_submodules(*model);
  }
}

TEST(TorchModuleTest, AModuleOfOnesOwnWithTiedWeightsDispatchedOverCpuAndDisk) {
  c10::NoGradGuard no_grad;
  torch::manual_seed(5);
  TiedNet net;
  const at::Tensor x = torch::randn({3, 4});
  const at::Tensor expected = net->forward(x);

  TorchWrapOptions o;
  o.forwards["TiedNet"] = tied_net_forward();
  o.forwards["SharedLinear"] = shared_linear_forward();
  auto model = wrap_torch_module(net.ptr(), o);
  EXPECT_EQ(model->class_name(), "TiedNet");
  // The weight the torch model shares is one tied tensor in ferry's tree.
  const auto ties = find_tied_parameters(*model);
  ASSERT_EQ(ties.size(), 1u);
  EXPECT_EQ(ties[0], (std::vector<std::string>{"fc1.weight", "fc2.weight"}));
  EXPECT_TRUE(at::equal((*model)(x), expected));

  ferry_test::TempDir folder("torch-dispatch");
  DispatchOptions d;
  d.offload_dir = folder.str();
  dispatch_model(*model, DeviceMap{{"fc1", Placement::disk()}, {"fc2", Placement::disk()}, {"scale", Placement::cpu()}}, d);
  EXPECT_TRUE(model->child("fc1")->parameter("weight").is_meta());
  EXPECT_TRUE(at::equal((*model)(x), expected));
}

TEST(TorchModuleTest, MissingForwardsAndMisnamedKeysAreErrorsThatSayWhatToDo) {
  TiedNet net;
  auto model = wrap_torch_module(net.ptr());  // no forward for TiedNet
  const std::string missing = error_of([&] { (*model)(torch::randn({1, 4})); });
  EXPECT_TRUE(has(missing, "[TorchModule::forward] module '' (TiedNet")) << missing;
  EXPECT_TRUE(has(missing, "give one in TorchWrapOptions::forwards under its path \"\" or its class name \"TiedNet\""));
  // Its children are LibTorch layers: they run on their own.
  EXPECT_EQ((*model->child("fc1"))(torch::ones({1, 4})).sizes(), (std::vector<int64_t>{1, 4}));

  TiedNet other;
  TorchWrapOptions o;
  o.forwards["SharedLinear"] = shared_linear_forward();
  o.forwards["fc3"] = tied_net_forward();
  const std::string misnamed = error_of([&] { wrap_torch_module(other.ptr(), o); });
  EXPECT_TRUE(has(misnamed, "forwards names \"fc3\", which is neither the path nor the class name"));
  EXPECT_TRUE(has(misnamed, "\"fc1\" (Linear)"));

  // A Forward that calls a child's torch forward directly (no hook runs) fails, naming nothing silently.
  TiedNet bypass;
  TorchWrapOptions b;
  b.forwards["fc2"] = shared_linear_forward();
  b.forwards[""] = [](TorchModule& self, Args& args) -> c10::IValue {
    return self.wrapped_as<TiedNetImpl>().fc1->forward(args.tensor(0));
  };
  auto bypassing = wrap_torch_module(bypass.ptr(), b);
  EXPECT_THROW((*bypassing)(torch::ones({1, 4})), c10::Error);
  // A weight on meta that no hook loads (offloaded by hand): refused by name, the torch tensors left empty.
  torch::nn::Sequential seq = make_sequential();
  auto wrapped = wrap_torch_module(seq.ptr());
  set_module_tensor_to_device(*wrapped, "3.weight", c10::kMeta);
  const std::string meta = error_of([&] { (*wrapped)(torch::ones({1, 3})); });
  EXPECT_TRUE(has(meta, "[TorchModule::forward] module '3' (Linear) runs with its tensor 'weight' on the meta device"))
      << meta;
  EXPECT_EQ(seq[3]->as<torch::nn::Linear>()->bias.numel(), 0);
  const std::string wrong_type = error_of([&] { bypassing->wrapped_as<torch::nn::LinearImpl>(); });
  EXPECT_TRUE(has(wrong_type, "[TorchModule::wrapped_as] module '' wraps a ")) << wrong_type;
  EXPECT_TRUE(has(wrong_type, "TiedNetImpl, not a torch::nn::LinearImpl")) << wrong_type;
}
