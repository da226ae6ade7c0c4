#include "ferry/plan/module_tree.h"
#include "ferry/plan/tied_parameters.h"

#include "ferry/core/error.h"
#include "ferry/nn/module.h"

#include <torch/nn/module.h>

#include <unordered_map>

namespace ferry {
namespace {

template <class Key>
struct Ids {
  std::unordered_map<Key, int32_t> ids;
  template <class Make>
  int32_t get(Key key, Make&& make, bool& fresh) {
    auto it = ids.find(key);
    fresh = it == ids.end();
    if (!fresh) return it->second;
    int32_t id = make();
    ids.emplace(key, id);
    return id;
  }
};

TreeTensor tensor_info(const at::Tensor& t) {
  auto sizes = t.sizes();
  return TreeTensor{std::vector<int64_t>(sizes.begin(), sizes.end()), t.scalar_type()};
}

void add_ferry_module(ModelTree& tree, ModuleId id, Module& module, Ids<const Module*>& modules,
                      Ids<const c10::TensorImpl*>& tensors) {
  auto tensor_id = [&](const at::Tensor& t) -> TensorId {
    if (!t.defined()) return kNoTensor;
    bool fresh = false;
    return tensors.get(t.unsafeGetTensorImpl(), [&] { return tree.add_tensor(tensor_info(t)); }, fresh);
  };
  for (const auto& [name, slot] : module.parameter_slots()) tree.add_param_slot(id, name, tensor_id(slot->tensor));
  for (const auto& [name, slot] : module.buffer_slots())
    tree.add_buffer_slot(id, name, tensor_id(slot->tensor), slot->persistent);
  for (const auto& [name, child] : module.children()) {
    if (!child) continue;  // a registered None child is not a module
    bool fresh = false;
    ModuleId c = modules.get(child.get(), [&] { return tree.add_module(child->class_name()); }, fresh);
    tree.add_child(id, name, c);
    if (fresh) add_ferry_module(tree, c, *child, modules, tensors);
  }
}

void add_torch_module(ModelTree& tree, ModuleId id, const torch::nn::Module& module,
                      Ids<const torch::nn::Module*>& modules, Ids<const c10::TensorImpl*>& tensors) {
  auto tensor_id = [&](const at::Tensor& t) -> TensorId {
    if (!t.defined()) return kNoTensor;
    bool fresh = false;
    return tensors.get(t.unsafeGetTensorImpl(), [&] { return tree.add_tensor(tensor_info(t)); }, fresh);
  };
  for (const auto& item : module.named_parameters(/*recurse=*/false)) tree.add_param_slot(id, item.key(), tensor_id(item.value()));
  for (const auto& item : module.named_buffers(/*recurse=*/false)) tree.add_buffer_slot(id, item.key(), tensor_id(item.value()));
  for (const auto& item : module.named_children()) {
    const torch::nn::Module* child = item.value().get();
    bool fresh = false;
    ModuleId c = modules.get(child, [&] { return tree.add_module(python_class_name(child->name())); }, fresh);
    tree.add_child(id, item.key(), c);
    if (fresh) add_torch_module(tree, c, *item.value(), modules, tensors);
  }
}

}  // namespace

std::string python_class_name(const std::string& cpp_name) {
  std::string name = cpp_name;
  size_t colon = name.rfind("::");
  if (colon != std::string::npos) name = name.substr(colon + 2);
  const std::string impl = "Impl";
  if (name.size() > impl.size() && name.compare(name.size() - impl.size(), impl.size(), impl) == 0)
    name.resize(name.size() - impl.size());
  return name;
}

ModelTree model_tree_from_module(Module& module) {
  ModelTree tree(module.class_name());
  Ids<const Module*> modules;
  Ids<const c10::TensorImpl*> tensors;
  modules.ids.emplace(&module, tree.root());
  add_ferry_module(tree, tree.root(), module, modules, tensors);
  tree.validate();
  return tree;
}

ModelTree model_tree_from_torch_module(const torch::nn::Module& module) {
  ModelTree tree(python_class_name(module.name()));
  Ids<const torch::nn::Module*> modules;
  Ids<const c10::TensorImpl*> tensors;
  modules.ids.emplace(&module, tree.root());
  add_torch_module(tree, tree.root(), module, modules, tensors);
  tree.validate();
  return tree;
}

std::vector<std::vector<std::string>> find_tied_parameters(Module& module) {
  return find_tied_parameters(model_tree_from_module(module));
}

}  // namespace ferry
