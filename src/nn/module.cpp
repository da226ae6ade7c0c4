#include "ferry/nn/module.h"

#include "ferry/core/error.h"
#include "ferry/core/dtype.h"
#include "ferry/nn/module_hook.h"
#include "ferry/nn/init_on_device.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <unordered_map>
#include <unordered_set>

namespace ferry {

std::string join_name(const std::string& prefix, const std::string& name) {
  if (prefix.empty()) return name;
  if (name.empty()) return prefix;
  return prefix + "." + name;
}

Module::Module(std::string class_name) : class_name_(std::move(class_name)) {}

Module::~Module() = default;

c10::IValue Module::forward(Args&) {
  FERRY_FAIL("module of class ", class_name_, " has no forward(); call its children instead");
}

c10::IValue Module::operator()(Args args) {
  if (!hook_) return forward(args);
  std::shared_ptr<ModelHook> hook = hook_;  // keeps the hook alive even if forward replaces it
  c10::IValue output;
  try {
    hook->pre_forward(*this, args);
    if (hook->no_grad) {
      c10::NoGradGuard no_grad;
      output = forward(args);
    } else {
      output = forward(args);
    }
  } catch (...) {
    hook->abort_forward(*this);
    throw;
  }
  return hook->post_forward(*this, std::move(output));
}

at::Tensor Module::operator()(const at::Tensor& input) {
  c10::IValue output = (*this)(Args{input});
  if (!output.isTensor())
    throw Error("Module::operator()", detail::concat("module of class ", class_name_, " returned a ", output.tagKind(),
                                                     ", not a tensor; call it with Args to get the full output"));
  return output.toTensor();
}

void Module::check_new_name(const std::string& name) const {
  FERRY_CHECK(!name.empty() && name.find('.') == std::string::npos, "invalid name '", name, "' in a ", class_name_,
              ": names must be non-empty and contain no '.'");
  FERRY_CHECK(!find_slot(parameters_, name) && !find_slot(buffers_, name) && !child(name), "a ", class_name_,
              " already has an attribute named '", name, "'");
}

TensorRef Module::register_parameter(const std::string& name, at::Tensor tensor, bool requires_grad) {
  check_new_name(name);
  if (tensor.defined()) {
    if (auto device = current_parameter_init_device(); device && tensor.device() != *device) {
      // Accelerate's init_on_device re-creates the Parameter on the device with the same
      // requires_grad: move without recording autograd history, so the parameter stays a leaf.
      bool trainable = tensor.requires_grad();
      {
        c10::NoGradGuard no_grad;
        tensor = tensor.to(*device);
      }
      if (trainable) tensor.set_requires_grad(true);
    }
    if (requires_grad && is_floating_dtype(tensor.scalar_type())) tensor.set_requires_grad(true);
  }
  auto slot = std::make_shared<TensorSlot>(TensorSlot{std::move(tensor), true});
  parameters_.emplace_back(name, slot);
  return TensorRef(slot);
}

TensorRef Module::register_buffer(const std::string& name, at::Tensor tensor, bool persistent) {
  check_new_name(name);
  if (tensor.defined())
    if (auto device = current_buffer_init_device(); device && tensor.device() != *device) tensor = tensor.to(*device);
  auto slot = std::make_shared<TensorSlot>(TensorSlot{std::move(tensor), persistent});
  buffers_.emplace_back(name, slot);
  return TensorRef(slot);
}

void Module::register_child(const std::string& name, std::shared_ptr<Module> module) {
  check_new_name(name);
  FERRY_CHECK(module.get() != this, "cannot register a ", class_name_, " as its own child '", name, "'");
  children_.emplace_back(name, std::move(module));
}

std::shared_ptr<TensorSlot> Module::find_slot(const Slots& slots, const std::string& name) {
  for (const auto& [key, slot] : slots)
    if (key == name) return slot;
  return nullptr;
}

bool Module::has_parameter(const std::string& name) const { return find_slot(parameters_, name) != nullptr; }
bool Module::has_buffer(const std::string& name) const { return find_slot(buffers_, name) != nullptr; }

at::Tensor Module::parameter(const std::string& name) const {
  auto slot = find_slot(parameters_, name);
  FERRY_CHECK(slot, "a ", class_name_, " has no parameter named '", name, "'");
  return slot->tensor;
}

at::Tensor Module::buffer(const std::string& name) const {
  auto slot = find_slot(buffers_, name);
  FERRY_CHECK(slot, "a ", class_name_, " has no buffer named '", name, "'");
  return slot->tensor;
}

void Module::set_parameter(const std::string& name, at::Tensor tensor) {
  auto slot = find_slot(parameters_, name);
  FERRY_CHECK(slot, "a ", class_name_, " has no parameter named '", name, "'");
  slot->tensor = std::move(tensor);
}

void Module::set_buffer(const std::string& name, at::Tensor tensor) {
  auto slot = find_slot(buffers_, name);
  FERRY_CHECK(slot, "a ", class_name_, " has no buffer named '", name, "'");
  slot->tensor = std::move(tensor);
}

bool Module::is_non_persistent_buffer(const std::string& name) const {
  auto slot = find_slot(buffers_, name);
  return slot && !slot->persistent;
}

std::vector<std::string> Module::non_persistent_buffer_names() const {
  std::vector<std::string> names;
  for (const auto& [name, slot] : buffers_)
    if (!slot->persistent) names.push_back(name);
  return names;
}

std::shared_ptr<Module> Module::child(const std::string& name) const {
  for (const auto& [key, module] : children_)
    if (key == name) return module;
  return nullptr;
}

Module& Module::submodule(const std::string& path) {
  Module* current = this;
  std::string walked;
  size_t start = 0;
  while (start < path.size()) {
    size_t dot = path.find('.', start);
    std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    auto next = current->child(part);
    FERRY_CHECK(next, "module '", walked.empty() ? std::string("<root>") : walked, "' (", current->class_name_,
                ") has no submodule named '", part, "' (looking up '", path, "')");
    current = next.get();
    walked = join_name(walked, part);
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return *current;
}

std::vector<std::pair<std::string, Module*>> Module::named_modules(const std::string& prefix, bool remove_duplicate) {
  std::vector<std::pair<std::string, Module*>> out;
  std::unordered_set<const Module*> seen;
  // Iterative pre-order walk: deep models (hundreds of layers) must not recurse per level.
  std::vector<std::pair<std::string, Module*>> stack{{prefix, this}};
  while (!stack.empty()) {
    auto [name, module] = stack.back();
    stack.pop_back();
    if (remove_duplicate && !seen.insert(module).second) continue;
    out.emplace_back(name, module);
    for (auto it = module->children_.rbegin(); it != module->children_.rend(); ++it)
      if (it->second) stack.emplace_back(join_name(name, it->first), it->second.get());
  }
  return out;
}

std::vector<std::pair<std::string, Module*>> Module::named_children() {
  std::vector<std::pair<std::string, Module*>> out;
  std::unordered_set<const Module*> seen;
  for (const auto& [name, module] : children_)
    if (module && seen.insert(module.get()).second) out.emplace_back(name, module.get());
  return out;
}

void Module::walk_tensors(bool parameters, bool recurse, bool remove_duplicate, NamedTensors& out) {
  std::unordered_set<const c10::TensorImpl*> seen;
  std::vector<std::pair<std::string, Module*>> modules;
  if (recurse) modules = named_modules("", remove_duplicate);
  else modules.emplace_back("", this);
  for (const auto& [prefix, module] : modules) {
    for (const auto& [name, slot] : parameters ? module->parameters_ : module->buffers_) {
      if (!slot->tensor.defined()) continue;
      if (remove_duplicate && !seen.insert(slot->tensor.unsafeGetTensorImpl()).second) continue;
      out.emplace_back(join_name(prefix, name), slot->tensor);
    }
  }
}

NamedTensors Module::named_parameters(bool recurse, bool remove_duplicate) {
  NamedTensors out;
  walk_tensors(true, recurse, remove_duplicate, out);
  return out;
}

NamedTensors Module::named_buffers(bool recurse, bool remove_duplicate) {
  NamedTensors out;
  walk_tensors(false, recurse, remove_duplicate, out);
  return out;
}

NamedTensors Module::state_dict() {
  NamedTensors out;
  for (const auto& [prefix, module] : named_modules("", /*remove_duplicate=*/false)) {
    for (const auto& [name, slot] : module->parameters_)
      if (slot->tensor.defined()) out.emplace_back(join_name(prefix, name), slot->tensor);
    for (const auto& [name, slot] : module->buffers_)
      if (slot->tensor.defined() && slot->persistent) out.emplace_back(join_name(prefix, name), slot->tensor);
  }
  return out;
}

void Module::move_tensors(const std::function<at::Tensor(const at::Tensor&)>& convert) {
  // One conversion per tensor object, so that tied slots stay tied (Python's Module._apply
  // converts the shared Parameter in place).
  std::unordered_map<const c10::TensorImpl*, at::Tensor> converted;
  for (const auto& [prefix, module] : named_modules()) {
    for (auto* slots : {&module->parameters_, &module->buffers_}) {
      for (auto& [name, slot] : *slots) {
        if (!slot->tensor.defined()) continue;
        auto key = slot->tensor.unsafeGetTensorImpl();
        auto it = converted.find(key);
        if (it == converted.end()) {
          // As Python's Module._apply: convert without recording autograd history, so that a
          // trainable parameter stays a leaf (a recorded copy would be a non-leaf with a grad_fn
          // that never receives .grad), then restore requires_grad.
          at::Tensor fresh;
          {
            c10::NoGradGuard no_grad;
            fresh = convert(slot->tensor);
          }
          if (!fresh.is_same(slot->tensor) && slot->tensor.requires_grad() && is_floating_dtype(fresh.scalar_type()))
            fresh.set_requires_grad(true);
          it = converted.emplace(key, fresh).first;
        }
        slot->tensor = it->second;
      }
    }
  }
}

void Module::to(c10::Device device) {
  if (move_guard_) move_guard_(*this, device.str());
  if (device.type() != c10::kMeta) {
    NamedTensors tensors = named_parameters();
    for (auto& named : named_buffers()) tensors.push_back(std::move(named));
    for (const auto& [name, tensor] : tensors)
      FERRY_CHECK(!tensor.is_meta(), "cannot move a ", class_name_, " to ", device, ": '", name,
                  "' is on the meta device (offloaded or never loaded); load its weights first, e.g. with "
                  "load_checkpoint_in_model, or keep it dispatched");
  }
  move_tensors([&](const at::Tensor& t) { return t.device() == device ? t : t.to(device); });
}

void Module::to(c10::ScalarType dtype) {
  if (move_guard_) move_guard_(*this, dtype_name(dtype));
  move_tensors([&](const at::Tensor& t) {
    return is_floating_dtype(t.scalar_type()) && t.scalar_type() != dtype ? t.to(dtype) : t;
  });
}

}  // namespace ferry
