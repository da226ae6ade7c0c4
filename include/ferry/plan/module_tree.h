#pragma once
/// \file
/// Model trees of live modules: a ferry::Module (class names, persistence and identity kept) or a
/// torch::nn::Module (names, shapes and dtypes; LibTorch has no non-persistent buffers and its
/// class names are C++ ones, turned into Python-style names: torch::nn::LinearImpl -> "Linear").
///
///     auto model = std::make_shared<MyModel>();          // ferry::Module, e.g. on the meta device
///     ModelTree tree = model_tree_from_module(*model);
///     DeviceMap map = infer_auto_device_map(tree, options);

#include "ferry/plan/model_tree.h"

namespace torch::nn {
class Module;
}

namespace ferry {

class Module;

/// The tree of a ferry::Module: every registration in order (None slots, non-persistent buffers,
/// a module or tensor registered twice keeps one id). Reads no tensor data (meta tensors work).
ModelTree model_tree_from_module(Module& module);

/// The tree of a torch::nn::Module, from its direct parameters, buffers and children. Identity is
/// the TensorImpl (and the module object), so ties and shared modules survive, which LibTorch's own
/// recursive walks would hide by repeating them. All buffers count as persistent.
ModelTree model_tree_from_torch_module(const torch::nn::Module& module);

/// Python-style class name of a LibTorch module type name: "torch::nn::LinearImpl" -> "Linear".
std::string python_class_name(const std::string& cpp_name);

}  // namespace ferry
