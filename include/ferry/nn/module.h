#pragma once
/// \file
/// `ferry::Module`: ferry's module base class, mirroring Python's `torch.nn.Module`.
///
/// It keeps ordered registries of parameters, buffers (persistent or not) and children whose
/// tensor *slots* can be replaced: offloading swaps a parameter between the meta device and real
/// memory by replacing its slot, which `Tensor::set_data` and `torch::nn::Module` cannot do.
/// Layers read their tensors through `TensorRef` handles that look at the slot on every use, like
/// Python's attribute lookup. Calling a module runs its hook (nn/module_hook.h) around
/// `forward`. Walks de-duplicate by identity, as PyTorch's Python walks do.
///
///     class Mlp : public ferry::Module {
///      public:
///       Mlp() : Module("Mlp") {
///         up = register_module("up", std::make_shared<ferry::Linear>(8, 32));
///         down = register_module("down", std::make_shared<ferry::Linear>(32, 8));
///         scale = register_parameter("scale", ferry::new_parameter_tensor({8}));
///       }
///       c10::IValue forward(ferry::Args& args) override {
///         at::Tensor x = args.tensor(0);
///         return (*down)(at::gelu((*up)(x))) * scale.get();
///       }
///       std::shared_ptr<ferry::Linear> up, down;
///       ferry::TensorRef scale;
///     };
///
///     Mlp m;
///     at::Tensor y = m(at::randn({2, 8}));
///     for (auto& [name, t] : m.named_parameters()) ...     // "scale", "up.weight", ...

#include "ferry/nn/args.h"

#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace ferry {

class ModelHook;

/// One registered tensor. A module and the `TensorRef`s of its layer code share the slot, so a
/// replaced tensor is seen by every reader. An undefined tensor is a registered `None`.
struct TensorSlot {
  at::Tensor tensor;
  bool persistent = true;  ///< buffers only: non-persistent ones stay out of state_dict()
};

/// A handle to a module's tensor slot; reads the slot on every use.
class TensorRef {
 public:
  TensorRef() = default;
  explicit TensorRef(std::shared_ptr<TensorSlot> slot) : slot_(std::move(slot)) {}
  /// The tensor in the slot now (undefined for a registered None).
  const at::Tensor& get() const { return slot_->tensor; }
  const at::Tensor& operator*() const { return slot_->tensor; }
  const at::Tensor* operator->() const { return &slot_->tensor; }
  /// True when the slot holds a tensor (not None).
  bool defined() const { return slot_ && slot_->tensor.defined(); }

 private:
  std::shared_ptr<TensorSlot> slot_;
};

/// (qualified name, tensor) pairs in walk order.
using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

/// Base class of every ferry module; see the file comment.
class Module {
 public:
  /// `class_name` is the Python class name ("Linear", "LlamaDecoderLayer") that
  /// no_split_module_classes and preload_module_classes match against.
  explicit Module(std::string class_name);
  virtual ~Module();
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  /// The Python-style class name.
  const std::string& class_name() const { return class_name_; }
  void set_class_name(std::string name) { class_name_ = std::move(name); }

  // ---- calling -------------------------------------------------------------------------------
  /// The computation; the default throws (containers such as ModuleList have none).
  virtual c10::IValue forward(Args& args);
  /// Runs the hook's pre_forward, forward (under no-grad if the hook asks), then post_forward.
  c10::IValue operator()(Args args);
  /// Shorthand for a module taking and returning one tensor.
  at::Tensor operator()(const at::Tensor& input);

  // ---- registration --------------------------------------------------------------------------
  /// Registers a parameter (an undefined tensor registers None). Under init_on_device the tensor
  /// is moved to that device first. Returns a handle that reads the slot on every use.
  TensorRef register_parameter(const std::string& name, at::Tensor tensor, bool requires_grad = false);
  /// Registers a buffer; non-persistent buffers stay out of state_dict().
  TensorRef register_buffer(const std::string& name, at::Tensor tensor, bool persistent = true);
  /// Registers a child module (the same object may be registered under several names).
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> module) {
    register_child(name, module);
    return module;
  }
  void register_child(const std::string& name, std::shared_ptr<Module> module);

  // ---- direct access -------------------------------------------------------------------------
  bool has_parameter(const std::string& name) const;
  bool has_buffer(const std::string& name) const;
  /// The direct parameter / buffer `name`; throws ferry::Error naming the module if absent.
  at::Tensor parameter(const std::string& name) const;
  at::Tensor buffer(const std::string& name) const;
  /// Replaces the tensor in an existing parameter / buffer slot (Python's `m.weight = t`).
  /// Assigning the same tensor object to two slots ties them.
  void set_parameter(const std::string& name, at::Tensor tensor);
  void set_buffer(const std::string& name, at::Tensor tensor);
  /// True if buffer `name` is registered as non-persistent.
  bool is_non_persistent_buffer(const std::string& name) const;
  /// Names of this module's own non-persistent buffers.
  std::vector<std::string> non_persistent_buffer_names() const;
  /// The direct child `name`, or nullptr.
  std::shared_ptr<Module> child(const std::string& name) const;
  /// The module at a dotted path ("" is this module); throws ferry::Error naming the missing part.
  Module& submodule(const std::string& path);

  /// Direct registries in registration order, None entries included.
  const std::vector<std::pair<std::string, std::shared_ptr<TensorSlot>>>& parameter_slots() const { return parameters_; }
  const std::vector<std::pair<std::string, std::shared_ptr<TensorSlot>>>& buffer_slots() const { return buffers_; }
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const { return children_; }

  // ---- walks with Python semantics -----------------------------------------------------------
  /// Pre-order (name, module) pairs starting with ("", this); a module object registered twice
  /// appears once, under its first name, unless remove_duplicate is false.
  std::vector<std::pair<std::string, Module*>> named_modules(const std::string& prefix = "",
                                                             bool remove_duplicate = true);
  /// Direct children, each object once.
  std::vector<std::pair<std::string, Module*>> named_children();
  /// Parameters (None skipped); a tensor object reachable twice appears once, under its first name.
  NamedTensors named_parameters(bool recurse = true, bool remove_duplicate = true);
  /// Buffers, persistent or not, de-duplicated likewise.
  NamedTensors named_buffers(bool recurse = true, bool remove_duplicate = true);
  /// Parameters and persistent buffers, every (module, slot) pair (tied names all appear).
  NamedTensors state_dict();

  // ---- moving ------------------------------------------------------------------------------
  /// Moves every parameter and buffer to `device` (slots replaced). Refused while a move guard
  /// is installed (a dispatched model).
  void to(c10::Device device);
  /// Casts floating-point parameters and buffers to `dtype` (integer ones are kept, as Python's
  /// Module.to(dtype) does).
  void to(c10::ScalarType dtype);
  /// Called with the requested move before to() acts; may throw or warn. Used by dispatch_model.
  using MoveGuard = std::function<void(Module&, const std::string& request)>;
  void set_move_guard(MoveGuard guard) { move_guard_ = std::move(guard); }
  bool has_move_guard() const { return static_cast<bool>(move_guard_); }

  // ---- hooks (see nn/module_hook.h; attach with hooks/model_hook.h's add_hook_to_module) ----------------
  const std::shared_ptr<ModelHook>& hook() const { return hook_; }
  void set_hook(std::shared_ptr<ModelHook> hook) { hook_ = std::move(hook); }

 private:
  using Slots = std::vector<std::pair<std::string, std::shared_ptr<TensorSlot>>>;
  static std::shared_ptr<TensorSlot> find_slot(const Slots& slots, const std::string& name);
  void check_new_name(const std::string& name) const;
  void walk_tensors(bool parameters, bool recurse, bool remove_duplicate, NamedTensors& out);
  void move_tensors(const std::function<at::Tensor(const at::Tensor&)>& convert);

  std::string class_name_;
  Slots parameters_;
  Slots buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  std::shared_ptr<ModelHook> hook_;
  MoveGuard move_guard_;
};

/// `name` joined to `prefix` with a dot ("" prefix gives name).
std::string join_name(const std::string& prefix, const std::string& name);

}  // namespace ferry
