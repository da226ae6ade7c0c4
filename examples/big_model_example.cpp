// Example: the big-model workflow on a small model, end to end.
//
//   ./build/big_model_example
//
// 1. builds a model of Linear + BatchNorm1d blocks under init_empty_weights (no memory, no init);
// 2. fills every weight with set_module_tensor_to_device from the state dict of a resident twin;
// 3. attaches hooks: one on the root that moves the inputs to the weights' device and one on every
//    block that counts its calls;
// 4. runs it and checks the output equals the twin's, then removes the hooks and checks again.
// Exit status 0 when everything matched.

#include "ferry/hooks/model_hook.h"
#include "ferry/hooks/send_to_device.h"
#include "ferry/nn/init_on_device.h"
#include "ferry/nn/layers.h"
#include "ferry/nn/module_tensors.h"

#include <ATen/ATen.h>

#include <cstdio>
#include <memory>
#include <vector>

namespace {

/// Linear -> BatchNorm1d -> ReLU.
class Block : public ferry::Module {
 public:
  Block(int64_t in, int64_t out) : Module("Block") {
    linear = register_module("linear", std::make_shared<ferry::Linear>(in, out));
    batchnorm = register_module("batchnorm", std::make_shared<ferry::BatchNorm1d>(out));
  }
  c10::IValue forward(ferry::Args& args) override { return at::relu((*batchnorm)((*linear)(args.tensor(0)))); }
  std::shared_ptr<ferry::Linear> linear;
  std::shared_ptr<ferry::BatchNorm1d> batchnorm;
};

/// Three blocks and a head.
class SmallModel : public ferry::Module {
 public:
  SmallModel() : Module("SmallModel") {
    blocks = register_module("blocks", std::make_shared<ferry::Sequential>());
    blocks->push_back(std::make_shared<Block>(16, 32));
    blocks->push_back(std::make_shared<Block>(32, 32));
    blocks->push_back(std::make_shared<Block>(32, 32));
    head = register_module("head", std::make_shared<ferry::Linear>(32, 4));
  }
  c10::IValue forward(ferry::Args& args) override { return (*head)((*blocks)(args.tensor(0))); }
  std::shared_ptr<ferry::Sequential> blocks;
  std::shared_ptr<ferry::Linear> head;
};

/// Moves every input to `device` before forward (what AlignDevicesHook does with its inputs).
struct MoveInputsHook : ferry::ModelHook {
  explicit MoveInputsHook(c10::Device device) : device(device) {}
  void pre_forward(ferry::Module&, ferry::Args& args) override { ferry::send_to_device(args, device); }
  c10::Device device;
};

/// Counts the calls of the module it is attached to.
struct CountingHook : ferry::ModelHook {
  void pre_forward(ferry::Module&, ferry::Args&) override { ++calls; }
  int calls = 0;
};

}  // namespace

int main() {
  at::manual_seed(0);
  const c10::Device cpu(c10::kCPU);

  // The resident twin, with non-trivial running statistics so that BatchNorm matters.
  SmallModel twin;
  for (const auto& [name, t] : twin.named_buffers())
    if (t.is_floating_point()) t.copy_(at::rand_like(t) + 0.5);

  // 1. Empty model: parameters on meta, buffers on meta too (include_buffers).
  std::shared_ptr<SmallModel> model;
  {
    auto guard = ferry::init_empty_weights(/*include_buffers=*/true);
    model = std::make_shared<SmallModel>();
  }
  size_t on_meta = 0, total = 0;
  for (const auto& [name, t] : model->state_dict()) {
    ++total;
    on_meta += t.is_meta();
  }
  std::printf("built SmallModel under init_empty_weights: %zu of %zu tensors on meta\n", on_meta, total);

  // 2. Fill it from the twin's state dict.
  for (const auto& [name, t] : twin.state_dict()) ferry::set_module_tensor_to_device(*model, name, cpu, t);
  size_t still_meta = 0;
  for (const auto& [name, t] : model->state_dict()) still_meta += t.is_meta();
  std::printf("loaded %zu tensors with set_module_tensor_to_device; %zu still on meta\n", total, still_meta);

  // 3. Hooks.
  ferry::add_hook_to_module(*model, std::make_shared<MoveInputsHook>(cpu));
  std::vector<std::shared_ptr<CountingHook>> counters;
  for (const auto& [name, block] : model->blocks->named_children()) {
    counters.push_back(std::make_shared<CountingHook>());
    ferry::add_hook_to_module(*block, counters.back());
  }

  // 4. Run and compare.
  at::Tensor x = at::randn({8, 16});
  at::Tensor expected = twin(x);
  at::Tensor hooked_out = (*model)(x);
  (*model)(x);
  bool hooked_ok = at::allclose(hooked_out, expected, 1e-5, 1e-6);
  bool counts_ok = true;
  for (const auto& c : counters) counts_ok = counts_ok && c->calls == 2;
  std::printf("hooked forward: output %s the twin's (max |diff| %.3g); block hooks counted %d, %d, %d calls\n",
              hooked_ok ? "equals" : "DIFFERS FROM", (hooked_out - expected).abs().max().item<double>(),
              counters[0]->calls, counters[1]->calls, counters[2]->calls);

  ferry::remove_hook_from_submodules(*model);
  at::Tensor plain_out = (*model)(x);
  bool plain_ok = at::equal(plain_out, hooked_out) && counters[0]->calls == 2;
  std::printf("hooks removed: output %s, counters unchanged: %s\n", plain_ok ? "identical" : "CHANGED",
              counters[0]->calls == 2 ? "yes" : "NO");

  bool ok = on_meta == total && still_meta == 0 && hooked_ok && counts_ok && plain_ok;
  std::printf("big_model_example: %s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}
