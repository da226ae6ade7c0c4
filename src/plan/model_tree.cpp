#include "ferry/plan/model_tree.h"

#include "ferry/core/dtype.h"
#include "ferry/core/error.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <functional>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

namespace ferry {

int64_t TreeTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

ModelTree::ModelTree(std::string root_class) { modules_.push_back(TreeModule{std::move(root_class), {}, {}, {}}); }

ModuleId ModelTree::add_module(std::string class_name) {
  modules_.push_back(TreeModule{std::move(class_name), {}, {}, {}});
  return static_cast<ModuleId>(modules_.size() - 1);
}

TreeModule& ModelTree::mutable_module(ModuleId id) {
  FERRY_CHECK(id >= 0 && static_cast<size_t>(id) < modules_.size(), "module id ", id, " out of range");
  return modules_[static_cast<size_t>(id)];
}

ModuleId ModelTree::add_submodule(ModuleId parent, std::string name, std::string class_name) {
  ModuleId child = add_module(std::move(class_name));
  add_child(parent, std::move(name), child);
  return child;
}

void ModelTree::add_child(ModuleId parent, std::string name, ModuleId child) {
  FERRY_CHECK(child >= 0 && static_cast<size_t>(child) < modules_.size(), "module id ", child, " out of range");
  mutable_module(parent).children.push_back(TreeChild{std::move(name), child});
}

TensorId ModelTree::add_tensor(TreeTensor info) {
  for (int64_t d : info.shape) FERRY_CHECK(d >= 0, "negative dimension ", d, " in a tensor shape");
  tensors_.push_back(std::move(info));
  return static_cast<TensorId>(tensors_.size() - 1);
}

TensorId ModelTree::add_param(ModuleId module, std::string name, std::vector<int64_t> shape, c10::ScalarType dtype) {
  TensorId id = add_tensor(TreeTensor{std::move(shape), dtype});
  add_param_slot(module, std::move(name), id);
  return id;
}

void ModelTree::add_param_slot(ModuleId module, std::string name, TensorId tensor) {
  FERRY_CHECK(tensor >= kNoTensor && tensor < static_cast<TensorId>(tensors_.size()), "tensor id ", tensor,
              " out of range");
  mutable_module(module).params.push_back(TreeSlot{std::move(name), tensor, true});
}

TensorId ModelTree::add_buffer(ModuleId module, std::string name, std::vector<int64_t> shape, c10::ScalarType dtype,
                               bool persistent) {
  TensorId id = add_tensor(TreeTensor{std::move(shape), dtype});
  add_buffer_slot(module, std::move(name), id, persistent);
  return id;
}

void ModelTree::add_buffer_slot(ModuleId module, std::string name, TensorId tensor, bool persistent) {
  FERRY_CHECK(tensor >= kNoTensor && tensor < static_cast<TensorId>(tensors_.size()), "tensor id ", tensor,
              " out of range");
  mutable_module(module).buffers.push_back(TreeSlot{std::move(name), tensor, persistent});
}

void ModelTree::validate() const {
  // 0 = unvisited, 1 = on the current path, 2 = done. Iterative DFS: trees can be deep.
  std::vector<uint8_t> state(modules_.size(), 0);
  std::vector<std::string> path_names(modules_.size());
  struct Frame {
    ModuleId module;
    size_t next_child;
    std::string path;
  };
  auto where = [](const std::string& path) { return path.empty() ? std::string("the root module") : "module '" + path + "'"; };
  std::vector<Frame> stack{{0, 0, ""}};
  state[0] = 1;
  while (!stack.empty()) {
    Frame& frame = stack.back();
    const TreeModule& node = modules_[static_cast<size_t>(frame.module)];
    if (frame.next_child == 0) {
      std::unordered_set<std::string> names;
      auto check_name = [&](const std::string& name, const char* kind) {
        FERRY_CHECK(!name.empty(), where(frame.path), " has a ", kind, " with an empty name");
        FERRY_CHECK(name.find('.') == std::string::npos, where(frame.path), " has a ", kind, " named '", name,
                    "': local names cannot contain '.'");
        FERRY_CHECK(names.insert(name).second, where(frame.path), " uses the name '", name, "' twice");
      };
      for (const auto& p : node.params) check_name(p.name, "parameter");
      for (const auto& b : node.buffers) check_name(b.name, "buffer");
      for (const auto& c : node.children) check_name(c.name, "child");
    }
    if (frame.next_child == node.children.size()) {
      state[static_cast<size_t>(frame.module)] = 2;
      stack.pop_back();
      continue;
    }
    const TreeChild& child = node.children[frame.next_child++];
    std::string child_path = frame.path.empty() ? child.name : frame.path + "." + child.name;
    uint8_t s = state[static_cast<size_t>(child.module)];
    FERRY_CHECK(s != 1, "module '", child_path, "' contains itself: a module tree cannot have cycles");
    if (s == 0) {
      state[static_cast<size_t>(child.module)] = 1;
      stack.push_back(Frame{child.module, 0, std::move(child_path)});
    }
  }
}

// ---- the conformance JSON format ----------------------------------------------------------------

namespace {

struct JsonLoader {
  ModelTree& tree;
  std::unordered_map<std::string, ModuleId> modules_by_path;
  std::unordered_map<std::string, TensorId> tensors_by_name;

  static std::string join(const std::string& prefix, const std::string& name) {
    return prefix.empty() ? name : prefix + "." + name;
  }

  TensorId tensor_of(const nlohmann::json& slot, const std::string& full, const char* kind) {
    if (slot.contains("tied_to")) {
      std::string target = slot.at("tied_to").get<std::string>();
      auto it = tensors_by_name.find(target);
      FERRY_CHECK(it != tensors_by_name.end(), kind, " '", full, "' is tied to '", target,
                  "', which is not an earlier parameter or buffer");
      return it->second;
    }
    if (!slot.contains("shape")) return kNoTensor;
    TreeTensor info;
    info.shape = slot.at("shape").get<std::vector<int64_t>>();
    FERRY_CHECK(slot.contains("dtype"), kind, " '", full, "' has a shape but no dtype");
    info.dtype = parse_dtype(slot.at("dtype").get<std::string>());
    return tree.add_tensor(std::move(info));
  }

  void fill(ModuleId id, const nlohmann::json& node, const std::string& path) {
    modules_by_path[path] = id;
    for (const auto& p : node.value("params", nlohmann::json::array())) {
      std::string name = p.at("name").get<std::string>();
      std::string full = join(path, name);
      TensorId t = tensor_of(p, full, "parameter");
      tree.add_param_slot(id, name, t);
      if (t != kNoTensor) tensors_by_name.emplace(full, t);
    }
    for (const auto& b : node.value("buffers", nlohmann::json::array())) {
      std::string name = b.at("name").get<std::string>();
      std::string full = join(path, name);
      TensorId t = tensor_of(b, full, "buffer");
      tree.add_buffer_slot(id, name, t, b.value("persistent", true));
      if (t != kNoTensor) tensors_by_name.emplace(full, t);
    }
    for (const auto& c : node.value("children", nlohmann::json::array())) {
      std::string name = c.at("name").get<std::string>();
      std::string full = join(path, name);
      if (c.contains("same_module_as")) {
        std::string target = c.at("same_module_as").get<std::string>();
        auto it = modules_by_path.find(target);
        FERRY_CHECK(it != modules_by_path.end(), "module '", full, "' is the same module as '", target,
                    "', which is not an earlier module");
        tree.add_child(id, name, it->second);
        continue;
      }
      ModuleId child = tree.add_submodule(id, name, c.value("class", std::string()));
      fill(child, c, full);
    }
  }
};

ModelTree tree_from_parsed(const nlohmann::json& doc) {
  FERRY_CHECK(doc.is_object(), "a model tree must be a JSON object with \"class\", \"params\", \"buffers\" and "
              "\"children\", got ", doc.type_name());
  ModelTree tree(doc.value("class", std::string()));
  JsonLoader loader{tree, {}, {}};
  try {
    loader.fill(tree.root(), doc, "");
  } catch (const nlohmann::json::exception& e) {
    FERRY_FAIL("malformed model tree: ", e.what());
  }
  tree.validate();
  return tree;
}

}  // namespace

ModelTree ModelTree::from_json(const std::string& text) {
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    FERRY_FAIL("invalid model tree JSON: ", e.what());
  }
  return tree_from_parsed(doc);
}

ModelTree ModelTree::from_json_file(const std::string& path) {
  std::ifstream in(path);
  FERRY_CHECK(in, "cannot open model tree file '", path, "'");
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    FERRY_FAIL("'", path, "' is not valid JSON: ", e.what());
  }
  // A conformance case or a {"model": ...} wrapper is accepted too.
  if (doc.is_object() && doc.contains("model") && doc.at("model").is_object()) doc = doc.at("model");
  try {
    return tree_from_parsed(doc);
  } catch (const Error& e) {
    FERRY_FAIL("'", path, "': ", e.what());
  }
}

// ---- dotted names -------------------------------------------------------------------------------

bool natural_name_less(const std::string& a, const std::string& b) {
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    size_t ei = a.find('.', i), ej = b.find('.', j);
    if (ei == std::string::npos) ei = a.size();
    if (ej == std::string::npos) ej = b.size();
    bool num_a = ei > i && std::all_of(a.begin() + static_cast<std::ptrdiff_t>(i), a.begin() + static_cast<std::ptrdiff_t>(ei),
                                       [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
    bool num_b = ej > j && std::all_of(b.begin() + static_cast<std::ptrdiff_t>(j), b.begin() + static_cast<std::ptrdiff_t>(ej),
                                       [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
    if (num_a && num_b) {
      // compare as numbers without overflow: strip leading zeros, then length, then digits
      size_t si = i, sj = j;
      while (si + 1 < ei && a[si] == '0') ++si;
      while (sj + 1 < ej && b[sj] == '0') ++sj;
      if (ei - si != ej - sj) return ei - si < ej - sj;
      int c = a.compare(si, ei - si, b, sj, ej - sj);
      if (c != 0) return c < 0;
    } else if (num_a != num_b) {
      return num_a;  // numbers before words
    } else {
      int c = a.compare(i, ei - i, b, j, ej - j);
      if (c != 0) return c < 0;
    }
    i = ei + 1;
    j = ej + 1;
    if (ei == a.size() || ej == b.size()) return ei == a.size() && ej != b.size();
  }
  return a.size() < b.size();
}

ModelTree model_tree_from_named_tensors(std::vector<NamedTreeTensor> tensors, bool natural_order) {
  if (natural_order)
    std::stable_sort(tensors.begin(), tensors.end(),
                     [](const NamedTreeTensor& x, const NamedTreeTensor& y) { return natural_name_less(x.name, y.name); });
  ModelTree tree;
  std::unordered_map<std::string, ModuleId> modules;  // full path -> module
  std::unordered_set<std::string> tensor_names;
  modules.reserve(tensors.size());
  tensor_names.reserve(tensors.size());
  for (auto& t : tensors) {
    FERRY_CHECK(!t.name.empty(), "a tensor has an empty name");
    FERRY_CHECK(t.name.front() != '.' && t.name.back() != '.' && t.name.find("..") == std::string::npos,
                "tensor name '", t.name, "' has an empty component");
    FERRY_CHECK(tensor_names.insert(t.name).second, "tensor '", t.name, "' appears twice");
    FERRY_CHECK(!modules.count(t.name), "'", t.name, "' is both a tensor and a module holding other tensors");
    ModuleId parent = tree.root();
    size_t start = 0;
    while (true) {
      size_t dot = t.name.find('.', start);
      if (dot == std::string::npos) break;
      std::string path = t.name.substr(0, dot);
      FERRY_CHECK(!tensor_names.count(path), "'", path, "' is both a tensor and a module holding '", t.name, "'");
      auto it = modules.find(path);
      if (it == modules.end()) {
        ModuleId m = tree.add_submodule(parent, t.name.substr(start, dot - start), "");
        it = modules.emplace(std::move(path), m).first;
      }
      parent = it->second;
      start = dot + 1;
    }
    tree.add_param(parent, t.name.substr(start), std::move(t.info.shape), t.info.dtype);
  }
  return tree;
}

}  // namespace ferry
