#pragma once
/// \file
/// ModelTree: what the planner needs to know about a model, and nothing else. Plain data, no
/// tensors: modules with a Python class name, their parameters and buffers (shape, dtype, or
/// None), and their children, in registration order. Identity is explicit: two slots holding the
/// same tensor id are tied, two child slots holding the same module id are one module registered
/// twice. Built from the conformance JSON format, from dotted tensor names (checkpoints), from a
/// live ferry::Module or a torch::nn::Module (see the other headers of this folder).
///
///     ModelTree tree("ModelForTest");
///     ModuleId linear1 = tree.add_submodule(tree.root(), "linear1", "Linear");
///     TensorId w = tree.add_param(linear1, "weight", {4, 3}, c10::ScalarType::Float);
///     tree.add_param(linear1, "bias", {4}, c10::ScalarType::Float);
///     ModuleId linear2 = tree.add_submodule(tree.root(), "linear2", "Linear");
///     tree.add_param_slot(linear2, "weight", w);       // tied to linear1.weight
///     tree.add_param_slot(linear2, "bias", kNoTensor); // a registered None
///
/// Building is cheap (a few vectors), so trees of 100,000+ tensors cost milliseconds.

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace ferry {
namespace io {
class JsonValue;
}  // namespace io

using ModuleId = int32_t;  ///< index of a module in a ModelTree
using TensorId = int32_t;  ///< index of a tensor in a ModelTree
constexpr TensorId kNoTensor = -1;  ///< a slot registered as None

/// Shape and dtype of one tensor object (what a meta tensor knows).
struct TreeTensor {
  std::vector<int64_t> shape;
  c10::ScalarType dtype = c10::ScalarType::Float;
  /// Number of elements (1 for a scalar).
  int64_t numel() const;
};

/// A named parameter or buffer slot of a module.
struct TreeSlot {
  std::string name;            ///< local name ("weight")
  TensorId tensor = kNoTensor; ///< kNoTensor for a registered None
  bool persistent = true;      ///< buffers only: part of state_dict()
};

/// A named child slot of a module.
struct TreeChild {
  std::string name;  ///< local name ("linear1", "0")
  ModuleId module;   ///< may repeat: the same module registered twice
};

/// One module object.
struct TreeModule {
  std::string class_name;          ///< Python class name ("Linear"); "" when unknown (checkpoints)
  std::vector<TreeSlot> params;  ///< registration order
  std::vector<TreeSlot> buffers; ///< registration order
  std::vector<TreeChild> children; ///< registration order
};

/// A model's structure: modules (the root is module 0), tensors, and the slots that hold them.
class ModelTree {
 public:
  /// A tree holding only a root module of class `root_class`.
  explicit ModelTree(std::string root_class = "");

  /// The root module (always 0).
  ModuleId root() const { return 0; }

  /// Creates a module that no slot holds yet.
  ModuleId add_module(std::string class_name);
  /// Creates a module of class `class_name` and registers it as child `name` of `parent`.
  ModuleId add_submodule(ModuleId parent, std::string name, std::string class_name);
  /// Registers an existing module as child `name` of `parent` (a second registration shares it).
  void add_child(ModuleId parent, std::string name, ModuleId child);

  /// Creates a tensor object.
  TensorId add_tensor(TreeTensor info);
  /// Creates a tensor and registers it as parameter `name` of `module`; returns its id.
  TensorId add_param(ModuleId module, std::string name, std::vector<int64_t> shape, c10::ScalarType dtype);
  /// Registers an existing tensor (a tie) or kNoTensor (None) as parameter `name` of `module`.
  void add_param_slot(ModuleId module, std::string name, TensorId tensor);
  /// Creates a tensor and registers it as buffer `name` of `module`; returns its id.
  TensorId add_buffer(ModuleId module, std::string name, std::vector<int64_t> shape, c10::ScalarType dtype,
                      bool persistent = true);
  /// Registers an existing tensor (or kNoTensor) as buffer `name` of `module`.
  void add_buffer_slot(ModuleId module, std::string name, TensorId tensor, bool persistent = true);

  /// Room for this many modules and tensors (a hint for builders of large trees).
  void reserve(size_t modules, size_t tensors);

  const TreeModule& module(ModuleId id) const { return modules_[static_cast<size_t>(id)]; }
  const TreeTensor& tensor(TensorId id) const { return tensors_[static_cast<size_t>(id)]; }
  size_t module_count() const { return modules_.size(); }
  size_t tensor_count() const { return tensors_.size(); }
  /// Mutable access, for sources that fill in class names after building.
  TreeModule& mutable_module(ModuleId id);

  /// Checks the tree: ids in range, no module containing itself, no name used twice in one module,
  /// no empty or dotted local names. Throws ferry::Error naming the module path and slot.
  void validate() const;

  /// Reads the conformance JSON tree format (shared/conformance/README.md): a node is
  /// {"name", "class", "params", "buffers", "children"}; a param {"name", "shape", "dtype"},
  /// {"name", "tied_to": "<full name>"} or {"name"} (None); a buffer adds "persistent"; a node
  /// {"name", "same_module_as": "<path>"} registers an earlier module again.
  static ModelTree from_json(const std::string& text);
  /// from_json() on the contents of a file; errors name the file.
  static ModelTree from_json_file(const std::string& path);
  /// from_json() on a value of a document already parsed (a conformance case's "model").
  static ModelTree from_json_value(const io::JsonValue& value);

 private:
  std::vector<TreeModule> modules_;
  std::vector<TreeTensor> tensors_;
};

/// A tensor known by its full dotted name (what a checkpoint header or named_parameters() gives).
struct NamedTreeTensor {
  std::string name;  ///< "model.layers.0.mlp.up_proj.weight"
  TreeTensor info;
};

/// Builds a tree from full dotted names: every prefix becomes a module (class name ""), the last
/// component a parameter. Modules and tensors are ordered by natural order of their names
/// (numeric components compare as numbers, so "layers.2" comes before "layers.10"), which is
/// the execution order of Hugging Face models whose names are sorted in their files. Names that
/// are both a tensor and a module prefix, empty names, or empty components are errors.
ModelTree model_tree_from_named_tensors(std::vector<NamedTreeTensor> tensors, bool natural_order = true);

/// The same without a copy of the names: tensor i is called name_of(i) and described by
/// tensor_of(i) (called once each). The names must stay alive until the call returns.
ModelTree model_tree_from_names(size_t count, const std::function<std::string_view(size_t)>& name_of,
                                 const std::function<TreeTensor(size_t)>& tensor_of, bool natural_order = true);

/// Natural order of dotted names: component by component, numeric components as numbers.
bool natural_name_less(const std::string& a, const std::string& b);

}  // namespace ferry
