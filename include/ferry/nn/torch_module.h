#pragma once
/// \file
/// LibTorch's own modules (a `torch::nn::Module` tree: `torch::nn::Linear`, `Sequential`, a user's
/// `torch::nn::Module` subclass) dispatched by ferry, through an adapter that wraps the tree into a
/// ferry::Module tree over the same weights.
///
///     torch::nn::Sequential net(torch::nn::Linear(8, 32), torch::nn::ReLU(), torch::nn::Linear(32, 8));
///     std::shared_ptr<ferry::TorchModule> model = ferry::wrap_torch_module(net.ptr());
///     ferry::disk_offload(*model, "/tmp/offload");       // or cpu_offload, dispatch_model, plan, ...
///     at::Tensor y = (*model)(x);                         // through the adapter, never net->forward(x)
///
///     // A module of one's own: its forward calls its children through the adapter, so their hooks run.
///     ferry::TorchWrapOptions o;
///     o.forwards["MyBlock"] = [](ferry::TorchModule& self, ferry::Args& a) -> c10::IValue {
///       at::Tensor h = (*self.child("fc1"))(a.tensor(0));
///       return (*self.child("fc2"))(at::relu(h));
///     };
///     auto block = ferry::wrap_torch_module(my_block.ptr(), o);
///
/// Why an adapter, and not hooks on the torch::nn::Module itself (Note [torch::nn offload]):
/// ferry offloads a module by replacing the tensor in its parameter slot (a meta tensor while
/// offloaded, the loaded weight during its call), around a call that runs the module's hooks.
/// A torch::nn::Module offers neither: its forward is a plain member function that no one can hook
/// (a container such as Sequential calls its children's forward directly), and its parameters are
/// TensorImpls that its layer code holds as members, which can only be changed in place with
/// `Tensor::set_data`, and set_data refuses a meta tensor for a CPU or CUDA one (the two kinds of
/// TensorImpl are not shallow-copy compatible). So offloading it in place cannot be done soundly.
///
/// The adapter: every torch::nn submodule becomes a TorchModule child (same names, Python class
/// names: "torch::nn::LinearImpl" -> "Linear", "MyBlockImpl" -> "MyBlock"), whose parameter and
/// buffer slots hold aliases of the torch tensors (same memory; one alias per TensorImpl, so weights
/// a torch model shares are tied in ferry too). From then on the ferry tree owns the weights: each
/// torch tensor is left as an empty placeholder (shape [0], same dtype, no memory), so memory freed
/// by offloading is really freed. A TorchModule's forward points the wrapped module's own tensors at
/// whatever its slots hold at that moment (`set_data`: the resident weight, or the weight its hook
/// just loaded onto the execution device), calls the wrapped computation, and empties them again,
/// even if it throws.
///
/// Which computation a TorchModule runs (its Forward), first match wins:
///  1. TorchWrapOptions::forwards under its path ("" the root, "encoder.0") or its class name;
///  2. a Sequential: its children, in order, each called through the adapter, one tensor in and out;
///  3. an element of a Sequential: the element's own forward (through the Sequential's AnyModule);
///  4. LibTorch's single-tensor layers: Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d,
///     Embedding, LayerNorm, GroupNorm, BatchNorm1d/2d/3d, Dropout, Identity, Flatten, ReLU, GELU,
///     SiLU, Tanh, Sigmoid, Softmax, LogSoftmax;
///  5. none: calling it throws ferry::Error naming the module and asking for a Forward.
///
/// Limits, precisely:
///  - Call the model through the adapter. The wrapped modules' tensors are empty placeholders
///    outside its calls: the torch model's own forward, or a Forward that calls a child's torch
///    forward directly instead of `(*self.child(name))(...)`, fails with a shape error (no hook ran,
///    so nothing was loaded); read and write weights through the ferry tree.
///  - Only registered tensors are re-pointed (register_parameter, register_buffer: what
///    named_parameters() and named_buffers() list). A layer that computes with a tensor member it did
///    not register, or that was re-assigned after registering (`fc2->weight = fc1->weight`, which
///    leaves the registered tensor behind), is not offloaded correctly; share a weight by registering
///    the same tensor in both modules (then it is one tied tensor in ferry's tree).
///  - Inference only: the ferry slots hold detached aliases, and the torch tensors are re-pointed
///    around each call, so no gradient reaches the wrapped parameters (run under c10::NoGradGuard).
///  - A Forward gets ferry::Args (tensors and IValues); a layer whose forward takes other types
///    needs a Forward from the user that unpacks them.
///  - torch::nn::Module::to(), parameters() and save() on the wrapped tree see the placeholders; use
///    the ferry tree's to(), named_parameters() and state_dict().
///  - LibTorch modules keep no non-persistent buffers: every buffer is persistent in ferry's tree.

#include "ferry/nn/module.h"

#include <torch/nn/module.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace ferry {

struct TorchWrapOptions;
class TorchModule;
std::shared_ptr<TorchModule> wrap_torch_module(const std::shared_ptr<torch::nn::Module>& root,
                                               const TorchWrapOptions& options);

/// A ferry::Module standing for one torch::nn::Module of a wrapped tree; see the file comment.
class TorchModule : public Module {
 public:
  /// The computation: gets this module (its ferry children through child(), the torch module
  /// through wrapped_as<>()) and the call's arguments.
  using Forward = std::function<c10::IValue(TorchModule& self, Args& args)>;

  /// Built by wrap_torch_module, which registers the slots and children.
  TorchModule(std::shared_ptr<torch::nn::Module> wrapped, std::string class_name, std::string path, Forward forward);

  /// Points the wrapped module's own tensors at this module's slots, runs the Forward, and empties
  /// them again. Throws ferry::Error when a slot holds a meta tensor (offloaded, and no hook loaded
  /// it) or when there is no Forward.
  c10::IValue forward(Args& args) override;

  /// The wrapped torch::nn::Module.
  torch::nn::Module& wrapped() const { return *wrapped_; }
  const std::shared_ptr<torch::nn::Module>& wrapped_ptr() const { return wrapped_; }
  /// The wrapped module as its implementation class (`torch::nn::LinearImpl`, `MyBlockImpl`);
  /// throws ferry::Error naming both classes for another type.
  template <class Impl>
  Impl& wrapped_as() const {
    auto* impl = dynamic_cast<Impl*>(wrapped_.get());
    if (impl == nullptr) throw_wrong_type(typeid(Impl).name());
    return *impl;
  }
  /// The module's dotted path in the wrapped tree ("" for the root).
  const std::string& path() const { return path_; }
  /// Replaces the computation.
  void set_forward(Forward forward) { forward_ = std::move(forward); }
  bool has_forward() const { return static_cast<bool>(forward_); }

  /// Registers the wrapped module's direct tensor `name` (its `torch_tensor`) as a ferry parameter
  /// or buffer holding `alias` (the same memory), and binds the two for calls. wrap_torch_module's
  /// step; not for other callers.
  void register_wrapped_tensor(const std::string& name, const at::Tensor& torch_tensor, const at::Tensor& alias,
                               bool is_buffer);

 private:
  friend std::shared_ptr<TorchModule> wrap_torch_module(const std::shared_ptr<torch::nn::Module>& root,
                                                        const TorchWrapOptions& options);
  // One direct parameter or buffer: the torch tensor (its TensorImpl, held by the layer code) and
  // the ferry slot registered for it.
  struct Binding {
    at::Tensor torch_tensor;
    std::shared_ptr<TensorSlot> slot;
    std::string name;
  };
  void bind();
  void unbind() noexcept;
  [[noreturn]] void throw_wrong_type(const char* wanted) const;

  std::shared_ptr<torch::nn::Module> wrapped_;
  std::string path_;
  Forward forward_;
  std::vector<Binding> bindings_;
};

/// How wrap_torch_module builds the tree.
struct TorchWrapOptions {
  /// Computations by module path ("" the root, "encoder.0") or by class name ("MyBlock"); a path
  /// wins over a class name, and both over the defaults of the file comment.
  std::map<std::string, TorchModule::Forward> forwards;
};

/// Wraps the torch::nn::Module tree under `root` into a TorchModule tree over the same weights, and
/// leaves the torch tensors as empty placeholders (see the file comment). A module reachable twice
/// becomes one TorchModule registered twice; a tensor shared by two modules is one tied tensor.
/// Throws ferry::Error for a null root or a path or class in `forwards` that names no module.
std::shared_ptr<TorchModule> wrap_torch_module(const std::shared_ptr<torch::nn::Module>& root,
                                               const TorchWrapOptions& options = {});

/// The Python-style class name of a LibTorch module: its name() without namespace and without the
/// "Impl" suffix ("torch::nn::LinearImpl" -> "Linear", "MyBlockImpl" -> "MyBlock"), so that
/// no_split_module_classes and preload_module_classes read as in Python.
std::string torch_module_class_name(const torch::nn::Module& module);

}  // namespace ferry
