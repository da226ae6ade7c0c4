#pragma once
#include "test_util.h"
// Models for the dispatch and streamer tests: Accelerate's test models with non-trivial buffers,
// a model with a block that uses its child's weight directly, and a tied embedding/head model.

#include "ferry/nn/layers.h"
#include "ferry/nn/module.h"

#include <ATen/ATen.h>

#include <cstdlib>
#include <filesystem>
#include <string>

namespace ferry::testing {

/// Accelerate's ModelForTest: linear1 Linear(3,4), batchnorm BatchNorm1d(4), linear2 Linear(4,5).
class ModelForTest : public Module {
 public:
  ModelForTest() : Module("ModelForTest") {
    linear1 = register_module("linear1", std::make_shared<Linear>(3, 4));
    batchnorm = register_module("batchnorm", std::make_shared<BatchNorm1d>(4));
    linear2 = register_module("linear2", std::make_shared<Linear>(4, 5));
    // Non-trivial running statistics, so that buffers matter to the output.
    if (!batchnorm->running_mean->is_meta()) {
      batchnorm->running_mean->copy_(at::arange(4, at::kFloat) * 0.1);
      batchnorm->running_var->copy_(at::arange(4, at::kFloat) * 0.2 + 0.5);
    }
  }
  c10::IValue forward(Args& args) override { return (*linear2)((*batchnorm)((*linear1)(args.tensor(0)))); }
  std::shared_ptr<Linear> linear1, linear2;
  std::shared_ptr<BatchNorm1d> batchnorm;
};

/// A block whose forward uses its child's weight directly, without calling the child
/// (Accelerate's ModuleWithUnusedSubModules): only a hook on the block can load it.
class ModuleWithUnusedSubModules : public Module {
 public:
  ModuleWithUnusedSubModules(int64_t in, int64_t out) : Module("ModuleWithUnusedSubModules") {
    linear = register_module("linear", std::make_shared<Linear>(in, out));
  }
  c10::IValue forward(Args& args) override {
    return at::matmul(args.tensor(0), linear->weight->t()) + *linear->bias;
  }
  std::shared_ptr<Linear> linear;
};

class ModelWithUnusedSubModulesForTest : public Module {
 public:
  ModelWithUnusedSubModulesForTest() : Module("ModelWithUnusedSubModulesForTest") {
    linear1 = register_module("linear1", std::make_shared<ModuleWithUnusedSubModules>(3, 4));
    linear2 = register_module("linear2", std::make_shared<ModuleWithUnusedSubModules>(4, 5));
    batchnorm = register_module("batchnorm", std::make_shared<BatchNorm1d>(5));
    linear3 = register_module("linear3", std::make_shared<ModuleWithUnusedSubModules>(5, 6));
    linear4 = register_module("linear4", std::make_shared<ModuleWithUnusedSubModules>(6, 5));
  }
  c10::IValue forward(Args& args) override {
    at::Tensor x = (*linear2)((*linear1)(args.tensor(0)));
    return (*linear4)((*linear3)((*batchnorm)(x)));
  }
  std::shared_ptr<ModuleWithUnusedSubModules> linear1, linear2, linear3, linear4;
  std::shared_ptr<BatchNorm1d> batchnorm;
};

/// A richer model for equivalence: a tied embedding/head pair, persistent and non-persistent
/// buffers, nested blocks, and a root-level parameter used directly.
class Block : public Module {
 public:
  explicit Block(int64_t dim) : Module("Block") {
    norm = register_module("norm", std::make_shared<LayerNorm>(dim));
    up = register_module("up", std::make_shared<Linear>(dim, 2 * dim));
    down = register_module("down", std::make_shared<Linear>(2 * dim, dim));
    scale = register_buffer("scale", at::full({dim}, 0.5), /*persistent=*/true);
    shift = register_buffer("shift", at::full({dim}, 0.25), /*persistent=*/false);
  }
  c10::IValue forward(Args& args) override {
    at::Tensor x = args.tensor(0);
    at::Tensor h = (*down)(at::gelu((*up)((*norm)(x))));
    return x + h * *scale + *shift;
  }
  std::shared_ptr<LayerNorm> norm;
  std::shared_ptr<Linear> up, down;
  TensorRef scale, shift;
};

class TiedModel : public Module {
 public:
  TiedModel(int64_t vocab = 32, int64_t dim = 16, int64_t layers = 3) : Module("TiedModel") {
    embed = register_module("embed", std::make_shared<Embedding>(vocab, dim));
    blocks = register_module("blocks", std::make_shared<ModuleList>());
    for (int64_t i = 0; i < layers; ++i) blocks->push_back(std::make_shared<Block>(dim));
    gain = register_parameter("gain", at::ones({dim}) * 1.5);
    head = register_module("head", std::make_shared<Linear>(dim, vocab, /*bias=*/false));
    head->set_parameter("weight", embed->parameter("weight"));  // tied, as an LM head usually is
  }
  c10::IValue forward(Args& args) override {
    at::Tensor h = (*embed)(args.tensor(0));
    for (size_t i = 0; i < blocks->size(); ++i) h = (*blocks)[i](h);
    return (*head)(h * *gain);
  }
  std::shared_ptr<Embedding> embed;
  std::shared_ptr<ModuleList> blocks;
  std::shared_ptr<Linear> head;
  TensorRef gain;
};

using ferry_test::TempDir;  // test_util.h

}  // namespace ferry::testing
