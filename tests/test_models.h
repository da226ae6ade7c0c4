#pragma once
/// \file
/// Models shared by the test files: Accelerate's test models (ModelForTest, ...) rebuilt from
/// ferry's standard layers, and a builder for the module trees of the conformance cases.

#include "ferry/nn/layers.h"
#include "ferry/nn/module.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <memory>
#include <string>

namespace ferry_test {

/// Accelerate's ModelForTest: linear1 Linear(3,4), batchnorm BatchNorm1d(4), linear2 Linear(4,5).
class ModelForTest : public ferry::Module {
 public:
  ModelForTest() : Module("ModelForTest") {
    linear1 = register_module("linear1", std::make_shared<ferry::Linear>(3, 4));
    batchnorm = register_module("batchnorm", std::make_shared<ferry::BatchNorm1d>(4));
    linear2 = register_module("linear2", std::make_shared<ferry::Linear>(4, 5));
  }
  c10::IValue forward(ferry::Args& args) override {
    return (*linear2)((*batchnorm)((*linear1)(args.tensor(0))));
  }
  std::shared_ptr<ferry::Linear> linear1;
  std::shared_ptr<ferry::BatchNorm1d> batchnorm;
  std::shared_ptr<ferry::Linear> linear2;
};

/// Accelerate's LinearWithNonPersistentBuffers: "weight" a persistent buffer, "bias" a
/// non-persistent one.
class LinearWithNonPersistentBuffers : public ferry::Module {
 public:
  LinearWithNonPersistentBuffers(int64_t in, int64_t out) : Module("LinearWithNonPersistentBuffers") {
    weight = register_buffer("weight", at::randn({out, in}));
    bias = register_buffer("bias", at::randn({out}), /*persistent=*/false);
  }
  c10::IValue forward(ferry::Args& args) override { return at::linear(args.tensor(0), *weight, *bias); }
  ferry::TensorRef weight, bias;
};

/// A module with no forward of its own, used to build arbitrary trees.
class Node : public ferry::Module {
 public:
  explicit Node(std::string class_name) : Module(std::move(class_name)) {}
};

/// Builds a module tree from the conformance format (tests/data/device_map_cases.json): nodes
/// {"name", "class", "params", "buffers", "children"}, params {"name", "shape", "dtype"} or
/// {"name", "tied_to"} or {"name"} (None), nodes {"name", "same_module_as"}. Tensors are created
/// on `device` (meta keeps big shapes free).
inline std::shared_ptr<ferry::Module> build_tree(const nlohmann::json& root, c10::Device device = c10::kMeta) {
  std::map<std::string, std::shared_ptr<ferry::Module>> modules;
  std::map<std::string, at::Tensor> tensors;
  auto make_tensor = [&](const nlohmann::json& spec) {
    std::vector<int64_t> shape = spec.at("shape").get<std::vector<int64_t>>();
    std::string dtype = spec.value("dtype", "float32");
    c10::ScalarType st = dtype == "float32"   ? at::kFloat
                         : dtype == "float16" ? at::kHalf
                         : dtype == "int64"   ? at::kLong
                         : dtype == "bool"    ? at::kBool
                                              : at::kFloat;
    return at::zeros(shape, at::TensorOptions().dtype(st).device(device));
  };
  std::function<std::shared_ptr<ferry::Module>(const nlohmann::json&, const std::string&)> build =
      [&](const nlohmann::json& node, const std::string& path) -> std::shared_ptr<ferry::Module> {
    auto module = std::make_shared<Node>(node.value("class", "Module"));
    modules[path] = module;
    for (const auto& p : node.value("params", nlohmann::json::array())) {
      std::string full = ferry::join_name(path, p.at("name").get<std::string>());
      at::Tensor t;
      if (p.contains("tied_to")) t = tensors.at(p.at("tied_to").get<std::string>());
      else if (p.contains("shape")) t = make_tensor(p);
      if (t.defined()) tensors.emplace(full, t);
      module->register_parameter(p.at("name"), t);
    }
    for (const auto& b : node.value("buffers", nlohmann::json::array())) {
      std::string full = ferry::join_name(path, b.at("name").get<std::string>());
      at::Tensor t = b.contains("tied_to") ? tensors.at(b.at("tied_to").get<std::string>()) : make_tensor(b);
      tensors.emplace(full, t);
      module->register_buffer(b.at("name"), t, b.value("persistent", true));
    }
    for (const auto& c : node.value("children", nlohmann::json::array())) {
      std::string name = c.at("name");
      std::string child_path = ferry::join_name(path, name);
      if (c.contains("same_module_as")) module->register_child(name, modules.at(c.at("same_module_as")));
      else module->register_child(name, build(c, child_path));
    }
    return module;
  };
  return build(root, "");
}

}  // namespace ferry_test
